"""The performance judge, as pure functions of a measurement, its budgets and the stored baseline:
which baseline it meets and what is said about it, which checks apply, when a measurement is
invalid, what a missing baseline means, and the text a failing test shows. ``gate.py`` is the
pytest layer that fails, skips or records by what these return."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from pytest_vllm import baselines
from pytest_vllm.gating import Outcome, Verdict
from pytest_vllm.load.host import NOTABLE_STEAL_PCT
from pytest_vllm.load.runner import WorkloadRuns
from pytest_vllm.load.sessions import MultiTurnWorkload
from pytest_vllm.perf.budgets import Budget, Check, evaluate
from pytest_vllm.perf.metrics import METRICS
from pytest_vllm.perf.resolution import baseline_noise, run_noise
from pytest_vllm.perf.results import BenchSettings, Judged, Measurement, PairComparison

# A workload without a shared prefix whose prompts the prefix cache served beyond this share (plus
# a chat template's frame) measured a warm cache, not the server: the measurement is invalid.
MAX_COLD_HIT_RATE = 0.05
# The prior of a ratio's between-boot noise: both servers of the pair boot anew, so their boot
# effects add up (sqrt 2) where they are independent; a host-wide effect cancels in the ratio.
PAIR_PRIOR_FACTOR = math.sqrt(2)


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
        changes = flag_changes(stored.data["server"].get("flags", {}), judged.compared_flags) or "model or environment"
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
            check = evaluate(budget, current, reference, noise, settings.policy)
            if not check.passed and not is_pair and not settings.baseline_gate_fails:
                check = replace(check, verdict=Verdict(Outcome.REPORTED, check.note))
            checks.append(check)
        else:
            checks.append(evaluate(budget, current, noise=run_noise(runs), policy=settings.policy))
    return checks


def cold_cache_problem(measurement: Measurement, runs: WorkloadRuns) -> str | None:
    """Why a measurement is invalid because its prompts were served from the prefix cache, if so."""
    workload = measurement.workload
    if isinstance(workload, MultiTurnWorkload):
        return first_turn_cold_problem(measurement, runs)
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


def first_turn_cold_problem(measurement: Measurement, runs: WorkloadRuns) -> str | None:
    """Why a multi-turn measurement is invalid because its first turns were served from the prefix
    cache, if so: the later turns hit it by design, the first must not beyond the chat template's
    frame (the same in every conversation). Not judged for datasets (their rows may share a system
    prompt) nor where the first turn's share is unknown (several conversations at once, no usage)."""
    workload = measurement.workload
    if workload.dataset or not measurement.result.has("turn1_cached_share"):
        return None
    allowed = MAX_COLD_HIT_RATE + runs.template_tokens / max(1.0, measurement.value("turn1_prompt_tokens"))
    worst = max(measurement.runs_of("turn1_cached_share"))
    if worst <= allowed:
        return None
    return (f"{workload.name} on the {measurement.role} server is invalid: the server's prefix cache served "
            f"{worst:.0%} of a repetition's first-turn prompt tokens (at most {allowed:.0%}: the chat template's "
            "frame), so its conversations had been sent to this server before: by another measurement with the "
            f"workload name {workload.name!r} and seed {workload.seed} (give each its own name or seed), or by an "
            "earlier run against this long-running server (pass another --vllm-prompt-seed)")


@dataclass(frozen=True)
class MissingBaseline:
    """What a measurement without a baseline comes to (``action`` "none": it has one, or needs none)."""

    action: Literal["none", "not judged", "skip", "fail"]
    message: str = ""
    recorded_classes: tuple[str, ...] = ()
    new_test: bool = False  # not judged because the class has baselines, only none of this test


