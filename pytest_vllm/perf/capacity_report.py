"""The capacity searches in the reports: each server's capacity with its verdict and every probe,
the pair ratios, and their JSON (``perf/report.py`` adds these to its section)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pytest_vllm.perf.budgets import Check
from pytest_vllm.perf.capacity_bench import CapacityMeasurement
from pytest_vllm.perf.metrics import RepeatedResult
from pytest_vllm.perf.results import BenchState, PairComparison
from pytest_vllm.report.tables import Table, fmt


def _test(judged: CapacityMeasurement | PairComparison) -> str:
    return judged.nodeid.split("::", 1)[-1]


def _checks_text(judged: CapacityMeasurement | PairComparison) -> str:
    return "; ".join(
        f"{c.budget.describe()}" + (f" (baseline {c.reference:.3g}, limit {c.limit:.3g})" if c.reference else "")
        + f": {c.verdict}" + (f", resolves {abs(c.resolution):.0%}" if c.resolution is not None else "")
        for c in judged.checks) or ("NOT JUDGED (no baselines for this host class)" if not judged.judged
                                    else "no baseline" if judged.baseline is None else "-")


def tables(state: BenchState) -> list[Table]:
    if not state.capacities:
        return []
    summary = Table("vllm performance: capacity (highest Poisson rate at which the stated share of requests meets "
                    "every SLO)", ["test", "server", "search", "capacity (req/s)", "bracket", "probes", "budget"])
    probes = Table("vllm performance: capacity probes", ["test", "server", "#", "asked (req/s)", "achieved (req/s)",
                                                         "goodput (req/s)", "good", "TTFT p50/p99 (ms)",
                                                         "TPOT p50/p99 (ms)", "E2EL p50/p99 (ms)", "outcome"])
    precisions = set()
    for m in state.capacities:
        search = m.search
        assert search is not None
        precisions.add(search.precision)
        upper = search.upper
        summary.add(_test(m), m.role, m.workload.describe(), fmt(search.capacity),
                    f"[{fmt(search.capacity)}, {fmt(upper) if upper is not None else '-'}]", str(len(search.probes)),
                    _checks_text(m))
        summary.notes.append(f"{_test(m)} [{m.role}]: {search.verdict()}"
                             + (f"; {m.baseline_note}" if m.baseline_note else ""))
        for i, p in enumerate(search.probes, 1):
            probes.add(_test(m), m.role, str(i), fmt(p.rate), fmt(p.achieved_rate), fmt(p.goodput),
                       f"{p.good_share:.0%} of {p.requests}", p.latency_text("ttft"), p.latency_text("tpot"),
                       p.latency_text("e2el"), p.outcome + (f" ({p.reason})" if p.reason else ""))
    for precision in sorted(precisions):
        summary.notes.append(
            f"a search to precision {precision:.0%} reports up to {1 - 1 / (1 + precision):.0%} under the true "
            f"capacity: the gate cannot see a change smaller than that, whatever the noise ('resolves' is the larger "
            "of the two)")
    probes.notes.append("inconclusive: the client could not offer the rate (saturated, or sent under 90% of it): "
                        "no verdict on the server, probed again, then the search's ceiling")
    probes.notes.append("a probe stopped once decided (more requests missed an SLO than allowed) reports the goodput "
                        "and latencies of what it answered before the stop; its unanswered requests count as not good")
    out = [summary, probes]
    if state.capacity_pairs:
        pairs = Table("vllm performance: capacity pairs (candidate / reference)",
                      ["test", "candidate / reference", "capacity ratio", "pair budgets"])
        for pair in state.capacity_pairs:
            pairs.add(_test(pair), f"{pair.candidate.role} / {pair.reference.role}", f"{pair.ratio('capacity'):.3f}x",
                      _checks_text(pair))
            if pair.baseline_note:
                pairs.notes.append(f"{_test(pair)}: {pair.baseline_note}")
        out.append(pairs)
    return out


def to_json(state: BenchState, check_json: Callable[[Check], dict[str, Any]],
            metrics_json: Callable[[RepeatedResult], dict[str, Any]]) -> dict[str, Any]:
    """The capacity part of results.json (``check_json``, ``metrics_json``: report.py's forms), with
    what ``pytest-vllm baselines add`` reads from a measurement."""
    def measurement(m: CapacityMeasurement) -> dict[str, Any]:
        search = m.search
        assert search is not None
        return {"test": m.nodeid, "role": m.role, "model": m.model, "workload": m.workload.to_dict(),
                "workload_key": m.workload.key, "server_key": m.server_key, "server_flags": m.server_flags,
                "metrics": metrics_json(m.result), "capacity": search.capacity,
                "bracket": [search.passed_at, search.upper], "converged": search.converged,
                "client_bound": search.client_bound, "verdict": search.verdict(), "passed": m.passed,
                "judged": m.judged, "baseline": str(m.baseline.path) if m.baseline else None,
                "baseline_note": m.baseline_note, "checks": [check_json(c) for c in m.checks],
                "probes": [p.to_json() for p in search.probes]}

    return {"capacities": [measurement(m) for m in state.capacities],
            "capacity_pairs": [{"test": p.nodeid, "role": p.role, "model": p.candidate.model,
                                "workload": p.workload.to_dict(), "workload_key": p.workload.key,
                                "server_key": p.server_key, "server_flags": p.compared_flags,
                                "metrics": metrics_json(p.ratios), "ratio": p.ratio("capacity"), "passed": p.passed,
                                "judged": p.judged, "baseline": str(p.baseline.path) if p.baseline else None,
                                "baseline_note": p.baseline_note, "checks": [check_json(c) for c in p.checks]}
                               for p in state.capacity_pairs]}
