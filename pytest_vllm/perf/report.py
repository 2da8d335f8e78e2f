"""The performance section of the reports: tables, JSON and plots from the session's measurements."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pytest_vllm.gating import Outcome, Verdict
from pytest_vllm.perf import capacity_report
from pytest_vllm.perf.budgets import Check
from pytest_vllm.perf.metrics import METRIC_DEFINITIONS, METRICS
from pytest_vllm.perf.replicas import ReplicaShare
from pytest_vllm.perf.results import PAIR_METRICS, BenchState, Judged, KVCacheCheck, Measurement, PairComparison
from pytest_vllm.perf.turns import turns_table
from pytest_vllm.report.tables import Table, fmt, pct
from pytest_vllm.report.writer import Section

# Shown for every measurement, checked or not, so a reader sees the whole picture.
SUMMARY_METRICS = ("output_throughput", "ttft_p50", "tpot_p50", "e2el_p50")


def measurement_label(m: Judged) -> str:
    return f"{m.nodeid.split('::', 1)[-1]} · {m.workload.name}"


def resolution_cell(check: Check) -> str:
    return "-" if check.resolution is None else f"{abs(check.resolution):.0%}"


def tolerance_cell(check: Check) -> str:
    """The relative tolerance applied, and why when it is not the budget's own."""
    if check.tolerance is None:
        return "-"
    why = "" if check.tolerance_source == "budget" else f" ({check.tolerance_source})"
    return f"{abs(check.tolerance):.0%}{why}"


def _unchecked_verdict(state: BenchState, judged: Judged) -> Verdict:
    if state.settings.record:
        return Verdict(Outcome.RECORDED)
    if not judged.judged:
        return Verdict(Outcome.NOT_JUDGED, "no baselines for this host class")
    if judged.baseline is not None:  # a baseline to judge against, and no budget asked for
        return Verdict(Outcome.OFF)
    return Verdict(Outcome.NO_BASELINE)


def section(state: BenchState, say: Callable[[str], None]) -> Section | None:
    """The report section, or None when nothing was measured."""
    if not state.measurements and not state.kv_caches and not state.kv_pairs and not state.capacities:
        return None
    from pytest_vllm.perf import plots

    try:
        images = plots.all_plots(state)
    except Exception as exc:  # noqa: BLE001 - a plot must never hide the verdicts
        say(f"plots skipped: {type(exc).__name__}: {exc}")
        images = {}
    return Section("performance", tables(state), to_json(state), images)


def kv_cache_table(state: BenchState) -> Table:
    table = Table("vllm performance: KV cache (what each server allocated, and the requests it holds at once "
                  "at each workload's lengths)",
                  ["test", "server", "tokens", "bytes per token", "at max_model_len (vLLM's)", "workloads held",
                   "verdict"])
    for check in state.kv_caches:
        capacity, allocated = check.capacity, check.capacity.allocated
        at_max = "-"
        if check.max_model_len:
            at_max = f"{capacity.tokens / check.max_model_len:.2f}"
            if allocated.max_concurrency is not None:
                at_max += f" ({allocated.max_concurrency:g})"
        held = ", ".join(f"{name} {n}/{need}" for name, (n, need) in check.held.items())
        table.add(check.nodeid.split("::", 1)[-1], check.role, f"{capacity.tokens:,}",
                  f"{capacity.shape.bytes_per_token:,}" if capacity.shape else "-", at_max, held,
                  Verdict(Outcome.PASS if check.passed else Outcome.FAIL))
        table.notes += [f"{check.role}: {problem}" for problem in check.problems]
    table.notes.append("workloads held: requests the cache holds at once / the workload's concurrency")
    table.notes += [f"{pair.describe()}: {'PASS' if pair.passed else 'FAIL: ' + str(pair.problem)}"
                    for pair in state.kv_pairs]
    return table


