"""Loaders for pytest-vllm's lm-eval tasks: they read the eval sets shipped beside them
(``../evals/*.jsonl``) from disk, so the tasks need no dataset hub."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

EVALS = Path(__file__).resolve().parent.parent / "evals"


def _items(name: str) -> list[dict[str, Any]]:
    lines = (EVALS / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    return [record for record in map(json.loads, filter(str.strip, lines)) if "_meta" not in record]


def _dataset(name: str) -> Any:
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(_items(name))})


def load_choice(**_: Any) -> Any:
    return _dataset("choice")


def load_arithmetic(**_: Any) -> Any:
    return _dataset("arithmetic")
