"""Test files need unique basenames across tests/, suites/ and benchmarks/: they are collected by
rootdir-relative module name (no __init__.py), so two files of one name stop `make test` at
collection ("import file mismatch"), which happened twice on fresh clones."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_test_file_basenames_are_unique() -> None:
    files = [p for folder in ("tests", "suites", "benchmarks") for p in (ROOT / folder).rglob("test_*.py")]
    clashes = {name: n for name, n in Counter(p.name for p in files).items() if n > 1}
    assert not clashes, f"test files sharing a basename (rename one): {clashes}"
