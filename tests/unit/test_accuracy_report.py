"""The accuracy report section: the recovery table's columns, verdicts and JSON, from known scores."""

from __future__ import annotations

from pathlib import Path

from pytest_vllm.accuracy.budgets import AccuracyBudget, AccuracySettings, judge_interval
from pytest_vllm.accuracy.engine import Engine, Scored
from pytest_vllm.accuracy.gate import AccuracyState, RecoveryCheck
from pytest_vllm.accuracy.report import recovery_table, render, section
from pytest_vllm.accuracy.stats import PairedCounts, recovery_interval


def _check(base: tuple[bool, ...], compressed: tuple[bool, ...]) -> RecoveryCheck:
    settings = AccuracySettings()
    b = Scored("facts", "eval", "base", "m-base", {"accuracy": base}, {}, answers=tuple("b" * len(base)),
               item_ids=tuple(f"i{n}" for n in range(len(base))))
    c = Scored("facts", "eval", "compressed", "m-q", {"accuracy": compressed}, {}, answers=tuple("c" * len(base)),
               item_ids=b.item_ids)
    interval = recovery_interval(PairedCounts.from_items(base, compressed), settings.confidence)
    budget = AccuracyBudget("recovery", ">=", 0.95, "default")
    return RecoveryCheck("t.py::test", b, c, "accuracy", interval, budget, judge_interval(interval, budget, "upper"))


def test_recovery_table_has_the_issue_columns_and_a_failing_row() -> None:
    damaged = _check((True,) * 40 + (False,) * 10, (True,) * 15 + (False,) * 35)
    table = recovery_table([damaged], AccuracySettings())
    assert table.columns == ["Metric", "n", "Base", "Compressed", "Recovery", "Lower bound", "Upper bound", "Resolves",
                             "Budget", "Verdict"]
    # 25 discordant items on 40 right answers: 1.96 * 5 / 40 = 24.5%
    assert table.text_rows() == [["facts accuracy", "50", "0.800", "0.300", "0.375", f"{damaged.recovery.lower:.3f}",
                           f"{damaged.recovery.upper:.3f}", "24.5%", ">= 0.95", "FAIL"]]
    text = render(table)
    assert "accuracy: recovery (compressed / base)" in text and "models: base m-base, compressed m-q" in text


def test_section_json_lists_the_discordant_items(tmp_path: Path) -> None:
    check = _check((True, True, False, True), (True, False, True, True))
    state = AccuracyState(AccuracySettings(), Engine(AccuracySettings()), "cpu", {}, tmp_path, False)
    assert section(state) is None  # nothing measured, nothing to report
    state.recoveries.append(check)
    made = section(state)
    assert made is not None and made.name == "accuracy"
    row = made.data["recovery"][0]
    assert row["paired"] == {"both": 2, "base_only": 1, "compressed_only": 1, "neither": 0}
    assert row["verdict"] == "INCONCLUSIVE (warning)" and row["passed"]
    # 2 discordant items, floored at z^2 = 3.84: 1.96 * 1.96 / 3 right answers
    assert abs(row["resolution"] - 1.96 ** 2 / 3) < 0.01
    assert "would resolve it" in row["resolution_note"]
    assert [(d["id"], d["right_on"]) for d in row["discordant"]] == [("i1", "base"), ("i2", "compressed")]