def tables(state: BenchState) -> list[Table]:
    settings = state.settings
    out = [kv_cache_table(state)] if state.kv_caches or state.kv_pairs else []
    out += capacity_report.tables(state)
    if not state.measurements:
        return out
    checks = Table(f"vllm performance: budgets (current = median of repetitions; host class {settings.host_class}; "
                   f"resolves = the regression caught 9 times in 10 at {settings.policy.false_alarm_rate:.0%} "
                   "false alarms)",
                   ["measurement", "server", "metric", "current", "baseline", "delta", "limit", "budget", "tolerance",
                    "resolves", "verdict"])
    for m in state.measurements:
        if not m.checks:
            checks.add(measurement_label(m), m.role, "-", "-", "-", "-", "-", "-", "-", "-",
                       _unchecked_verdict(state, m))
        for c in m.checks:
            checks.add(measurement_label(m), m.role, c.metric, fmt(c.current), fmt(c.reference), pct(c.delta),
                       fmt(c.limit), c.budget.describe(), tolerance_cell(c), resolution_cell(c), c.verdict)
        if m.baseline_note:
            checks.notes.append(f"{measurement_label(m)} [{m.role}]: {m.baseline_note}")
    checks.notes.append("tolerance: the budget's own, or the noise floor its measured noise sets (between boots "
                        "and hosts of the class, within a run; results.json has each check's figures), at most "
                        f"--vllm-max-tolerance {settings.policy.max_tolerance:.0%}")
    for model, classes in state.unjudged_classes.items():
        checks.notes.append(f"{model}: no baselines for host class {settings.host_class} (recorded classes: "
                            f"{', '.join(classes) or 'none'}); its relative budgets were not judged")
    out.append(checks)

    overview = Table("vllm performance: measurements", ["measurement", "server", "workload",
                                                         *[f"{n} ({METRICS[n].unit})" for n in SUMMARY_METRICS],
                                                         "spread", "prefix cache hits", "server (sampled)",
                                                         "client µs/tok", "host steal"])
    for m in state.measurements:
        spread = max(m.result.spread(n) for n in ("output_throughput", "ttft_p50", "tpot_p50"))
        hits = (f"{max(m.runs_of('prefix_cache_hit_rate')):.1%}" if m.result.has("prefix_cache_hit_rate")
                else "not exported")
        overview.add(measurement_label(m), m.role, m.workload.describe(), *[fmt(m.value(n)) for n in SUMMARY_METRICS],
                     f"{spread:.1%}", hits, m.server_summary() or "-", fmt(m.value("client_cpu_us_per_token"), 0),
                     f"{m.value('host_cpu_steal'):.1f}%")
        if m.result.client_saturated:
            overview.notes.append(f"{measurement_label(m)} [{m.role}]: the load client was saturated")
    out.append(overview)
    if per_turn := turns_table(state.measurements):
        out.append(per_turn)

    if interfered := [m for m in state.measurements if m.result.has("prefill_overlapped_gaps")]:
        out.append(prefill_interference_table(interfered))

    if split := [m for m in state.measurements if m.replica_shares]:  # a pair's two are among them
        out.append(replicas_table(split))

    if rooflines := [m for m in state.measurements if m.roofline is not None]:
        out.append(roofline_table(rooflines))

    if state.pairs:
        pairs = Table("vllm performance: pairs (candidate / reference, median of per-pair ratios, repetitions "
                      "interleaved)",
                      ["measurement", "candidate / reference", *[f"{n} ratio" for n in PAIR_METRICS], "pair budgets"])
        for p in state.pairs:
            budget_text = "; ".join(
                f"{c.metric} {c.budget.describe()}"
                + (f" (recorded {c.reference:.3f}, limit {c.limit:.3f})" if c.reference is not None else "")
                + f": {c.verdict}"
                + (f", tolerance {tolerance_cell(c)}" if c.tolerance is not None else "")
                + (f", resolves {abs(c.resolution):.0%}" if c.resolution is not None else "")
                for c in p.checks) or ("-" if p.judged else "NOT JUDGED (no baselines for this host class)")
            pairs.add(measurement_label(p), f"{p.candidate.role} / {p.reference.role}",
                      *[f"{p.ratio(n):.3f}x" for n in PAIR_METRICS], budget_text)
            if p.baseline_note:
                pairs.notes.append(f"{measurement_label(p)} [{p.role}]: {p.baseline_note}")
        out.append(pairs)
    return out


