"""Performance budgets: what a measured metric must satisfy, on the shared budget core (``gating``).

Three kinds, all written as short strings on markers or in ``[tool.pytest_vllm.budgets]``:

* relative to the baseline: ``ttft_p50="<= baseline * 1.10"``, ``output_throughput=">= baseline * 0.9"``;
* absolute SLOs: ``tpot_p99="<= 50 ms"``, ``output_throughput=">= 100 tok/s"``;
* pair (``vllm_pair_budget``): the ratio candidate / reference measured in the same run, either
  against a number (``output_throughput=">= 1.2"``) or against the ratio recorded for this host
  class (``">= baseline * 0.9"``);
* ``"off"``: no budget on the metric (a test switches a default budget off this way).

The operator may be left out: it follows the metric's direction (``<=`` for latency, ``>=`` for
throughput). A relative budget's tolerance is at least the noise floor that the measured noise
sets at the configured false-alarm rate (``resolution.py``), and at most ``max_tolerance``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from pytest_vllm.errors import UsageError, parse_each
from pytest_vllm.gating import BudgetMarker, Op, Verdict, is_off, parse_number, split_operator
from pytest_vllm.perf.metrics import METRICS
from pytest_vllm.perf.resolution import (
    ATTEMPT_POWER,
    DEFAULT_FALSE_ALARM_RATE,
    Noise,
    as_fraction,
    run_noise,
    tolerance,
    z,
)

Kind = Literal["relative", "absolute", "pair", "off"]
UNITS_TO_BASE = {"ms": ("ms", 1.0), "s": ("ms", 1000.0), "us": ("us", 1.0), "tok/s": ("tok/s", 1.0),
                 "req/s": ("req/s", 1.0)}
_RELATIVE = re.compile(r"^baseline\s*(?:\*\s*(?P<factor>\S+))?$")
_ABSOLUTE = re.compile(r"^(?P<value>[^\s]+?)\s*(?P<unit>ms|s|us|tok/s|req/s|x)?$")


@dataclass(frozen=True)
class Budget:
    metric: str
    kind: Kind
    op: Op
    value: float  # factor (relative), limit in the metric's unit (absolute), ratio (pair)
    source: str  # the text it came from, for messages
    pair: bool = False  # a vllm_pair_budget: on the ratio candidate / reference (relative: to the recorded ratio)

    @property
    def lower_is_better(self) -> bool:
        return self.op == "<="

    def describe(self) -> str:
        if self.kind == "off":
            return "off"
        if self.kind == "relative":
            return f"{'ratio ' if self.pair else ''}{self.op} baseline × {self.value:g}"
        if self.kind == "pair":
            return f"ratio {self.op} {self.value:g}"
        return f"{self.op} {self.value:g} {METRICS[self.metric].unit}"


def parse_budget(metric: str, text: object, kind_hint: Kind | None = None, where: str = "") -> Budget:
    """Parse one budget; raise UsageError naming the metric list or the syntax."""
    if metric not in METRICS:
        raise UsageError(f"{where}unknown metric {metric!r} in a budget; valid metrics: {', '.join(sorted(METRICS))}")
    info = METRICS[metric]
    if info.direction == "none":
        raise UsageError(f"{where}{metric} is informational (no better direction) and cannot carry a budget")
    raw = str(text)
    what = f"{where}budget {metric}={raw!r}"
    op, rest = split_operator(raw)
    op = op or ("<=" if info.direction == "lower" else ">=")
    pair = kind_hint == "pair"
    if is_off(text):
        return Budget(metric, "off", op, 0.0, raw, pair=pair)
    if not isinstance(text, str):
        raise UsageError(_not_a_string(metric, text, op, info.unit, pair, where))
    if (match := _RELATIVE.match(rest)) is not None:
        factor = parse_number(match.group("factor") or "1", what)
        if factor <= 0:
            raise UsageError(f"{what}: the factor must be positive")
        return Budget(metric, "relative", op, factor, raw, pair=pair)
    match = _ABSOLUTE.match(rest)
    if pair:
        if not match or match.group("unit") not in (None, "x"):
            raise UsageError(f"{where}pair budget {metric}={raw!r}: write a ratio such as \">= 1.2\" or one "
                             "against the ratio recorded for this host class, \">= baseline * 0.9\"")
        return Budget(metric, "pair", op, parse_number(match.group("value"), what), raw, pair=True)
    if match is None:
        raise UsageError(f"{what}: write \"<= baseline * 1.10\", \"<= 50 ms\" or \">= 100 tok/s\"")
    value, unit = parse_number(match.group("value"), what), match.group("unit")
    if unit and unit != "x":
        base_unit, scale = UNITS_TO_BASE[unit]
        if base_unit != info.unit:
            raise UsageError(f"{what}: {metric} is measured in {info.unit}, not {unit}")
        value *= scale
    return Budget(metric, "absolute", op, value, raw)


def _not_a_string(metric: str, value: object, op: Op, unit: str, pair: bool, where: str) -> str:
    """What a bare number (or another non-string) most likely meant, spelled as the budget string.

    A bare number is refused rather than guessed: ``ttft_p50 = 1.1`` once became an absolute
    1.1 ms budget when a factor of the baseline was meant."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return (f"{where}budget {metric}={value!r}: a budget is a string such as \"{op} baseline * 1.1\", "
                f"\"{op} 50 {unit}\" or \"off\"")
    number = f"{value:g}"
    if pair:
        meant = (f"\"{op} {number}\" (the ratio candidate / reference) or \"{op} baseline * {number}\" (against the "
                 "ratio recorded for this host class)")
    else:
        meant = (f"\"{op} baseline * {number}\" (relative to the stored baseline) or \"{op} {number} {unit}\" (an "
                 f"absolute limit in {unit})")
    return f"{where}budget {metric}={value!r} is a bare number; write it as a string: {meant}"


