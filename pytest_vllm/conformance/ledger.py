"""The conformance ledger: per property and server, how many examples ran and the verdict.

It lives in the pytest config's stash (``conformance.plugin``), is created on the first
conformance test, and gives the session its report section, so the terminal summary, results.json, summary.md and
report.html list every property with its examples and verdict for each server. Verdicts come from
pytest's own reports (a small hook object registered with the plugin manager), so a property that
errors in setup or is skipped shows as such instead of vanishing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pytest_vllm.report.writer import Section

PASS, FAIL, XFAIL, SKIP, ERROR, NOT_RUN = "PASS", "FAIL", "XFAIL", "SKIP", "ERROR", "not run"


@dataclass
class PropertyRecord:
    """One property on one server."""

    property: str
    server: str
    nodeid: str
    examples: int = 0
    verdict: str = NOT_RUN
    detail: str = ""  # xfail reason, skip reason or the failure's first line
    known_deviations: list[str] = field(default_factory=list)
    # known deviations met here but reported by the property that owns them: key -> occurrences
    excused: dict[str, int] = field(default_factory=dict)


@dataclass(eq=False)  # hashed by identity: pytest's plugin manager holds it
class Ledger:
    profile: str = "ci"
    records: dict[str, PropertyRecord] = field(default_factory=dict)  # by node id

    def record(self, nodeid: str, prop: str, server: str) -> PropertyRecord:
        if nodeid not in self.records:
            self.records[nodeid] = PropertyRecord(prop, server, nodeid)
        return self.records[nodeid]

    # -- pytest hook (the ledger is registered as a plugin object) -------------------------------
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        record = self.records.get(report.nodeid)
        if record is None:
            return
        if report.when == "call" or (report.when == "setup" and not report.passed):
            record.verdict, record.detail = _verdict(report)
        elif report.when == "teardown" and report.failed and record.verdict == PASS:
            record.verdict, record.detail = ERROR, _first_line(report)

    # -- report ---------------------------------------------------------------------------------
    def section(self) -> Section | None:
        from pytest_vllm.report.tables import Table
        from pytest_vllm.report.writer import Section

        if not self.records:
            return None
        servers = list(dict.fromkeys(r.server for r in self.records.values()))
        properties = list(dict.fromkeys(r.property for r in self.records.values()))
        by_key = {(r.property, r.server): r for r in self.records.values()}
        columns = ["property"] + [f"{s} {what}" for s in servers for what in ("examples", "verdict")]
        table = Table(f"OpenAI API conformance (hypothesis profile {self.profile})", columns)
        notes: list[str] = []
        for prop in properties:
            cells: list[object] = [prop]
            for server in servers:
                record = by_key.get((prop, server))
                if record is None:
                    cells += ["", "-"]
                    continue
                cells += [record.examples, record.verdict]
                if record.verdict != PASS and record.detail:
                    notes.append(f"{prop} [{server}] {record.verdict}: {record.detail}")
            table.add(*cells)
        counts = {v: sum(r.verdict == v for r in self.records.values()) for v in (PASS, FAIL, XFAIL, SKIP, ERROR)}
        excused: dict[str, list[str]] = {}
        for record in self.records.values():
            for key in record.excused:
                excused.setdefault(key, []).append(f"{record.property} [{record.server}]")
        notes += [f"known deviation {key} also met in {len(where)} other run(s); its own property reports it "
                  f"(see results.json)" for key, where in excused.items()]
        table.notes = [", ".join(f"{n} {v}" for v, n in counts.items() if n)] + notes
        data: dict[str, Any] = {"profile": self.profile, "counts": counts,
                                "properties": [asdict(r) for r in self.records.values()]}
        return Section("conformance", [table], data)


def _verdict(report: pytest.TestReport) -> tuple[str, str]:
    if hasattr(report, "wasxfail"):
        return XFAIL, str(report.wasxfail).removeprefix("reason: ")
    if report.skipped:
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        return SKIP, str(reason).removeprefix("Skipped: ")
    if report.failed:
        return (FAIL if report.when == "call" else ERROR), _first_line(report)
    return PASS, ""


def _first_line(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    message = crash.message if crash is not None else str(report.longrepr)
    first = next((line for line in message.splitlines() if line.strip()), "")
    return first[:200]
