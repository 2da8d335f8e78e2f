"""The performance section of the reports: tables and JSON from the session's measurements."""

from __future__ import annotations

from typing import Any

from pytest_vllm.bench import BenchState, Measurement, PairComparison
from pytest_vllm.metrics import METRIC_DEFINITIONS, METRICS
from pytest_vllm.report.tables import Table, fmt, pct

# Shown for every measurement, checked or not, so a reader sees the whole picture.
SUMMARY_METRICS = ("output_throughput", "ttft_p50", "tpot_p50", "e2el_p50")
PAIR_METRICS = ("output_throughput", "request_throughput", "ttft_p50", "tpot_p50", "e2el_p50")


def measurement_label(m: Measurement) -> str:
    return f"{m.nodeid.split('::', 1)[-1]} · {m.workload.name}"


def tables(state: BenchState) -> list[Table]:
    if not state.measurements:
        return []
    out = []
    checks = Table("vllm performance: budgets (current = median of repetitions)",
                   ["measurement", "server", "metric", "current", "baseline", "delta", "limit", "budget", "verdict"])
    for m in state.measurements:
        if not m.checks:
            checks.add(measurement_label(m), m.role, "-", "-", "-", "-", "-", "-",
                       "NO BASELINE" if not state.settings.update else "RECORDED")
        for c in m.checks:
            checks.add(measurement_label(m), m.role, c.metric, fmt(c.current), fmt(c.reference), pct(c.delta),
                       fmt(c.limit), c.budget.describe() + (f" ({c.note})" if c.note else ""),
                       "ok" if c.passed else "FAIL")
        if m.baseline_note:
            checks.notes.append(f"{measurement_label(m)} [{m.role}]: {m.baseline_note}")
    out.append(checks)

    overview = Table("vllm performance: measurements", ["measurement", "server", "workload",
                                                         *[f"{n} ({METRICS[n].unit})" for n in SUMMARY_METRICS],
                                                         "spread", "client µs/tok", "host steal"])
    for m in state.measurements:
        spread = max(m.result.spread(n) for n in ("output_throughput", "ttft_p50", "tpot_p50"))
        overview.add(measurement_label(m), m.role, m.workload.describe(), *[fmt(m.value(n)) for n in SUMMARY_METRICS],
                     f"{spread:.1%}", fmt(m.value("client_cpu_us_per_token"), 0),
                     f"{m.value('host_cpu_steal'):.1f}%")
        if m.result.client_saturated:
            overview.notes.append(f"{measurement_label(m)} [{m.role}]: the load client was saturated")
    out.append(overview)

    if state.pairs:
        pairs = Table("vllm performance: compressed vs base (same run)",
                      ["measurement", *[f"{n} ratio" for n in PAIR_METRICS], "pair budgets"])
        for p in state.pairs:
            budget_text = ", ".join(f"{c.metric} {c.budget.describe()}: {'ok' if c.passed else 'FAIL'}"
                                    for c in p.checks) or "-"
            pairs.add(f"{p.nodeid.split('::', 1)[-1]} · {p.workload.name}",
                      *[f"{p.ratio(n):.3f}x" for n in PAIR_METRICS], budget_text)
        out.append(pairs)
    return out


def to_json(state: BenchState) -> dict[str, Any]:
    def measurement(m: Measurement) -> dict[str, Any]:
        return {
            "test": m.nodeid, "role": m.role, "model": m.model, "workload": m.workload.to_dict(),
            "workload_key": m.workload.key, "server_key": m.server_key, "server_flags": m.server_flags,
            "passed": m.passed, "baseline": str(m.baseline.path) if m.baseline else None,
            "baseline_note": m.baseline_note,
            "metrics": {n: {"median": m.result.median(n), "runs": m.result.values(n), "spread": m.result.spread(n)}
                        for n in m.result.runs[0].values},
            "checks": [{"metric": c.metric, "budget": c.budget.source, "kind": c.budget.kind, "current": c.current,
                        "reference": c.reference, "limit": c.limit, "tolerance": c.tolerance, "passed": c.passed,
                        "note": c.note} for c in m.checks],
            "client_saturated": m.result.client_saturated,
        }

    def pair(p: PairComparison) -> dict[str, Any]:
        return {"test": p.nodeid, "workload": p.workload.name,
                "ratios": {n: p.ratio(n) for n in PAIR_METRICS},
                "checks": [{"metric": c.metric, "budget": c.budget.source, "ratio": c.current / c.reference
                            if c.reference else None, "passed": c.passed} for c in p.checks]}

    return {"settings": {"gpu": state.settings.gpu, "update_baselines": state.settings.update,
                         "add_baselines": state.settings.pool,
                         "noise_k": state.settings.noise.noise_k, "max_tolerance": state.settings.noise.max_tolerance},
            # What a baseline records of its run: `pytest-vllm baselines add` pools results files with it.
            "environment": state.settings.environment, "metric_definitions": METRIC_DEFINITIONS,
            "measurements": [measurement(m) for m in state.measurements],
            "pairs": [pair(p) for p in state.pairs],
            "baselines_written": [str(p) for p in state.written]}
