"""Budgets: what a measured metric must satisfy, and the verdicts with readable messages.

Three kinds, all written as short strings on markers or in ``[tool.pytest_vllm.budgets]``:

* relative to the baseline: ``ttft_p50="<= baseline * 1.10"``, ``output_throughput=">= baseline * 0.9"``;
* absolute SLOs: ``tpot_p99="<= 50 ms"``, ``output_throughput=">= 100 tok/s"``;
* pair (``vllm_pair_budget``): compressed / base measured in the same run, ``output_throughput=">= 1.2"``.

The operator may be left out: it follows the metric's direction (``<=`` for latency, ``>=`` for
throughput). Relative budgets are noise-aware: the tolerance is widened to ``noise_k`` times
the relative spread of the baseline's repetitions, but never beyond ``max_tolerance``, so a
noisy baseline cannot switch the gate off.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from pytest_vllm.errors import UsageError, parse_each
from pytest_vllm.metrics import METRICS
from pytest_vllm.resolution import (
    DEFAULT_FALSE_ALARM_RATE,
    DETECTION_POWER,
    Noise,
    as_fraction,
    run_noise,
    tolerance,
    z,
)

Kind = Literal["relative", "absolute", "pair"]
UNITS_TO_BASE = {"ms": ("ms", 1.0), "s": ("ms", 1000.0), "us": ("us", 1.0), "tok/s": ("tok/s", 1.0),
                 "req/s": ("req/s", 1.0)}
_RELATIVE = re.compile(r"^\s*(?P<op><=|>=)?\s*baseline\s*(?:\*\s*(?P<factor>[0-9.]+(?:e-?[0-9]+)?))?\s*$")
_ABSOLUTE = re.compile(r"^\s*(?P<op><=|>=)?\s*(?P<value>[0-9.]+(?:e-?[0-9]+)?)\s*(?P<unit>ms|s|us|tok/s|req/s|x)?\s*$")

MARKER = "vllm_budget"
PAIR_MARKER = "vllm_pair_budget"
MARKER_HELP = (f"{MARKER}(**budgets): budgets for the measurements of this test, metric=\"<= baseline * 1.10\" "
               "(relative to the stored baseline) or metric=\"<= 50 ms\" (absolute SLO); the operator may "
               "be left out (it follows the metric's direction). Metric names: see `pytest-vllm metrics`.")
PAIR_MARKER_HELP = (f"{PAIR_MARKER}(**ratios): budgets on compressed / base measured in the same run, "
                    "e.g. output_throughput=\">= 1.2\" (compressed at least 1.2x the base).")


@dataclass(frozen=True)
class Budget:
    metric: str
    kind: Kind
    op: str  # "<=" or ">="
    value: float  # factor (relative), limit in the metric's unit (absolute), ratio (pair)
    source: str  # the text it came from, for messages
    pair: bool = False  # a vllm_pair_budget: on the ratio compressed / base (relative: to the recorded ratio)

    @property
    def lower_is_better(self) -> bool:
        return self.op == "<="

    def describe(self) -> str:
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
    default_op = "<=" if info.direction == "lower" else ">="
    raw = str(text)
    pair = kind_hint == "pair"
    if (match := _RELATIVE.match(raw)) is not None:
        factor = _number(match.group("factor") or "1", metric, raw, where)
        if factor <= 0:
            raise UsageError(f"{where}budget {metric}={raw!r}: the factor must be positive")
        return Budget(metric, "relative", match.group("op") or default_op, factor, raw, pair=pair)
    if pair:
        match = _ABSOLUTE.match(raw)
        if not match or match.group("unit") not in (None, "x"):
            raise UsageError(f"{where}pair budget {metric}={raw!r}: write a ratio such as \">= 1.2\" or one "
                             "against the ratio recorded for this host class, \">= baseline * 0.9\"")
        return Budget(metric, "pair", match.group("op") or default_op, _number(match.group("value"), metric, raw,
                                                                                  where), raw, pair=True)
    if (match := _ABSOLUTE.match(raw)) is not None:
        value = _number(match.group("value"), metric, raw, where)
        unit = match.group("unit")
        if unit and unit != "x":
            base_unit, scale = UNITS_TO_BASE[unit]
            if base_unit != info.unit:
                raise UsageError(f"{where}budget {metric}={raw!r}: {metric} is measured in {info.unit}, not {unit}")
            value *= scale
        return Budget(metric, "absolute", match.group("op") or default_op, value, raw)
    raise UsageError(f"{where}budget {metric}={raw!r}: write \"<= baseline * 1.10\", \"<= 50 ms\" or \">= 100 tok/s\"")


def _number(text: str, metric: str, raw: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"{where}budget {metric}={raw!r}: {text!r} is not a number") from None


def parse_budgets(spec: Mapping[str, object], kind_hint: Kind | None = None, where: str = "") -> dict[str, Budget]:
    return parse_each(spec, lambda metric, text: parse_budget(metric, text, kind_hint, where))


@dataclass(frozen=True)
class GatePolicy:
    """How measured noise sets a relative budget's tolerance (``pytest_vllm/resolution.py``)."""

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
    passed: bool
    note: str = ""
    resolution: float | None = None  # the smallest regression this check catches 9 times in 10 (fraction)
    noise: Noise | None = None

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
            resolution = as_fraction((z(1 - policy.false_alarm_rate) + z(DETECTION_POWER)) * noise.sigma, lower)
        note = f"ratio {current:.3f}" if budget.kind == "pair" else ""
        return Check(budget.metric, budget, current, None, limit, None, passed, note, resolution, noise)
    assert reference is not None
    asked = math.log(budget.value) if lower else -math.log(budget.value)
    note = ""
    if asked < 0:  # a budget that demands an improvement is applied as written
        applied, resolution = asked, None
    else:
        cap = math.log1p(policy.max_tolerance) if lower else -math.log1p(-min(policy.max_tolerance, 0.99))
        tol = tolerance(asked, noise or run_noise([]), lower, policy.false_alarm_rate, cap)
        applied, resolution = tol.applied, tol.resolution
        if tol.capped:
            note = (f"noise floor {as_fraction(tol.floor, lower):.0%} capped at --vllm-max-tolerance "
                    f"{policy.max_tolerance:.0%}: false alarms above {policy.false_alarm_rate:.0%}")
        elif tol.widened:
            note = (f"widened from {as_fraction(asked, lower):.0%} to {as_fraction(applied, lower):.0%}: the noise "
                    f"floor at {policy.false_alarm_rate:.0%} false alarms")
        if noise is not None and note:
            note += f" ({noise.describe()})"
    limit = reference * math.exp(applied if lower else -applied)
    passed = current <= limit if lower else current >= limit
    return Check(budget.metric, budget, current, reference, limit, as_fraction(applied, lower), passed, note,
                 resolution, noise)


DEFAULT_BUDGETS = {
    # The median of repetitions, gated on the steady metrics; p99 alone is too noisy to gate on.
    # Every GPU profile and the cpu profile override them with measured ones (gpu.py).
    "output_throughput": ">= baseline * 0.90",
    "ttft_p50": "<= baseline * 1.15",
    "tpot_p50": "<= baseline * 1.10",
}
