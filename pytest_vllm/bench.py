"""Performance measurements inside tests: run → metrics → baseline → budgets → verdict.

``vllm_bench.run(server, workload)`` is what a perf test calls. It runs the workload's
repetitions, refuses a run with any failed request (invalid, not averaged away), looks up the
baseline recorded for this GPU, model, test, server spec and workload, applies the test's
budgets, keeps the measurement for the reports, and fails the test once with a table of every
metric against its budget. ``--update-baselines`` records instead of comparing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_vllm import baselines
from pytest_vllm.budgets import DEFAULT_BUDGETS, Budget, Check, NoisePolicy, evaluate, parse_budgets
from pytest_vllm.errors import BaselineError
from pytest_vllm.gpu import GPUProfile
from pytest_vllm.load.client import RequestRecord, new_session, prepare, send_streaming
from pytest_vllm.load.host import NOTABLE_STEAL_PCT, HostCPUTimes, steal_share
from pytest_vllm.load.runner import RunResult, WorkloadRuns, build_prompts, event_loop, run_async, run_workload
from pytest_vllm.load.workload import Workload
from pytest_vllm.metrics import METRICS, RepeatedResult, compute
from pytest_vllm.server.handle import ServerHandle

# Metrics shown in tables when no budget names them.
HEADLINE = ("output_throughput", "request_throughput", "ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99",
            "itl_p50", "e2el_p50")


@dataclass
class Measurement:
    """One workload measured on one server, with its verdict."""

    nodeid: str
    role: str
    model: str
    workload: Workload
    result: RepeatedResult
    server_key: str
    server_flags: dict[str, Any]
    checks: list[Check] = field(default_factory=list)
    baseline: baselines.Baseline | None = None
    baseline_note: str = ""
    prompt_tokens: int = 0
    records: list[list[RequestRecord]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def value(self, metric: str) -> float:
        return self.result.median(metric)


@dataclass
class PairComparison:
    nodeid: str
    workload: Workload
    base: Measurement
    compressed: Measurement
    checks: list[Check] = field(default_factory=list)

    def ratio(self, metric: str) -> float:
        base = self.base.value(metric)
        return self.compressed.value(metric) / base if base else float("nan")


@dataclass
class BenchSettings:
    """Session-wide performance settings, resolved from RunConfig and the machine."""

    gpu: str
    baseline_dir: Path
    update: bool  # record instead of judging (--update-baselines or --add-baselines)
    missing: str  # "fail" | "skip"
    noise: NoisePolicy
    default_budgets: dict[str, Budget]
    environment: dict[str, Any]
    repeats: int | None = None
    pool: bool = False  # --add-baselines: a recording joins the stored ones instead of replacing them


@dataclass
class BenchState:
    """Everything measured in this session (the reports read it)."""

    settings: BenchSettings
    measurements: list[Measurement] = field(default_factory=list)
    pairs: list[PairComparison] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)


def marker_budgets(item: pytest.Item) -> tuple[dict[str, Budget], dict[str, Budget]]:
    """Budgets from ``vllm_budget`` / ``vllm_pair_budget`` markers (closest wins); UsageError if bad."""
    from pytest_vllm.budgets import MARKER, PAIR_MARKER

    budgets: dict[str, Budget] = {}
    pair: dict[str, Budget] = {}
    where = f"{item.nodeid}: "
    for marker in reversed(list(item.iter_markers(name=MARKER))):
        budgets.update(parse_budgets(marker.kwargs, where=where))
    for marker in reversed(list(item.iter_markers(name=PAIR_MARKER))):
        pair.update(parse_budgets(marker.kwargs, kind_hint="pair", where=where))
    return budgets, pair


class Bench:
    """The ``vllm_bench`` fixture: measure, compare with the baseline, gate."""

    def __init__(self, state: BenchState, item: pytest.Item, say: Callable[[str], None]) -> None:
        self._state = state
        self._item = item
        self._say = say
        self._budgets, self._pair_budgets = marker_budgets(item)

    @property
    def settings(self) -> BenchSettings:
        return self._state.settings

    # -- public API ----------------------------------------------------------------------------
    def run(self, server: ServerHandle, workload: Workload, budgets: Mapping[str, str] | None = None,
            gate: bool = True) -> Measurement:
        """Measure ``workload`` on ``server`` and gate it (``gate=False``: measure and record only)."""
        workload = self._with_repeats(workload)
        self._say(f"measuring {workload.name} on the {server.role} server: {workload.describe()}")
        runs = run_workload(server.url, server.model, workload, api_key=server.api_key, say=self._say,
                            label=f"{server.role}/{workload.name}")
        measurement = self._measurement(server, workload, runs)
        return self._judge(measurement, budgets, gate)

    def compare(self, reference: ServerHandle, candidate: ServerHandle, workload: Workload,
                budgets: Mapping[str, str] | None = None) -> PairComparison:
        """Measure the same workload on two servers in this run (``compare(*server_pair, w)``: base,
        then compressed) and apply the ``vllm_pair_budget`` ratios candidate / reference."""
        first = self.run(reference, workload, budgets, gate=False)
        second = self.run(candidate, workload, budgets, gate=False)
        comparison = PairComparison(self._item.nodeid, first.workload, first, second)
        for metric, budget in self._pair_budgets.items():
            comparison.checks.append(evaluate(budget, second.value(metric), first.value(metric)))
        self._state.pairs.append(comparison)
        if not (first.passed and second.passed and all(c.passed for c in comparison.checks)):
            pytest.fail(self._pair_failure_text(comparison), pytrace=False)
        for measurement in (first, second):
            self._require_baseline(measurement)
        return comparison

    def single_stream(self, server: ServerHandle, workload: Workload, benchmark: Any = None,
                      budgets: Mapping[str, str] | None = None) -> Measurement:
        """Sequential requests, one at a time; each request is also a pytest-benchmark round, so the
        end-to-end latencies reach ``--benchmark-json`` / ``--benchmark-compare``."""
        workload = self._with_repeats(workload.with_(concurrency=1, request_rate=None))
        self._say(f"measuring {workload.name} on the {server.role} server: {workload.describe()}")
        runs = _single_stream_runs(server, workload, benchmark)
        measurement = self._measurement(server, workload, runs)
        if benchmark is not None:
            for metric in ("ttft_p50", "tpot_p50", "itl_p50", "e2el_p50", "output_throughput"):
                benchmark.extra_info[metric] = round(measurement.value(metric), 3)
            benchmark.extra_info["server"] = f"{server.role}:{server.model}"
        return self._judge(measurement, budgets, gate=True)

    # -- internals -----------------------------------------------------------------------------
    def _with_repeats(self, workload: Workload) -> Workload:
        return workload.with_(repeats=self.settings.repeats) if self.settings.repeats else workload

    def _measurement(self, server: ServerHandle, workload: Workload, runs: WorkloadRuns) -> Measurement:
        result = RepeatedResult([compute(run.records, run.duration, client_cpu_s=run.client_cpu_s,
                                         loop_lag_mean_s=run.loop_lag_mean_s, loop_lag_max_s=run.loop_lag_max_s,
                                         host_steal=run.host_steal, slo_ms=workload.slo_ms)
                                 for run in runs.runs])
        if result.errors:
            shown = "\n  ".join(result.errors[:10])
            more = f"\n  ... and {len(result.errors) - 10} more" if len(result.errors) > 10 else ""
            pytest.fail(f"{workload.name} on the {server.role} server is invalid: {len(result.errors)} request(s) "
                        f"failed (a run with failures is not averaged away):\n  {shown}{more}", pytrace=False)
        if result.client_saturated:
            self._say(f"warning: the load client was saturated during {workload.name} (event-loop lag or CPU); "
                      "latencies include client delay")
        server_key = server.spec.portable_key if server.spec else f"remote:{server.model}"
        flags = server.spec.flag_dict if server.spec else {}
        return Measurement(self._item.nodeid, server.role, server.model, workload, result, server_key, flags,
                           prompt_tokens=runs.prompt_tokens, records=[run.records for run in runs.runs])

    def _judge(self, measurement: Measurement, budgets: Mapping[str, str] | None, gate: bool) -> Measurement:
        settings = self.settings
        wanted = {**settings.default_budgets, **self._budgets}
        if budgets:
            wanted.update(parse_budgets(budgets, where=f"{self._item.nodeid}: "))
        key = baselines.BaselineKey(settings.gpu, measurement.model, measurement.nodeid, measurement.workload.name,
                                     measurement.role)
        try:
            stored = baselines.load(settings.baseline_dir, key)
        except BaselineError as exc:
            pytest.fail(str(exc), pytrace=False)
        if stored is not None and stored.workload_key != measurement.workload.key:
            # Numbers of another workload say nothing about this one.
            measurement.baseline_note = (f"the baseline in {stored.path} was recorded for another workload; "
                                         "re-record it with --update-baselines")
            stored = None
        elif stored is not None and stored.server_key != measurement.server_key:
            # A changed server configuration is exactly what a regression gate must judge: compare, and say so.
            changes = flag_changes(stored.data["server"].get("flags", {}), measurement.server_flags)
            measurement.baseline_note = (
                f"the server differs from the baseline's ({changes or 'model or environment'}); "
                "compared anyway: re-record with --update-baselines if the change is intended")
        if stored is not None:
            changed = baselines.environment_changes(stored.data.get("environment", {}), settings.environment)
            if changed:
                # Not a verdict: the numbers may differ for this reason alone, and the reader should know.
                note = f"the baseline was recorded in another environment ({changed})"
                measurement.baseline_note = "; ".join(filter(None, [measurement.baseline_note, note]))
        measurement.baseline = stored
        for metric, budget in wanted.items():
            current = measurement.value(metric)
            if budget.kind == "relative":
                # Recording replaces the baseline: the old one judges nothing.
                if settings.update or stored is None or stored.median(metric) is None:
                    continue
                measurement.checks.append(evaluate(budget, current, stored.median(metric), stored.spread(metric),
                                                   settings.noise))
            elif budget.kind == "absolute":
                measurement.checks.append(evaluate(budget, current))
        self._state.measurements.append(measurement)
        if settings.update:
            self._record(measurement)
        if not gate:
            return measurement
        if not measurement.passed:
            pytest.fail(failure_text(measurement), pytrace=False)
        self._require_baseline(measurement)
        return measurement

    def _require_baseline(self, measurement: Measurement) -> None:
        """A measurement with relative budgets but no baseline never passes silently."""
        settings = self.settings
        relative = any(b.kind == "relative" for b in {**settings.default_budgets, **self._budgets}.values())
        if measurement.baseline is not None or settings.update or not relative:
            return
        key = baselines.BaselineKey(settings.gpu, measurement.model, measurement.nodeid, measurement.workload.name,
                                     measurement.role)
        message = measurement.baseline_note or (
            f"no baseline for {key.entry_name} in {key.path(settings.baseline_dir)}; record one with "
            "--update-baselines")
        if settings.missing == "skip":
            pytest.skip(message)
        pytest.fail(message + " (or pass --vllm-missing-baseline skip)", pytrace=False)

    def _record(self, measurement: Measurement) -> None:
        settings = self.settings
        key = baselines.BaselineKey(settings.gpu, measurement.model, measurement.nodeid, measurement.workload.name,
                                     measurement.role)
        entry = baselines.make_entry(
            measurement.result, {"key": measurement.server_key, "flags": measurement.server_flags},
            {**measurement.workload.to_dict(), "key": measurement.workload.key}, settings.environment,
            measurement.nodeid, measurement.role)
        try:
            path = baselines.write(settings.baseline_dir, key, entry, pool=settings.pool)
        except BaselineError as exc:
            pytest.fail(f"not recorded: {exc}", pytrace=False)
        verb = "added to" if settings.pool else "written to"
        measurement.baseline_note = f"baseline {verb} {path}"
        self._state.written.append(path)
        self._say(f"baseline {verb}: {path} [{key.entry_name}]")

    def _pair_failure_text(self, comparison: PairComparison) -> str:
        parts = []
        for measurement in (comparison.base, comparison.compressed):
            if not measurement.passed:
                parts.append(failure_text(measurement))
        if comparison.checks and not all(c.passed for c in comparison.checks):
            rows = [f"  {c.metric:<24} base {comparison.base.value(c.metric):>10.2f}  compressed "
                    f"{comparison.compressed.value(c.metric):>10.2f}  {c.note:<14} budget {c.budget.describe():<26} "
                    f"{'ok' if c.passed else 'FAIL'}" for c in comparison.checks]
            parts.append(f"compressed vs base on {comparison.workload.name}:\n" + "\n".join(rows))
        return "\n\n".join(parts)


def failure_text(measurement: Measurement) -> str:
    """Every checked metric against its budget, in one table (the test fails once)."""
    lines = [f"{measurement.workload.name} on the {measurement.role} server ({measurement.model}) is out of budget:",
             f"  {'metric':<24} {'current':>10} {'baseline':>10} {'delta':>8} {'limit':>10}  budget"]
    for check in measurement.checks:
        unit = METRICS[check.metric].unit
        ref = f"{check.reference:10.2f}" if check.reference is not None else f"{'-':>10}"
        delta = f"{check.delta:+8.1%}" if check.delta is not None else f"{'-':>8}"
        verdict = "ok" if check.passed else "FAIL"
        note = f" ({check.note})" if check.note else ""
        lines.append(f"  {check.metric:<24} {check.current:10.2f} {ref} {delta} {check.limit:10.2f}  "
                     f"{check.budget.describe()} [{unit}] {verdict}{note}")
    if measurement.baseline is not None:
        lines.append(f"  baseline: {measurement.baseline.path} (recorded {measurement.baseline.recorded})")
    if measurement.baseline_note:
        lines.append(f"  note: {measurement.baseline_note}")
    if steal := host_note(measurement):
        lines.append(f"  host: {steal}")
    return "\n".join(lines)


def host_note(measurement: Measurement) -> str:
    """Says when the host was loaded by other tenants during the measurement ("" when it was not)."""
    steal = measurement.value("host_cpu_steal")
    if steal < NOTABLE_STEAL_PCT:
        return ""
    stored = measurement.baseline.median("host_cpu_steal") if measurement.baseline is not None else None
    then = f" (baseline: {stored:.1f}%)" if stored is not None else ""
    return (f"the hypervisor gave {steal:.1f}% of this machine's CPU time to other tenants during the measurement"
            f"{then}; a server bound by host work slows with it: see whether the result repeats on a quiet host")


def _single_stream_runs(server: ServerHandle, workload: Workload, benchmark: Any) -> WorkloadRuns:
    """Requests one after the other, each a blocking call (pytest-benchmark times plain calls)."""
    prompts, warm = run_async(build_prompts(server.url, server.model, workload, server.api_key))
    requests = [prepare(workload, server.model, p) for p in prompts]
    records: list[RequestRecord] = []
    total = workload.num_requests * workload.repeats
    with event_loop() as loop:
        session = loop.run(_open_session(server.api_key))
        try:
            for prompt in warm:
                loop.run(send_streaming(session, server.url, prepare(workload, server.model, prompt),
                                        RequestRecord(-1, warmup=True)))
            order = iter(range(total))

            def one_request() -> None:
                index = next(order)
                record = RequestRecord(index % len(requests))
                record.scheduled_at = time.perf_counter()
                loop.run(send_streaming(session, server.url, requests[index % len(requests)], record))
                records.append(record)

            cpu_before = time.thread_time()
            host_before = HostCPUTimes.now()
            if benchmark is not None:
                benchmark.pedantic(one_request, rounds=total, iterations=1)
            else:
                for _ in range(total):
                    one_request()
            cpu_per_request = (time.thread_time() - cpu_before) / max(1, len(records))
            host_steal = steal_share(host_before, HostCPUTimes.now())
        finally:
            loop.run(session.close())
    runs = WorkloadRuns(workload, prompt_tokens=sum(p.input_tokens for p in prompts))
    for repeat in range(workload.repeats):
        chunk = records[repeat * workload.num_requests:(repeat + 1) * workload.num_requests]
        end = max((r.chunk_times[-1] for r in chunk if r.chunk_times), default=chunk[-1].sent_at)
        runs.runs.append(RunResult(chunk, chunk[0].sent_at, end, client_cpu_s=cpu_per_request * len(chunk),
                                   host_steal=host_steal))
    return runs


async def _open_session(api_key: str) -> Any:
    return new_session(api_key)


def settings_for(config: Any, profile: GPUProfile, device_name: str, driver: str, vllm_version: str
                 ) -> BenchSettings:
    """BenchSettings from a RunConfig (``config``), the GPU profile and the machine.

    Default budgets: the field's (DEFAULT_BUDGETS), then the profile's (a CPU run is noisier
    from one boot to the next), then ``[tool.pytest_vllm.budgets]``; markers override per test.
    """
    defaults = {**DEFAULT_BUDGETS, **profile.budget_defaults}
    defaults.update({k: str(v) for k, v in config.budgets.items()})
    gpu = profile.name
    default_budgets = parse_budgets(defaults, where="[tool.pytest_vllm.budgets]: ")
    environment = baselines.environment_record(gpu, device_name, driver, vllm_version, config.rootdir)
    return BenchSettings(gpu=gpu, baseline_dir=config.baseline_dir,
                         update=config.update_baselines or config.add_baselines,
                         missing=config.missing_baseline, noise=NoisePolicy(config.noise_k, config.max_tolerance),
                         default_budgets=default_budgets, environment=environment, repeats=config.repeats,
                         pool=config.add_baselines)


def flag_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    """``max_num_seqs: 8 → 1, enforce_eager: unset → True`` for notes."""
    changes = []
    for name in sorted(set(before) | set(after)):
        if name == "served_model_name" or before.get(name) == after.get(name):
            continue
        changes.append(f"{name}: {before.get(name, 'unset')} → {after.get(name, 'unset')}")
    return ", ".join(changes)


def headline(measurements: Sequence[Measurement]) -> list[str]:
    names = list(HEADLINE)
    for m in measurements:
        for c in m.checks:
            if c.metric not in names:
                names.append(c.metric)
    return names
