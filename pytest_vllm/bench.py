"""Performance measurements inside tests: run → metrics → baseline → budgets → verdict.

``vllm_bench.run(server, workload)`` is what a perf test calls. It runs the workload's
repetitions, each on prompts of its own, refuses a run with any failed request or with prompts
the server's prefix cache had seen (invalid, not averaged away), looks up the baseline recorded
for this host class, model, test, server spec and workload, applies the test's budgets with
tolerances from the measured noise, keeps the measurement for the reports, and fails the test
once with a table of every metric against its budget. ``compare`` does the same for two
servers with their repetitions interleaved, and gates the median of the per-pair ratios.
``--update-baselines`` / ``--add-baselines`` record instead of comparing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_vllm import baselines
from pytest_vllm.budgets import DEFAULT_BUDGETS, Budget, Check, GatePolicy, evaluate, parse_budgets
from pytest_vllm.errors import BaselineError
from pytest_vllm.gpu import GPUProfile
from pytest_vllm.load.host import NOTABLE_STEAL_PCT
from pytest_vllm.load.runner import Target, WorkloadRuns, run_async, run_pair_async, run_single_stream, run_workload
from pytest_vllm.load.workload import Workload
from pytest_vllm.metrics import METRICS, BenchResult, RepeatedResult, compute_run
from pytest_vllm.resolution import baseline_noise, run_noise
from pytest_vllm.server.handle import ServerHandle

# Metrics shown in tables when no budget names them.
HEADLINE = ("output_throughput", "request_throughput", "ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99",
            "itl_p50", "e2el_p50")
# Ratios a pair comparison records and shows (its budgets may name others).
PAIR_METRICS = ("output_throughput", "request_throughput", "ttft_p50", "tpot_p50", "e2el_p50")
# A workload without a shared prefix whose prompts the prefix cache served beyond this share (plus
# a chat template's frame) measured a warm cache, not the server: the measurement is invalid.
MAX_COLD_HIT_RATE = 0.05
# The prior of a ratio's between-boot noise: both servers of the pair boot anew, so their boot
# effects add up (sqrt 2) where they are independent; a host-wide effect cancels in the ratio.
PAIR_PRIOR_FACTOR = math.sqrt(2)


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
    records: list[list[Any]] = field(default_factory=list)
    judged: bool = True  # False: no baseline for this host class, relative budgets not judged

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def value(self, metric: str) -> float:
        return self.result.median(metric)

    def runs_of(self, metric: str) -> list[float]:
        return self.result.values(metric)

    def baseline_key(self, scope: str) -> baselines.BaselineKey:
        return baselines.BaselineKey(scope, self.model, self.nodeid, self.workload.name, self.role)

    def entry(self, environment: Mapping[str, Any]) -> dict[str, Any]:
        return baselines.make_entry(self.result, {"key": self.server_key, "flags": self.server_flags},
                                    {**self.workload.to_dict(), "key": self.workload.key}, environment,
                                    self.nodeid, self.role)


@dataclass
class PairComparison:
    """The same workload on two servers, repetitions interleaved; ratios are candidate / reference
    per pair of repetitions, and the gate reads their median."""

    nodeid: str
    workload: Workload
    reference: Measurement
    candidate: Measurement
    ratios: RepeatedResult  # one BenchResult of ratios per pair of repetitions
    checks: list[Check] = field(default_factory=list)
    baseline: baselines.Baseline | None = None
    baseline_note: str = ""
    judged: bool = True

    @property
    def role(self) -> str:
        return f"{self.candidate.role}_over_{self.reference.role}"

    @property
    def server_key(self) -> str:
        return f"{self.candidate.server_key}/{self.reference.server_key}"

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def ratio(self, metric: str) -> float:
        return self.ratios.median(metric) if self.ratios.has(metric) else float("nan")

    def value(self, metric: str) -> float:
        return self.ratio(metric)

    def runs_of(self, metric: str) -> list[float]:
        return self.ratios.values(metric)

    def baseline_key(self, scope: str) -> baselines.BaselineKey:
        return baselines.BaselineKey(scope, self.candidate.model, self.nodeid, self.workload.name, self.role)

    def entry(self, environment: Mapping[str, Any]) -> dict[str, Any]:
        flags = {"candidate": self.candidate.server_flags, "reference": self.reference.server_flags}
        return baselines.make_entry(self.ratios, {"key": self.server_key, "flags": flags},
                                    {**self.workload.to_dict(), "key": self.workload.key}, environment,
                                    self.nodeid, self.role)


def pair_ratios(reference: RepeatedResult, candidate: RepeatedResult, metrics: Sequence[str]) -> RepeatedResult:
    """candidate / reference for each pair of repetitions (the same index), metric by metric."""
    runs = []
    for ref, cand in zip(reference.runs, candidate.runs):
        runs.append(BenchResult({m: cand.values[m] / ref.values[m] for m in metrics
                                 if m in ref.values and m in cand.values and ref.values[m]}))
    return RepeatedResult(runs)


@dataclass
class BenchSettings:
    """Session-wide performance settings, resolved from RunConfig and the machine."""

    profile: GPUProfile
    host_class: str  # where this host's baselines are filed (hostclass.py)
    baseline_dir: Path
    record: bool  # record instead of judging (--update-baselines or --add-baselines)
    missing: str  # "auto" | "fail" | "skip"
    policy: GatePolicy
    default_budgets: dict[str, Budget]
    environment: dict[str, Any]
    repeats: int | None = None
    add_recording: bool = False  # --add-baselines: a recording joins the stored ones instead of replacing them
    prompt_seed: int = 0  # --vllm-prompt-seed

    @property
    def gpu(self) -> str:
        return self.profile.name


@dataclass
class BenchState:
    """Everything measured in this session (the reports read it)."""

    settings: BenchSettings
    measurements: list[Measurement] = field(default_factory=list)
    pairs: list[PairComparison] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    said: set[str] = field(default_factory=set)  # once-per-session lines already said
    unjudged_classes: dict[str, list[str]] = field(default_factory=dict)  # model -> classes with baselines


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


# -- the judge: pure functions of a measurement, its budgets and the stored baseline ----------
Judged = Measurement | PairComparison


def stored_baseline(settings: BenchSettings, judged: Judged) -> tuple[baselines.Baseline | None, str]:
    """The baseline ``judged`` is compared with (None when there is none it may be compared with),
    and what a reader should know about it. BaselineError for a damaged file."""
    stored = baselines.load(settings.baseline_dir, judged.baseline_key(settings.host_class))
    if stored is None:
        return None, ""
    if stored.workload_key != judged.workload.key:
        # Numbers of another workload (or of prompts drawn another way) say nothing about this one.
        return None, (f"the baseline in {stored.path} was recorded for another workload or prompt scheme; "
                      "re-record it with --update-baselines")
    notes = []
    if stored.server_key != judged.server_key:
        # A changed server configuration is exactly what a regression gate must judge: compare, and say so.
        before = stored.data["server"].get("flags", {})
        after = judged.server_flags if isinstance(judged, Measurement) else {
            "candidate": judged.candidate.server_flags, "reference": judged.reference.server_flags}
        changes = flag_changes(before, after) or "model or environment"
        notes.append(f"the server differs from the baseline's ({changes}); compared anyway: re-record with "
                     "--update-baselines if the change is intended")
    changed = baselines.environment_changes(stored.data.get("environment", {}), settings.environment)
    if changed:
        # Not a verdict: the numbers may differ for this reason alone, and the reader should know.
        notes.append(f"the baseline was recorded in another environment ({changed})")
    return stored, "; ".join(notes)


def judge(judged: Judged, budgets: Mapping[str, Budget], stored: baselines.Baseline | None,
          settings: BenchSettings) -> list[Check]:
    """Every budget that can be applied: absolute ones always, relative ones against ``stored``
    with the noise model's tolerance (none while recording: recording replaces, it does not judge)."""
    checks = []
    is_pair = isinstance(judged, PairComparison)
    for metric, budget in budgets.items():
        if isinstance(judged, PairComparison) and not judged.ratios.has(metric):
            continue
        runs = judged.runs_of(metric)
        current = judged.value(metric)
        if budget.kind == "relative":
            reference = stored.median(metric) if stored is not None else None
            if settings.record or stored is None or reference is None:
                continue
            prior = settings.profile.boot_noise_of(metric) * (PAIR_PRIOR_FACTOR if is_pair else 1.0)
            noise = baseline_noise(runs, stored.recording_runs(metric), prior)
            checks.append(evaluate(budget, current, reference, noise, settings.policy))
        else:
            checks.append(evaluate(budget, current, noise=run_noise(runs), policy=settings.policy))
    return checks