def parse_budgets(spec: Mapping[str, object], kind_hint: Kind | None = None, where: str = "") -> dict[str, Budget]:
    return parse_each(spec, lambda metric, text: parse_budget(metric, text, kind_hint, where))



MARKER = BudgetMarker(
    "vllm_budget",
    "vllm_budget(**budgets): budgets for the measurements of this test, metric=\"<= baseline * 1.10\" "
    "(relative to the stored baseline) or metric=\"<= 50 ms\" (absolute SLO); the operator may be left out "
    "(it follows the metric's direction). Metric names: see `pytest-vllm metrics`.",
    lambda kwargs, where: parse_budgets(kwargs, where=where))
PAIR_MARKER = BudgetMarker(
    "vllm_pair_budget",
    "vllm_pair_budget(**ratios): budgets on the ratio compressed / base (candidate / reference) measured in "
    "the same run, e.g. output_throughput=\">= 1.2\", or against the ratio recorded for this host class, "
    "output_throughput=\">= baseline * 0.9\".",
    lambda kwargs, where: parse_budgets(kwargs, kind_hint="pair", where=where))


@dataclass(frozen=True)
class GatePolicy:
    """How measured noise sets a relative budget's tolerance (``resolution.py``)."""

    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE  # per check, on a healthy server
    max_tolerance: float = 0.25  # a noise floor beyond this (a fraction of the baseline) is capped, and said


@dataclass(frozen=True)
class Check:
    """One budget applied to one measurement."""

    metric: str
    budget: Budget
    current: float  # the median of this run's repetitions (pair budgets: of its per-pair ratios)
    reference: float | None  # baseline median (relative), None (absolute and pair ratios)
    limit: float  # the threshold actually applied
    tolerance: float | None  # the relative tolerance applied (relative budgets), a fraction of the baseline
    verdict: Verdict
    resolution: float | None = None  # the smallest regression this check catches 9 times in 10 (fraction)
    noise: Noise | None = None
    tolerance_source: Literal["budget", "noise floor", "capped"] = "budget"  # what set the tolerance

    @property
    def passed(self) -> bool:
        return self.verdict.passed

    @property
    def note(self) -> str:
        return self.verdict.note

    @property
    def delta(self) -> float | None:
        if not self.reference:
            return None
        return self.current / self.reference - 1.0


def evaluate(budget: Budget, current: float, reference: float | None = None, noise: Noise | None = None,
             policy: GatePolicy = GatePolicy()) -> Check:
    """Apply ``budget`` to ``current`` (the median of this run's repetitions; for a pair budget the
    median of the per-pair ratios, and ``reference`` the recorded ratio of a relative one).

    ``noise``: for a relative budget the noise of current / baseline (``resolution.baseline_noise``),
    which sets its tolerance; for the others the run's own (``resolution.run_noise``), which only
    says how close to the limit a verdict can be trusted.
    """
    lower = budget.lower_is_better
    if budget.kind != "relative":
        limit = budget.value
        passed = current <= limit if lower else current >= limit
        resolution = None
        if noise is not None:
            resolution = as_fraction((z(1 - policy.false_alarm_rate) + z(ATTEMPT_POWER)) * noise.sigma, lower)
        note = f"ratio {current:.3f}" if budget.kind == "pair" else ""
        return Check(budget.metric, budget, current, None, limit, None, Verdict.of(passed, note), resolution, noise)
    assert reference is not None
    asked = math.log(budget.value) if lower else -math.log(budget.value)
    note = ""
    source: Literal["budget", "noise floor", "capped"] = "budget"
    if asked < 0:  # a budget that demands an improvement is applied as written
        applied, resolution = asked, None
    else:
        cap = math.log1p(policy.max_tolerance) if lower else -math.log1p(-min(policy.max_tolerance, 0.99))
        tol = tolerance(asked, noise or run_noise([]), lower, policy.false_alarm_rate, cap)
        applied, resolution = tol.applied, tol.resolution
        if tol.capped:
            source = "capped"
            note = (f"noise floor {as_fraction(tol.floor, lower):.0%} capped at --vllm-max-tolerance "
                    f"{policy.max_tolerance:.0%}: false alarms above {policy.false_alarm_rate:.0%}")
        elif tol.widened:
            source = "noise floor"
            note = (f"widened from {as_fraction(asked, lower):.0%} to {as_fraction(applied, lower):.0%}: the noise "
                    f"floor at {policy.false_alarm_rate:.0%} false alarms")
        if noise is not None and note:
            note += f" ({noise.describe()})"
    limit = reference * math.exp(applied if lower else -applied)
    passed = current <= limit if lower else current >= limit
    return Check(budget.metric, budget, current, reference, limit, as_fraction(applied, lower),
                 Verdict.of(passed, note), resolution, noise, source)