def replicas_table(measurements: list[Measurement]) -> Table:
    """Each replica's share of a measurement on a role of several, and the combined figures."""
    table = Table("vllm performance: replicas (requests spread by the load client; throughput = median over "
                  "repetitions; server = each replica's /metrics, the fullest KV cache and queue of any "
                  "repetition, preemptions in all)", ["measurement", "server", "replica", "requests", "completed",
                                                     "output tok/s", "requests/s", "server"])
    for m in measurements:
        for share in m.replica_shares:
            table.add(measurement_label(m), m.role, share.replica, str(share.requests), str(share.completed),
                      fmt(share.output_throughput), fmt(share.request_throughput), replica_server_summary(share))
        table.add(measurement_label(m), m.role, "combined", str(sum(s.requests for s in m.replica_shares)),
                  str(sum(s.completed for s in m.replica_shares)), fmt(m.value("output_throughput")),
                  fmt(m.value("request_throughput")), m.server_summary() or "-")
    return table


def replica_server_summary(share: ReplicaShare) -> str:
    """One replica's /metrics figures as the overview table writes a server's ("-": not sampled)."""
    parts = []
    if share.kv_cache_usage_peak is not None:
        parts.append(f"KV cache <= {share.kv_cache_usage_peak:.1%}")
    if share.requests_waiting_peak is not None:
        parts.append(f"waiting <= {share.requests_waiting_peak:.0f}")
    if share.num_preemptions is not None:
        parts.append(f"preempted {share.num_preemptions:.0f}")
    return ", ".join(parts) or "-"


def prefill_interference_table(measurements: list[Measurement]) -> Table:
    """What long prefills cost the streams beside them: their inter-token gaps clear of and during a
    long prompt's prefill (medians over the repetitions), beside the long prompts' own prefill."""
    names = ("itl_p99_outside_prefill", "itl_p99_during_prefill", "itl_max_during_prefill", "long_prompt_ttft_p50",
             "long_prompt_prefill_throughput")
    table = Table("vllm performance: long prompts beside streaming requests (median of repetitions)",
                  ["measurement", "server", *[f"{n} ({METRICS[n].unit})" for n in names], "gaps during prefill"])
    for m in measurements:
        table.add(measurement_label(m), m.role, *[fmt(m.value(n)) if m.result.has(n) else "-" for n in names],
                  fmt(m.value("prefill_overlapped_gaps"), 0))
    table.notes.append("a gap is 'during prefill' when it overlaps a long prompt's send-to-first-token window; "
                       "chunked prefill (a small --max-num-batched-tokens) should keep it near the gaps outside")
    return table


def roofline_table(measurements: list[Measurement]) -> Table:
    table = Table("vllm performance: roofline (single stream: TPOT p50 against the memory-bandwidth floor, weight "
                  "bytes / the device's bandwidth)",
                  ["measurement", "server", "TPOT p50 (ms)", "weights (GB)", "bandwidth (TB/s)", "floor (ms)",
                   "share of the limit"])
    for m in measurements:
        r = m.roofline
        assert r is not None
        table.add(measurement_label(m), m.role, f"{r.tpot_ms:.2f}", f"{r.weight_bytes / 1e9:.2f}",
                  f"{r.bandwidth_bytes_per_s / 1e12:g}", f"{r.floor_ms:.2f}", f"{r.share:.0%}")
    table.notes.append("weights: the served checkpoint's (online FP8: linear layers at one byte per parameter); "
                       "bandwidth: the device's data sheet (pytest_vllm/perf/roofline.py)")
    return table


def _check_json(c: Check) -> dict[str, Any]:
    noise = c.noise
    return {"metric": c.metric, "budget": c.budget.source, "kind": c.budget.kind, "pair": c.budget.pair,
            "current": c.current, "reference": c.reference, "limit": c.limit, "tolerance": c.tolerance,
            "tolerance_source": c.tolerance_source, "resolution": c.resolution, "passed": c.passed,
            "verdict": c.verdict.label, "note": c.note,
            "noise": None if noise is None else {"sigma": noise.sigma, "within": noise.within,
                                                  "between": noise.between, "between_measured": noise.between_measured,
                                                  "prior": noise.prior, "recordings": noise.recordings,
                                                  "repeats": noise.repeats}}