def cold_cache_problem(measurement: Measurement, runs: WorkloadRuns) -> str | None:
    """Why a measurement is invalid because its prompts were served from the prefix cache, if so."""
    workload = measurement.workload
    if workload.shared_prefix_len or workload.dataset or not measurement.result.has("prefix_cache_hit_rate"):
        return None
    allowed = MAX_COLD_HIT_RATE + runs.template_tokens / workload.input_len
    worst = max(measurement.runs_of("prefix_cache_hit_rate"))
    if worst <= allowed:
        return None
    return (f"{workload.name} on the {measurement.role} server is invalid: the server's prefix cache served "
            f"{worst:.0%} of a repetition's prompt tokens (at most {allowed:.0%} for a workload without "
            f"shared_prefix_len), so it measured a warm cache, not the server. Its prompts had been sent to this "
            f"server before: by another measurement with the workload name {workload.name!r} and seed "
            f"{workload.seed} (give each its own name or seed), or by an earlier run against this long-running "
            "server (pass another --vllm-prompt-seed). A prefix-caching workload sets shared_prefix_len")


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
        return self._judge(self._measurement(server, runs), budgets, gate)

    def compare(self, reference: ServerHandle, candidate: ServerHandle, workload: Workload,
                budgets: Mapping[str, str] | None = None) -> PairComparison:
        """Measure the same workload on two servers (``compare(*server_pair, w)``: base, then
        compressed), their repetitions interleaved, and apply the ``vllm_pair_budget`` ratios
        candidate / reference to the median of the per-pair ratios."""
        workload = self._with_repeats(workload)
        self._say(f"measuring {workload.name} on the {reference.role} and {candidate.role} servers, repetitions "
                  f"interleaved: {workload.describe()}")
        runs = run_async(run_pair_async(self._target(reference, workload), self._target(candidate, workload),
                                        workload, say=self._say))
        first = self._judge(self._measurement(reference, runs[0]), budgets, gate=False)
        second = self._judge(self._measurement(candidate, runs[1]), budgets, gate=False)
        metrics = sorted(set(PAIR_METRICS) | set(self._pair_budgets))
        comparison = PairComparison(self._item.nodeid, workload, first, second,
                                    pair_ratios(first.result, second.result, metrics))
        self._state.pairs.append(comparison)
        comparison.baseline, comparison.baseline_note = self._stored(comparison)
        comparison.checks = judge(comparison, self._pair_budgets, comparison.baseline, self.settings)
        if self.settings.record:
            self._record(comparison)
        if not (first.passed and second.passed and comparison.passed):
            pytest.fail(self._pair_failure_text(comparison), pytrace=False)
        for measurement in (first, second):
            self._require_baseline(measurement, self._budget_set(budgets))
        self._require_baseline(comparison, self._pair_budgets)
        return comparison

    def single_stream(self, server: ServerHandle, workload: Workload, benchmark: Any = None,
                      budgets: Mapping[str, str] | None = None) -> Measurement:
        """Sequential requests, one at a time; each request is also a pytest-benchmark round, so the
        end-to-end latencies reach ``--benchmark-json`` / ``--benchmark-compare``."""
        workload = self._with_repeats(workload.with_(concurrency=1, request_rate=None))
        self._say(f"measuring {workload.name} on the {server.role} server: {workload.describe()}")
        runs = run_single_stream(self._target(server, workload), workload, benchmark, say=self._say)
        measurement = self._measurement(server, runs)
        if benchmark is not None:
            for metric in ("ttft_p50", "tpot_p50", "itl_p50", "e2el_p50", "output_throughput"):
                benchmark.extra_info[metric] = round(measurement.value(metric), 3)
            benchmark.extra_info["server"] = f"{server.role}:{server.model}"
        return self._judge(measurement, budgets, gate=True)

    # -- internals -----------------------------------------------------------------------------
    def _with_repeats(self, workload: Workload) -> Workload:
        """The workload with the run's --vllm-repeats and --vllm-prompt-seed."""
        settings = self.settings
        return workload.with_(repeats=settings.repeats or workload.repeats,
                              prompt_seed=workload.prompt_seed or settings.prompt_seed)

    @staticmethod
    def _target(server: ServerHandle, workload: Workload) -> Target:
        return Target(server.url, server.model, server.api_key, f"{server.role}/{workload.name}")

    def _budget_set(self, budgets: Mapping[str, str] | None) -> dict[str, Budget]:
        wanted = {**self.settings.default_budgets, **self._budgets}
        if budgets:
            wanted.update(parse_budgets(budgets, where=f"{self._item.nodeid}: "))
        return wanted

    def _say_once(self, line: str) -> None:
        if line not in self._state.said:
            self._state.said.add(line)
            self._say(line)

    def _measurement(self, server: ServerHandle, runs: WorkloadRuns) -> Measurement:
        workload = runs.workload
        result = RepeatedResult([compute_run(run, workload.slo_ms) for run in runs.runs])
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
        measurement = Measurement(self._item.nodeid, server.role, server.model, workload, result, server_key, flags,
                                  prompt_tokens=runs.prompt_tokens, records=[run.records for run in runs.runs])
        if not result.has("prefix_cache_hit_rate"):
            self._say_once(f"the {server.role} server ({server.url}) exports no prefix cache counters: its "
                           "repetitions cannot be proven to have missed the cache")
        if problem := cold_cache_problem(measurement, runs):
            pytest.fail(problem, pytrace=False)
        return measurement

    def _stored(self, judged: Judged) -> tuple[baselines.Baseline | None, str]:
        try:
            return stored_baseline(self.settings, judged)
        except BaselineError as exc:
            pytest.fail(str(exc), pytrace=False)

    def _judge(self, measurement: Measurement, budgets: Mapping[str, str] | None, gate: bool) -> Measurement:
        wanted = self._budget_set(budgets)
        measurement.baseline, measurement.baseline_note = self._stored(measurement)
        measurement.checks = judge(measurement, wanted, measurement.baseline, self.settings)
        self._state.measurements.append(measurement)
        if self.settings.record:
            self._record(measurement)
        if not gate:
            return measurement
        if not measurement.passed:
            pytest.fail(failure_text(measurement), pytrace=False)
        self._require_baseline(measurement, wanted)
        return measurement

    def _require_baseline(self, judged: Judged, budgets: Mapping[str, Budget]) -> None:
        """A measurement with relative budgets but no baseline never passes silently: on a host
        class with no baselines for the model (``auto``) it is reported as not judged; otherwise
        it fails (or skips, by --vllm-missing-baseline)."""
        settings = self.settings
        relative = any(b.kind == "relative" for b in budgets.values())
        if judged.baseline is not None or settings.record or not relative:
            return
        model = judged.candidate.model if isinstance(judged, PairComparison) else judged.model
        key = judged.baseline_key(settings.host_class)
        classes = baselines.classes_with_baselines(settings.baseline_dir, settings.gpu, model)
        recorded = ", ".join(classes) or "none"
        if settings.missing == "auto" and settings.host_class not in classes:
            judged.judged = False
            self._state.unjudged_classes[model] = classes
            self._say_once(
                f"this host is class {settings.host_class}; baselines of {model} exist for: {recorded} (in "
                f"{settings.baseline_dir}). Relative budgets are not judged on this class; absolute budgets and "
                f"counter checks are. Record its own baselines with --update-baselines (then --add-baselines on more "
                "runs of the class), or `pytest-vllm baselines add` the results.json of its runs")
            return
        message = judged.baseline_note or (
            f"no baseline for {key.entry_name} of host class {settings.host_class} in "
            f"{key.path(settings.baseline_dir)} (classes with baselines of {model}: {recorded}); record one with "
            "--update-baselines")
        if settings.missing == "skip":
            pytest.skip(message)
        pytest.fail(message + (" (or pass --vllm-missing-baseline skip)" if settings.missing == "fail" else ""),
                    pytrace=False)

    def _record(self, judged: Judged) -> None:
        settings = self.settings
        key = judged.baseline_key(settings.host_class)
        try:
            path = baselines.write(settings.baseline_dir, key, judged.entry(settings.environment),
                                   pool=settings.add_recording)
        except BaselineError as exc:
            pytest.fail(f"not recorded: {exc}", pytrace=False)
        verb = "added to" if settings.add_recording else "written to"
        judged.baseline_note = f"baseline {verb} {path}"
        self._state.written.append(path)
        self._say(f"baseline {verb}: {path} [{key.entry_name}]")

    def _pair_failure_text(self, comparison: PairComparison) -> str:
        parts = [failure_text(m) for m in (comparison.reference, comparison.candidate) if not m.passed]
        if not comparison.passed:
            rows = [f"  {c.metric:<24} ratio {c.current:8.3f}  limit {c.limit:8.3f}  {c.budget.describe():<26} "
                    f"{'ok' if c.passed else 'FAIL'}{resolution_text(c)}{f' ({c.note})' if c.note else ''}"
                    for c in comparison.checks]
            title = (f"{comparison.candidate.role} / {comparison.reference.role} on {comparison.workload.name} "
                     "(median of per-pair ratios):")
            if comparison.baseline is not None:
                rows.append(f"  baseline: {comparison.baseline.path} (recorded {comparison.baseline.recorded})")
            if comparison.baseline_note:
                rows.append(f"  note: {comparison.baseline_note}")
            parts.append(title + "\n" + "\n".join(rows))
        return "\n\n".join(parts)