DEFAULT_BUDGETS = {
    # The median of repetitions, gated on the steady metrics; p99 alone is too noisy to gate on. The
    # noise model widens each to the floor the measured noise sets (resolution.py), and says so.
    # What supports these factors (2-core Intel Emerald Rapids host, cpu-intel-emeraldrapids-
    # avx512vnni-2c; one host, so "leave-one-out" is over fresh boots of it, not over machines):
    # * benchmarks/test_noise_gate.py, 6 fresh boots per kind, each judged against a pool of 3
    #   other A/A boots (single attempts, 16 x 48-token c4 workload): A/A 0/6 false alarms; a real
    #   slowdown of -22.5% throughput (max_num_seqs=3 at concurrency 4) failed 6/6 on throughput,
    #   -38.3% (max_num_seqs=2) 6/6 on throughput and TTFT (+246%); a TPOT change of +9.2% in the
    #   first was not caught (TPOT resolved about 24% there).
    # * The suites' fresh-clone run (9fff893, against three recordings, confirmation included):
    #   throughput resolves 20-25%, TTFT p50 25-37%, TPOT p50 22-30%. On this host the noise floor
    #   (12-20%) binds, not the factor; the factor binds where the noise is below it (GPU profiles
    #   have factors of their own, GPU_DEFAULT_BUDGETS below).
    # * Leave-one-out over six sessions of the class (five recordings and a fresh-clone run that
    #   went 11% slow on every measurement), each judged against the other five with gpu.py's
    #   between-session prior: 0 of 144 checks fail; resolutions throughput 29-37%, TTFT 26-38%,
    #   TPOT 45-52%. With the five-session prior of before, 4 failed, all in the slow session. So
    #   on this shared 2-core host the factors are requests: the prior sets the floor.
    "output_throughput": ">= baseline * 0.90",
    "ttft_p50": "<= baseline * 1.15",
    "tpot_p50": "<= baseline * 1.10",
}


# GPU profiles serving a GPU-bound pair (an 8B-shaped Llama of random weights and its online FP8;
# figures in README, "Running on GPUs"). Two separately started H200 machines, the suite's own
# workloads: single stream and c1 throughput and TPOT p50 within 2.6% of each other (bf16 and FP8),
# so 7% holds with room (one-recording resolution 11%); TTFT p50 of ~15 ms moved up to 38%
# between them, and c16-c256 throughput 4-15% (32-token answers keep those partly host-bound):
# there the noise model widens the tolerance to what the pooled recordings and the repetitions
# measure (7-25%), and says so. A budget finer than the noise floor is widened the same way.
# Not yet shown: leave-one-out needs a third machine (machine 2 judged against machine 1 alone:
# 30 of 30 single-server checks passed; the reverse, worked from the medians, would fail c16/c64
# throughput at -8.9%), and no sized slowdown has been run on a GPU, so the smallest true
# regression these factors catch there is unmeasured (the README's GPU section says so).
GPU_DEFAULT_BUDGETS = {
    "output_throughput": ">= baseline * 0.93",
    "ttft_p50": "<= baseline * 1.15",
    "tpot_p50": "<= baseline * 1.07",
}


CONFIG_WHERE = "[tool.pytest_vllm.budgets]: "


def default_budgets(table: Mapping[str, object], gpu: bool = False) -> dict[str, Budget]:
    """The run's default budgets: DEFAULT_BUDGETS (GPU_DEFAULT_BUDGETS on GPU profiles), then
    ``[tool.pytest_vllm.budgets]`` (``table``) over them; parsed at configure, so a mistake there
    is a usage error before collection."""
    return parse_budgets({**(GPU_DEFAULT_BUDGETS if gpu else DEFAULT_BUDGETS), **table}, where=CONFIG_WHERE)