def _first_attempt(judged: Judged) -> dict[str, Any] | None:
    """The measurement that was out of budget and measured again (None: the first one stood)."""
    first = judged.first_attempt
    if first is None:
        return None
    return {"checks": [_check_json(c) for c in first.all_checks],
            "medians": {n: first.value(n) for n in ("output_throughput", "ttft_p50", "tpot_p50")}}


def _metrics_json(result: Any) -> dict[str, Any]:
    return {n: {"median": result.median(n), "runs": result.values(n), "spread": result.spread(n)}
            for n in result.names} if result.runs else {}


def kv_cache_json(check: KVCacheCheck) -> dict[str, Any]:
    capacity, allocated = check.capacity, check.capacity.allocated
    shape = capacity.shape
    return {"test": check.nodeid, "role": check.role, "model": check.model, "passed": check.passed,
            "tokens": capacity.tokens, "block_size": allocated.block_size, "memory_bytes": allocated.memory_bytes,
            "cache_dtype": allocated.cache_dtype, "vllm_max_concurrency": allocated.max_concurrency,
            "max_model_len": check.max_model_len,
            "bytes_per_token": shape.bytes_per_token if shape else None,
            "shape": None if shape is None else {"layers": shape.layers, "kv_heads": shape.kv_heads,
                                                 "head_dim": shape.head_dim, "dtype": shape.dtype},
            "workloads": {name: {"held": n, "concurrency": need} for name, (n, need) in check.held.items()},
            "problems": check.problems}


def to_json(state: BenchState) -> dict[str, Any]:
    def measurement(m: Measurement) -> dict[str, Any]:
        return {
            "test": m.nodeid, "role": m.role, "model": m.model, "workload": m.workload.to_dict(),
            "workload_key": m.workload.key, "server_key": m.server_key, "server_flags": m.server_flags,
            "passed": m.passed, "judged": m.judged, "baseline": str(m.baseline.path) if m.baseline else None,
            "baseline_note": m.baseline_note, "metrics": _metrics_json(m.result),
            "checks": [_check_json(c) for c in m.checks], "client_saturated": m.result.client_saturated,
            "first_attempt": _first_attempt(m),
            "roofline": m.roofline.to_json() if m.roofline is not None else None,
            "replicas": [share.to_json() for share in m.replica_shares],
        }

    def pair(p: PairComparison) -> dict[str, Any]:
        return {"test": p.nodeid, "role": p.role, "model": p.candidate.model, "workload": p.workload.to_dict(),
                "workload_key": p.workload.key, "server_key": p.server_key,
                "server_flags": {"candidate": p.candidate.server_flags, "reference": p.reference.server_flags},
                "passed": p.passed, "judged": p.judged, "baseline": str(p.baseline.path) if p.baseline else None,
                "baseline_note": p.baseline_note, "ratios": {n: p.ratio(n) for n in PAIR_METRICS},
                "metrics": _metrics_json(p.ratios), "checks": [_check_json(c) for c in p.checks],
                "first_attempt": _first_attempt(p)}

    settings = state.settings
    return {"settings": {"gpu": settings.gpu, "host_class": settings.host_class, "update_baselines": settings.record,
                         "add_baselines": settings.add_recording,
                         "false_alarm_rate": settings.policy.false_alarm_rate,
                         "max_tolerance": settings.policy.max_tolerance},
            # What a baseline records of its run: `pytest-vllm baselines add` pools results files with it.
            "environment": settings.environment, "metric_definitions": METRIC_DEFINITIONS,
            "measurements": [measurement(m) for m in state.measurements],
            "pairs": [pair(p) for p in state.pairs],
            "kv_caches": [kv_cache_json(c) for c in state.kv_caches],
            "kv_cache_pairs": [{"test": p.nodeid, "reference": p.reference_role, "candidate": p.candidate_role,
                                "reference_tokens": p.capacity.reference_tokens,
                                "candidate_tokens": p.capacity.candidate_tokens, "ratio": p.capacity.ratio,
                                "cost_ratio": p.capacity.cost_ratio, "floor": p.floor, "passed": p.passed,
                                "problem": p.problem} for p in state.kv_pairs],
            **capacity_report.to_json(state, _check_json, _metrics_json),
            "baselines_written": [str(p) for p in state.written]}
