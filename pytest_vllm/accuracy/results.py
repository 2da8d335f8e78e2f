"""What the accuracy gates measured and decided, as data: the gate and its report both read
these, and neither imports the other to get at them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_vllm.accuracy import agreement as agreement_mod
from pytest_vllm.accuracy.bootstrap import Interval
from pytest_vllm.accuracy.budgets import AccuracyBudget, AccuracySettings
from pytest_vllm.accuracy.engine import Engine, Scored
from pytest_vllm.accuracy.stats import DEFAULT_CONFIDENCE, Recovery, detectable_drop, items_to_resolve
from pytest_vllm.gating import Verdict


@dataclass
class RecoveryCheck:
    nodeid: str
    scored_base: Scored
    scored_compressed: Scored
    metric: str
    recovery: Recovery
    budget: AccuracyBudget
    verdict: Verdict
    warnings: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.scored_base.label} {self.metric}"

    @property
    def n(self) -> int:
        return self.recovery.counts.n

    @property
    def resolution(self) -> float | None:
        return detectable_drop(self.recovery.counts, self.recovery.confidence)

    def resolution_note(self) -> str:
        return finer_than_resolution(self.label, self.budget, self.resolution, self.n, "items")


@dataclass
class HistoryCheck:
    nodeid: str
    scored: Scored
    metric: str
    baseline_score: float | None
    ratio: Recovery | None
    budget: AccuracyBudget
    verdict: Verdict
    note: str = ""
    path: Path | None = None

    @property
    def label(self) -> str:
        return f"{self.scored.label} {self.metric}"

    @property
    def resolution(self) -> float | None:
        return None if self.ratio is None else detectable_drop(self.ratio.counts, self.ratio.confidence)

    def resolution_note(self) -> str:
        n = self.ratio.counts.n if self.ratio else 0
        return finer_than_resolution(self.label, self.budget, self.resolution, n, "items")


def finer_than_resolution(label: str, budget: AccuracyBudget, resolution: float | None, n: int, unit: str) -> str:
    """A note where a ratio budget allows a smaller drop than its sample resolves ("" otherwise)."""
    if budget.value is None or resolution is None or budget.op != ">=" or budget.value >= 1.0:
        return ""
    allowed = 1.0 - budget.value
    if resolution <= allowed:
        return ""
    need = items_to_resolve(n, resolution, allowed)
    return (f"{label}: the budget {budget.describe()} allows a {allowed:.1%} drop, finer than the {resolution:.1%} "
            f"this sample resolves; about {need} {unit} ({need / max(n, 1):.1f}x) would resolve it")


@dataclass(frozen=True)
class AgreementRow:
    """One agreement metric: its value, interval, budget and verdict."""

    metric: str
    value: float
    interval: Interval | None
    budget: AccuracyBudget
    verdict: Verdict
    sample: int  # token positions (prompts for greedy_topk): what the resolution scales with

    @property
    def resolution(self) -> float | None:
        return None if self.interval is None else self.interval.half_width

    def resolution_note(self) -> str:
        """Where the budget lies inside the interval: how many more positions would settle it."""
        if self.budget.value is None or self.interval is None or not self.interval.contains(self.budget.value):
            return ""
        distance = abs(self.value - self.budget.value)
        unit = "prompts" if self.metric == "greedy_topk" else "token positions"
        if distance == 0 or self.resolution is None:
            return f"{self.metric}: the value sits on its budget {self.budget.describe()}"
        need = items_to_resolve(self.sample, self.resolution, distance)
        return (f"{self.metric}: the budget {self.budget.describe()} lies inside its interval "
                f"[{self.interval.lower:.4g}, {self.interval.upper:.4g}]; about {need} {unit} would settle it")


@dataclass
class AgreementCheck:
    nodeid: str
    result: agreement_mod.AgreementResult
    rows: list[AgreementRow]
    models: tuple[str, str]
    confidence: float = DEFAULT_CONFIDENCE

    @property
    def passed(self) -> bool:
        return all(row.verdict.passed for row in self.rows)


@dataclass
class AccuracyState:
    """Everything the accuracy gates measured in this session (the report reads it)."""

    settings: AccuracySettings
    engine: Engine
    gpu: str
    environment: dict[str, Any]
    baseline_dir: Path
    update: bool
    recoveries: list[RecoveryCheck] = field(default_factory=list)
    histories: list[HistoryCheck] = field(default_factory=list)
    agreements: list[AgreementCheck] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
