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

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from pytest_vllm.errors import UsageError, parse_each
from pytest_vllm.metrics import METRICS

Kind = Literal["relative", "absolute", "pair"]
UNITS_TO_BASE = {"ms": ("ms", 1.0), "s": ("ms", 1000.0), "us": ("us", 1.0), "tok/s": ("tok/s", 1.0),
                 "req/s": ("req/s", 1.0)}
_RELATIVE = re.compile(r"^\s*(?P<op><=|>=)?\s*baseline\s*(?:\*\s*(?P<factor>[0-9.]+))?\s*$")
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

    def describe(self) -> str:
        if self.kind == "relative":
            return f"{self.op} baseline × {self.value:g}"
        if self.kind == "pair":
            return f"compressed/base {self.op} {self.value:g}"
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
    if kind_hint == "pair":
        match = _ABSOLUTE.match(raw)
        if not match or match.group("unit") not in (None, "x"):
            raise UsageError(f"{where}pair budget {metric}={raw!r}: write a ratio such as \">= 1.2\"")
        return Budget(metric, "pair", match.group("op") or default_op, float(match.group("value")), raw)
    if (match := _RELATIVE.match(raw)) is not None:
        factor = float(match.group("factor") or 1.0)
        return Budget(metric, "relative", match.group("op") or default_op, factor, raw)
    if (match := _ABSOLUTE.match(raw)) is not None:
        value = float(match.group("value"))
        unit = match.group("unit")
        if unit and unit != "x":
            base_unit, scale = UNITS_TO_BASE[unit]
            if base_unit != info.unit:
                raise UsageError(f"{where}budget {metric}={raw!r}: {metric} is measured in {info.unit}, not {unit}")
            value *= scale
        return Budget(metric, "absolute", match.group("op") or default_op, value, raw)
    raise UsageError(f"{where}budget {metric}={raw!r}: write \"<= baseline * 1.10\", \"<= 50 ms\" or \">= 100 tok/s\"")


def parse_budgets(spec: Mapping[str, object], kind_hint: Kind | None = None, where: str = "") -> dict[str, Budget]:
    return parse_each(spec, lambda metric, text: parse_budget(metric, text, kind_hint, where))


@dataclass(frozen=True)
class NoisePolicy:
    """How far noise may widen a relative budget."""

    noise_k: float = 2.0  # tolerance >= noise_k × the baseline's relative spread
    max_tolerance: float = 0.20  # ... but never more than this


@dataclass(frozen=True)
class Check:
    """One budget applied to one measurement."""

    metric: str
    budget: Budget
    current: float
    reference: float | None  # baseline median (relative), base value (pair), None (absolute)
    limit: float  # the threshold actually applied
    tolerance: float | None  # the relative tolerance applied (relative budgets)
    passed: bool
    note: str = ""

    @property
    def delta(self) -> float | None:
        if not self.reference:
            return None
        return self.current / self.reference - 1.0


def evaluate(budget: Budget, current: float, reference: float | None = None, spread: float = 0.0,
             noise: NoisePolicy = NoisePolicy()) -> Check:
    """Apply ``budget`` to ``current`` (the median of this run's repetitions)."""
    note = ""
    tolerance = None
    if budget.kind == "absolute":
        limit = budget.value
    elif budget.kind == "pair":
        assert reference is not None
        ratio = current / reference if reference else float("inf")
        ok = ratio <= budget.value if budget.op == "<=" else ratio >= budget.value
        return Check(budget.metric, budget, current, reference, budget.value, None, ok, f"ratio {ratio:.3f}")
    else:
        assert reference is not None
        asked = abs(budget.value - 1.0)
        noise_tol = noise.noise_k * spread
        tolerance = max(asked, min(noise_tol, noise.max_tolerance))
        if tolerance > asked:  # a cap below the asked tolerance widens nothing: no note then
            note = f"widened by baseline noise (spread {spread:.1%})"
            if noise_tol > noise.max_tolerance:
                note += f", capped at {noise.max_tolerance:.0%}"
        limit = reference * (1 + tolerance) if budget.op == "<=" else reference * (1 - tolerance)
    passed = current <= limit if budget.op == "<=" else current >= limit
    return Check(budget.metric, budget, current, reference, limit, tolerance, passed, note)


DEFAULT_BUDGETS = {
    # The median of repetitions, gated on the steady metrics; p99 alone is too noisy to gate on.
    # Every GPU profile and the cpu profile override them with measured ones (gpu.py).
    "output_throughput": ">= baseline * 0.90",
    "ttft_p50": "<= baseline * 1.15",
    "tpot_p50": "<= baseline * 1.10",
}