def missing_baseline(settings: BenchSettings, judged: Judged, budgets: Mapping[str, Budget]) -> MissingBaseline:
    """A measurement with relative budgets but no baseline never passes silently: on a host class
    with no baselines for the model, or none of this test (``auto``), it is reported as not judged;
    an entry missing from the test's baseline file fails (or skips, by --vllm-missing-baseline)."""
    relative = any(b.kind == "relative" for b in budgets.values())
    if judged.baseline is not None or settings.record or not relative:
        return MissingBaseline("none")
    model = judged.model_of_record
    classes = tuple(baselines.classes_with_baselines(settings.baseline_dir, settings.gpu, model))
    recorded = ", ".join(classes) or "none"
    if settings.missing == "auto" and settings.host_class not in classes:
        return MissingBaseline("not judged", (
            f"this host is class {settings.host_class}; baselines of {model} exist for: {recorded} (in "
            f"{settings.baseline_dir}). Relative budgets are not judged on this class; absolute budgets and "
            f"counter checks are. Record its own baselines with --update-baselines (then --add-baselines on more "
            "runs of the class), or `pytest-vllm baselines add` the results.json of its runs"), classes)
    key = judged.baseline_key(settings.host_class)
    if settings.missing == "auto" and not key.path(settings.baseline_dir).exists():
        # A test newer than the class's recordings has no file of its own there: say so and judge its
        # absolute budgets only. An entry missing from a file that exists is a gap, and fails below.
        return MissingBaseline("not judged", (
            f"{key.entry_name}: no baselines of this test for host class {settings.host_class} "
            f"({key.path(settings.baseline_dir)} does not exist: the test is newer than the class's recordings). "
            "Its relative budgets are not judged; record them with --update-baselines on this class"), classes,
            new_test=True)
    message = judged.baseline_note or (
        f"no baseline for {key.entry_name} of host class {settings.host_class} in "
        f"{key.path(settings.baseline_dir)} (classes with baselines of {model}: {recorded}); record one with "
        "--update-baselines")
    if settings.missing == "skip":
        return MissingBaseline("skip", message, classes)
    return MissingBaseline("fail", message + (" (or pass --vllm-missing-baseline skip)"
                                              if settings.missing == "fail" else ""), classes)


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
        note = f" ({check.note})" if check.note else ""
        lines.append(f"  {check.metric:<24} {check.current:10.2f} {ref} {delta} {check.limit:10.2f}  "
                     f"{check.budget.describe()} [{unit}] {check.verdict}{resolution_text(check)}{note}")
    if measurement.baseline is not None:
        lines.append(f"  baseline: {measurement.baseline.path} (recorded {measurement.baseline.recorded}, "
                     f"{measurement.baseline.recordings} recording(s))")
    if measurement.baseline_note:
        lines.append(f"  note: {measurement.baseline_note}")
    if server := measurement.server_summary():
        lines.append(f"  server (its /metrics, sampled): {server}")
    if steal := host_note(measurement):
        lines.append(f"  host: {steal}")
    return "\n".join(lines)


def pair_failure_text(comparison: PairComparison) -> str:
    parts = [failure_text(m) for m in (comparison.reference, comparison.candidate) if not m.passed]
    if not comparison.passed:
        rows = [f"  {c.metric:<24} ratio {c.current:8.3f}  limit {c.limit:8.3f}  {c.budget.describe():<26} "
                f"{c.verdict}{resolution_text(c)}{f' ({c.note})' if c.note else ''}" for c in comparison.checks]
        title = (f"{comparison.candidate.role} / {comparison.reference.role} on {comparison.workload.name} "
                 "(median of per-pair ratios):")
        if comparison.baseline is not None:
            rows.append(f"  baseline: {comparison.baseline.path} (recorded {comparison.baseline.recorded})")
        if comparison.baseline_note:
            rows.append(f"  note: {comparison.baseline_note}")
        parts.append(title + "\n" + "\n".join(rows))
    return "\n\n".join(parts)


def host_note(measurement: Measurement) -> str:
    """Says when the host was loaded by other tenants during the measurement ("" when it was not)."""
    steal = measurement.value("host_cpu_steal")
    if steal < NOTABLE_STEAL_PCT:
        return ""
    stored = measurement.baseline.median("host_cpu_steal") if measurement.baseline is not None else None
    then = f" (baseline: {stored:.1f}%)" if stored is not None else ""
    return (f"the hypervisor gave {steal:.1f}% of this machine's CPU time to other tenants during the measurement"
            f"{then}; a server bound by host work slows with it: see whether the result repeats on a quiet host")


def flag_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    """``max_num_seqs: 8 → 1, enforce_eager: unset → True`` for notes."""
    changes = []
    for name in sorted(set(before) | set(after)):
        if name == "served_model_name" or before.get(name) == after.get(name):
            continue
        changes.append(f"{name}: {before.get(name, 'unset')} → {after.get(name, 'unset')}")
    return ", ".join(changes)
