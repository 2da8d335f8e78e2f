"""The conformance ledger: the run's distinct deviations, then per property and server the verdict.

It lives in the pytest config's stash (``conformance.plugin``), is created on the first
conformance test, and gives the session its report section, so the terminal summary, results.json,
summary.md and report.html list first every distinct deviation found (``findings.Finding``: rule,
where in the API, how often, on which servers, the smallest example), then every property with its
examples and verdict for each server. Verdicts come from pytest's own reports (a small hook object
registered with the plugin manager), so a property that errors in setup or is skipped shows as
such instead of vanishing.

The final check: a new deviation is reported by the verdict of the property that owns its rule
(it fails). One that no owning property met (only others did, which recorded it) fails the
session instead: its row says so and the exit status is that of failed tests.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from pytest_vllm.conformance.deviations import Deviation, generic_path
from pytest_vllm.conformance.findings import Finding, Ownership, endpoint_of, example_of, finding_key

if TYPE_CHECKING:
    from pytest_vllm.conformance.probe import Exchange
    from pytest_vllm.report.tables import Table
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
    # findings of rules other properties own, met here and recorded, not judged: finding key -> occurrences
    findings: dict[str, int] = field(default_factory=dict)
    not_judged: int = 0  # examples a finding left nothing to judge on


@dataclass(eq=False)  # hashed by identity: pytest's plugin manager holds it
class Ledger:
    profile: str = "ci"
    records: dict[str, PropertyRecord] = field(default_factory=dict)  # by node id
    findings: dict[tuple[str, str, str], Finding] = field(default_factory=dict)  # by finding_key
    claimed: tuple[str, ...] | None = None  # the rule patterns the session's properties declare (plugin)
    ownerships: dict[str, Ownership] = field(default_factory=dict)  # by node id: which rules each property judges

    def record(self, nodeid: str, prop: str, server: str) -> PropertyRecord:
        if nodeid not in self.records:
            self.records[nodeid] = PropertyRecord(prop, server, nodeid)
        return self.records[nodeid]

    def note(self, deviation: Deviation, exchange: Exchange | None, *, server: str, record: PropertyRecord,
             owned: bool, known: str = "") -> Finding:
        """One occurrence of a deviation: counted under its finding, whose example stays the smallest."""
        key = finding_key(deviation, known)
        finding = self.findings.get(key)
        if finding is None:
            finding = self.findings[key] = Finding(key[0], key[1], deviation.message, known=known)
        finding.occurrences += 1
        path = generic_path(deviation.path)
        finding.paths[path] = finding.paths.get(path, 0) + 1
        where = endpoint_of(exchange)
        finding.where[where] = finding.where.get(where, 0) + 1
        finding.servers[server] = finding.servers.get(server, 0) + 1
        finding.met_in[record.property] = finding.met_in.get(record.property, 0) + 1
        if owned and record.nodeid not in finding.owned_in:
            finding.owned_in.append(record.nodeid)
        if not owned and not known:
            record.findings[finding.key] = record.findings.get(finding.key, 0) + 1
        if exchange is not None:
            example = example_of(exchange)
            if finding.example is None or example.size < finding.example.size:
                finding.example, finding.message = example, deviation.message
        return finding

    def verdict_of(self, finding: Finding) -> str:
        """How the run reports a finding: the owner's failure, an xfail, or the session's own failure."""
        if finding.known:
            return f"XFAIL (known: {finding.known})"
        failed = self._reporters(finding)
        if failed:
            return "FAIL: " + _names(failed)
        owners = [self.records[n] for n, ownership in self.ownerships.items()
                  if any(ownership.owns(Deviation(finding.rule, path, finding.message)) for path in finding.paths)]
        if not owners:
            return "FAIL (session): no selected property owns its rule"
        stopped = [r for r in owners if r.verdict in (FAIL, ERROR)]
        if stopped:
            return f"FAIL (session): its owner {_names(stopped)} failed on another rule before meeting it"
        return f"FAIL (session): its owner {_names(owners)} did not meet it"

    def _reporters(self, finding: Finding) -> list[PropertyRecord]:
        return [self.records[n] for n in finding.owned_in if self.records[n].verdict in (FAIL, ERROR)]

    def unreported(self) -> list[Finding]:
        """New findings that no failing owner reports: the final check fails the session for them."""
        return [f for f in self.findings.values() if not f.known and not self._reporters(f)]

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.unreported() and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

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
        findings = sorted(self.findings.values(), key=lambda f: (bool(f.known), -f.occurrences))
        number = {id(f): i for i, f in enumerate(findings, 1)}
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
                if record.findings:
                    met = [f"#{number[id(f)]}" for f in findings if f.key in record.findings and not f.known]
                    unjudged = f"; {record.not_judged} example(s) not judged" if record.not_judged else ""
                    notes.append(f"{prop} [{server}] also met {', '.join(met)} (rules other properties own; "
                                 f"recorded, not judged here){unjudged}")
            table.add(*cells)
        counts = {v: sum(r.verdict == v for r in self.records.values()) for v in (PASS, FAIL, XFAIL, SKIP, ERROR)}
        excused: dict[str, list[str]] = {}
        for record in self.records.values():
            for key in record.excused:
                excused.setdefault(key, []).append(f"{record.property} [{record.server}]")
        notes += [f"known deviation {key} also met in {len(where)} other run(s); its own property reports it "
                  f"(see results.json)" for key, where in excused.items()]
        table.notes = [", ".join(f"{n} {v}" for v, n in counts.items() if n)] + notes
        found = self._findings_table(findings)
        unreported = self.unreported()
        data: dict[str, Any] = {"profile": self.profile, "counts": counts,
                                "deviations": [{"number": number[id(f)], "key": f.key, "verdict": self.verdict_of(f),
                                                **asdict(f)} for f in findings],
                                "unreported_deviations": [f.key for f in unreported],
                                "properties": [asdict(r) for r in self.records.values()]}
        return Section("conformance", [found, table], data, failed=bool(unreported))

    def _findings_table(self, findings: list[Finding]) -> Table:
        from pytest_vllm.report.tables import Table

        new = sum(not f.known for f in findings)
        table = Table(f"OpenAI API deviations: {new} distinct found, {len(findings) - new} known",
                      ["#", "rule", "where", "occurrences", "servers", "met in", "verdict"])
        for i, finding in enumerate(findings, 1):
            paths = ", ".join(p or "(whole exchange)" for p in finding.paths)
            where = f"{paths if len(paths) <= 80 else paths[:77] + '...'} in {', '.join(finding.where)}"
            met_in = [f"{p} ({n})" for p, n in finding.met_in.items()]
            shown = ", ".join(met_in[:3]) + (f" and {len(met_in) - 3} more" if len(met_in) > 3 else "")
            table.add(i, finding.rule, where, finding.occurrences, ", ".join(finding.servers), shown,
                      self.verdict_of(finding))
            example = finding.example
            table.notes.append(f"#{i} {finding.key}: {finding.message[:300]}")
            if example is not None:
                table.notes += [f"#{i} smallest example: {example.request} -> {example.response}",
                                f"#{i} replay: {example.curl}"]
        if not findings:
            table.notes.append("no deviation from the OpenAI API")
        return table


def _names(records: list[PropertyRecord], most: int = 3) -> str:
    names = list(dict.fromkeys(f"{r.property} [{r.server}]" for r in records))
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


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