def resolution_text(check: Check) -> str:
    """``" resolves 14%"``: the smallest regression the check catches 9 times in 10."""
    return "" if check.resolution is None else f" resolves {abs(check.resolution):.0%}"


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
                     f"{check.budget.describe()} [{unit}] {verdict}{resolution_text(check)}{note}")
    if measurement.baseline is not None:
        lines.append(f"  baseline: {measurement.baseline.path} (recorded {measurement.baseline.recorded}, "
                     f"{measurement.baseline.recordings} recording(s))")
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


def settings_for(config: Any, profile: GPUProfile, host_class: str, environment: dict[str, Any]) -> BenchSettings:
    """BenchSettings from a RunConfig (``config``), the GPU profile and the host's class.

    Default budgets: the field's (DEFAULT_BUDGETS), then ``[tool.pytest_vllm.budgets]``; markers
    override per test. The noise model widens each to what the measured noise allows.
    """
    defaults = dict(DEFAULT_BUDGETS)
    defaults.update({k: str(v) for k, v in config.budgets.items()})
    default_budgets = parse_budgets(defaults, where="[tool.pytest_vllm.budgets]: ")
    return BenchSettings(profile=profile, host_class=host_class, baseline_dir=config.baseline_dir,
                         record=config.update_baselines or config.add_baselines, missing=config.missing_baseline,
                         policy=GatePolicy(config.false_alarm_rate, config.max_tolerance),
                         default_budgets=default_budgets, environment=environment, repeats=config.repeats,
                         add_recording=config.add_baselines, prompt_seed=config.prompt_seed)


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
