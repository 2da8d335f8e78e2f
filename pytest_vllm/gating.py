"""The budget core every gate shares: thresholds, verdicts, marker merging, the collection check.

A gate (performance, accuracy) states its budgets as short strings or numbers on markers and in
``[tool.pytest_vllm.*]``: ``">= 0.95"``, ``"<= baseline * 1.10"``, ``0.97``. This module holds
what they have in common: the operator (implied by the metric's direction where left out), the
number, one verdict type with one vocabulary (``Outcome``), closest-marker-wins merging, and one
collection check, driven by the markers each gate registers, that reports every malformed budget
of the run at once before anything boots. How a gate turns a measurement into a verdict (perf's
noise model, accuracy's confidence intervals) stays with the gate.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pytest

from pytest_vllm.errors import UsageError

Op = Literal["<=", ">="]
_OPERATOR = re.compile(r"^\s*(?P<op><=|>=)?\s*(?P<rest>.*?)\s*$", re.DOTALL)
_NUMBER = re.compile(r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$")


class Outcome(enum.StrEnum):
    """What a budget check came to; the same words in every gate and report."""

    PASS = "PASS"
    FAIL = "FAIL"
    # passes on the point estimate, but its interval holds the budget: a warning, never a PASS label
    INCONCLUSIVE = "INCONCLUSIVE (warning)"
    NOT_JUDGED = "NOT JUDGED"  # nothing to judge against (another host class, a ratio over 0)
    NO_BASELINE = "NO BASELINE"
    RECORDED = "RECORDED"  # recording baselines: measured, not judged
    OFF = "BUDGETS OFF"  # measured, every budget switched off (the test's verdict is elsewhere)
    REPORTED = "OVER (report only)"  # out of budget, on a gate set to report (--vllm-baseline-gate)
    NO_BUDGET = "-"


@dataclass(frozen=True)
class Verdict:
    """A check's outcome, with what a reader should know about it."""

    outcome: Outcome
    note: str = ""
    inconclusive: bool = False  # the evidence does not settle it (an interval containing the budget)

    @classmethod
    def of(cls, passed: bool, note: str = "", inconclusive: bool = False) -> Verdict:
        if not passed:
            return cls(Outcome.FAIL, note, inconclusive)
        return cls(Outcome.INCONCLUSIVE if inconclusive else Outcome.PASS, note, inconclusive)

    @property
    def passed(self) -> bool:
        return self.outcome is not Outcome.FAIL

    @property
    def label(self) -> str:
        return self.outcome.value

    def __str__(self) -> str:
        return self.label


# A budget written as one of these is switched off (a closer marker's "off" removes a default).
OFF_WORDS = ("off", "none", "disabled")


def is_off(raw: object) -> bool:
    return raw is None or (isinstance(raw, str) and raw.strip().lower() in OFF_WORDS)


def split_operator(text: object) -> tuple[Op | None, str]:
    """``">= 0.9"`` → (">=", "0.9"); ``"0.9"`` → (None, "0.9")."""
    match = _OPERATOR.match(str(text))
    assert match is not None  # the pattern matches every string
    op = match.group("op")
    return (op if op in ("<=", ">=") else None), match.group("rest")  # type: ignore[return-value]


def parse_number(text: str, what: str) -> float:
    """A finite number, or a UsageError naming ``what`` (a budget's key and text)."""
    if not _NUMBER.match(text.strip()):
        raise UsageError(f"{what}: {text!r} is not a number; write a decimal such as 1.1 or 0.9")
    return float(text)


@dataclass(frozen=True)
class Threshold:
    """``op value``: the limit a measured value must stay on the right side of."""

    op: Op
    value: float

    @property
    def lower_is_better(self) -> bool:
        return self.op == "<="

    def holds(self, measured: float, limit: float | None = None) -> bool:
        bound = self.value if limit is None else limit
        return measured <= bound if self.op == "<=" else measured >= bound

    def describe(self) -> str:
        return f"{self.op} {self.value:g}"


def parse_threshold(text: object, default_op: Op, what: str) -> Threshold:
    """``">= 0.95"`` or ``0.95`` (the operator implied by ``default_op``)."""
    op, rest = split_operator(text)
    return Threshold(op or default_op, parse_number(rest, what))


# -- markers ---------------------------------------------------------------------------------------
# (marker kwargs, "nodeid: ") -> the budgets they stand for; UsageError naming the problem.
MarkerParser = Callable[[Mapping[str, object], str], Mapping[str, Any]]


@dataclass(frozen=True)
class BudgetMarker:
    """A gate's budget marker: its name, its help line and how its keywords parse."""

    name: str
    help: str
    parse: MarkerParser


REGISTRY_KEY = pytest.StashKey[dict[str, BudgetMarker]]()


def register(config: pytest.Config, marker: BudgetMarker) -> None:
    """Declare ``marker`` (its help in ``pytest --markers``, its check at collection)."""
    config.addinivalue_line("markers", marker.help)
    config.stash.setdefault(REGISTRY_KEY, {})[marker.name] = marker


def closest_wins(item: pytest.Item, marker: BudgetMarker) -> dict[str, Any]:
    """The budgets of ``marker`` on ``item``: module, class and function markers merged, the
    closest one winning per key."""
    merged: dict[str, Any] = {}
    for found in reversed(list(item.iter_markers(name=marker.name))):
        if found.args:
            raise UsageError(f"{item.nodeid}: {marker.name} takes keyword arguments only (key=budget, ...)")
        merged.update(marker.parse(found.kwargs, f"{item.nodeid}: "))
    return merged


def check_collection(config: pytest.Config, items: Iterable[pytest.Item]) -> None:
    """Every registered budget marker of every item parsed at once: all problems in one
    UsageError, before any server boots."""
    markers = config.stash.get(REGISTRY_KEY, {}).values()
    problems = []
    for item in items:
        for marker in markers:
            if item.get_closest_marker(marker.name) is None:
                continue
            try:
                closest_wins(item, marker)
            except UsageError as exc:
                problems.append(str(exc))
    if problems:
        raise UsageError("\n".join(problems))
