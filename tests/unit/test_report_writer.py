"""The run's report files are replaced whole: a reader of the previous results.json never sees a half-written one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_vllm.report.tables import Table
from pytest_vllm.report.writer import Section, write_reports


def section(value: float) -> Section:
    table = Table("throughput", ["metric", "value"])
    table.add("output_throughput", value)
    return Section("performance", [table], {"value": value}, plots={"throughput.png": b"\x89PNG fake"})


def test_a_rerun_replaces_every_report_file_by_rename_and_leaves_no_temp_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    first = write_reports(tmp_path, [section(1.0)], {"verdict": "PASS"}, say=lambda _: None)
    assert sorted(p.name for p in first) == ["report.html", "results.json", "summary.md", "throughput.png"]
    before = {p.name: p.stat().st_ino for p in first}
    held = (tmp_path / "results.json").open()  # a reader of the previous file (a CI step, `baselines add`)
    write_reports(tmp_path, [section(2.0)], {"verdict": "FAIL"}, say=lambda _: None)
    assert json.load(held)["performance"] == {"value": 1.0}  # it reads the old file whole
    held.close()
    assert json.loads((tmp_path / "results.json").read_text())["performance"] == {"value": 2.0}
    assert all(p.stat().st_ino != before[p.name] for p in first)  # renamed over, not rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)
