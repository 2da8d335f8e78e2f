"""The conformance summary: each property per server, with examples tried and the verdict."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_vllm.config import RunConfig
from pytest_vllm.conformance.ledger import ERROR, FAIL, PASS, SKIP, XFAIL, Ledger
from pytest_vllm.errors import UsageError
from pytest_vllm.report.tables import render_text


def report(nodeid: str, outcome: str, when: str = "call", longrepr: object = None,
           wasxfail: str | None = None) -> pytest.TestReport:
    rep = pytest.TestReport(nodeid, ("f.py", 1, nodeid), {}, outcome, longrepr, when)
    if wasxfail is not None:
        rep.wasxfail = wasxfail
    return rep


def filled_ledger() -> Ledger:
    ledger = Ledger(profile="ci")
    for server in ("base", "compressed"):
        ledger.record(f"t.py::test_chat[{server}]", "test_chat", server).examples = 12
        ledger.record(f"t.py::test_errors[{server}]", "test_errors", server).examples = 30
    ledger.record("t.py::test_pair", "test_pair", "base vs compressed").examples = 10
    ledger.pytest_runtest_logreport(report("t.py::test_chat[base]", "passed"))
    ledger.pytest_runtest_logreport(report("t.py::test_chat[compressed]", "failed",
                                           longrepr="ConformanceFailure: valid chat request: 1 deviation(s)"))
    ledger.pytest_runtest_logreport(report("t.py::test_errors[base]", "skipped",
                                           wasxfail="known deviation (error-code-integer): ..."))
    ledger.pytest_runtest_logreport(report("t.py::test_errors[compressed]", "failed", when="setup",
                                           longrepr="server failed to boot"))
    ledger.pytest_runtest_logreport(report("t.py::test_pair", "skipped", when="setup",
                                           longrepr=("f.py", 1, "Skipped: needs the compressed server")))
    ledger.pytest_runtest_logreport(report("t.py::unrelated", "failed"))
    return ledger


def test_verdicts_come_from_pytest_reports() -> None:
    records = filled_ledger().records
    assert records["t.py::test_chat[base]"].verdict == PASS
    assert records["t.py::test_chat[compressed]"].verdict == FAIL
    assert records["t.py::test_chat[compressed]"].detail.startswith("ConformanceFailure")
    assert records["t.py::test_errors[base]"].verdict == XFAIL
    assert records["t.py::test_errors[compressed]"].verdict == ERROR
    assert (records["t.py::test_pair"].verdict, records["t.py::test_pair"].detail) == (
        SKIP, "needs the compressed server")
    assert "t.py::unrelated" not in records


def test_section_lists_each_property_per_server() -> None:
    section = filled_ledger().section()
    assert section is not None and section.name == "conformance"
    assert section.tables[0].title.startswith("OpenAI API deviations: 0 distinct found")
    table = section.tables[1]
    assert table.columns == ["property", "base examples", "base verdict", "compressed examples",
                             "compressed verdict", "base vs compressed examples", "base vs compressed verdict"]
    assert table.rows[0] == ["test_chat", "12", PASS, "12", FAIL, "", "-"]
    assert table.rows[1] == ["test_errors", "30", XFAIL, "30", ERROR, "", "-"]
    assert table.rows[2] == ["test_pair", "", "-", "", "-", "10", SKIP]
    assert table.notes[0] == "1 PASS, 1 FAIL, 1 XFAIL, 1 SKIP, 1 ERROR"
    assert any("known deviation (error-code-integer)" in note for note in table.notes)
    assert section.data["counts"][PASS] == 1 and len(section.data["properties"]) == 5
    assert "test_chat" in "\n".join(render_text(table))


def test_an_empty_ledger_has_no_section() -> None:
    assert Ledger().section() is None


def test_the_profile_option_is_validated(tmp_path: Path) -> None:
    assert RunConfig.from_values(tmp_path, {}, environ={}).conformance_profile == "ci"
    assert RunConfig.from_values(tmp_path, {"conformance_profile": "Nightly"}, environ={}).conformance_profile == (
        "nightly")
    with pytest.raises(UsageError, match="--vllm-conformance-profile"):
        RunConfig.from_values(tmp_path, {"conformance_profile": "weekly"}, environ={})
