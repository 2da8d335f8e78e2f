"""What the accuracy gates measured and decided, as data: the gate and its report both read
these, and neither imports the other to get at them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_vllm.accuracy import agreement as agreement_mod
from pytest_vllm.accuracy.budgets import AccuracyBudget, AccuracySettings
from pytest_vllm.accuracy.engine import Engine, Scored
from pytest_vllm.accuracy.stats import Recovery
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


@dataclass
class AgreementCheck:
    nodeid: str
    result: agreement_mod.AgreementResult
    rows: list[tuple[str, float, AccuracyBudget, Verdict]]
    models: tuple[str, str]

    @property
    def passed(self) -> bool:
        return all(v.passed for _, _, _, v in self.rows)


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
