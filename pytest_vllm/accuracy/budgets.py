"""Accuracy budgets and settings: what a run demands, from markers and ``[tool.pytest_vllm.accuracy]``.

Budget keys (a marker's keywords, or keys of ``[tool.pytest_vllm.accuracy.budgets]``):

* ``recovery`` (default ``>= 0.95``): compressed score / base score of every task metric;
  ``recovery_<set>`` for one eval set or lm-eval task;
* ``history`` (default ``>= 0.95``): the base model's score / its stored baseline score;
  ``history_<set>`` for one set;
* ``top1_agreement`` (``>= 0.80``), ``kl_mean`` (``<= 0.20``), ``kl_p99`` (``<= 2.0``),
  ``ppl_ratio`` (``<= 1.10``), ``greedy_topk`` (``>= 0.90``): logprob agreement;
* ``min_score`` / ``min_score_<set>`` (off by default): an absolute floor on either model's score,
  reported as a warning, never a failure.

A value is a number (``0.97``), a string with the key's operator (``">= 0.97"``, ``"<= 0.1"``), or
``"off"``. Recovery and history are judged on their confidence interval (``stats``), by ``gate``:

* ``point`` (default): the point estimate must meet the budget, as the field reports recovery; a
  pass whose interval still holds the budget is INCONCLUSIVE, a warning that says how many more
  items would settle it, never a PASS label;
* ``upper``: fail only when even the upper bound is below the budget (the default until 2026-12:
  it passed a damaged checkpoint's 11% drop on ``choice acc`` as "inconclusive", see README);
* ``lower``: pass only when the lower bound reaches the budget (demands large eval sets).

Every verdict carries the metric's resolution, the smallest drop its sample tells from none
(``stats.detectable_drop``; a bootstrap interval for the agreement metrics).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pytest_vllm.accuracy.bootstrap import Interval
from pytest_vllm.accuracy.stats import DEFAULT_CONFIDENCE, Recovery
from pytest_vllm.errors import UsageError, parse_each
from pytest_vllm.gating import BudgetMarker, Op, Outcome, Verdict, is_off, split_operator

MARKER_NAME = "vllm_accuracy_budget"
MARKER_HELP = (f"{MARKER_NAME}(**budgets): accuracy budgets of this test, e.g. recovery=0.97, "
               "recovery_facts=\"off\", kl_mean=\"<= 0.1\", top1_agreement=0.9 (keys: recovery[_<set>], "
               "history[_<set>], top1_agreement, kl_mean, kl_p99, ppl_ratio, greedy_topk, min_score[_<set>]; see "
               "pytest_vllm/accuracy/budgets.py)")

Gate = Literal["point", "upper", "lower"]
GATES: tuple[str, ...] = ("point", "upper", "lower")


@dataclass(frozen=True)
class KeySpec:
    op: Op
    default: float | None
    help: str
    per_set: bool = False  # also accepts <key>_<set>
    warn_only: bool = False
    # The largest value that means something (a share is at most 1); above it a number is most
    # likely a percentage (recovery = 95), which no run could pass. None: no such bound.
    most: float | None = None


KEYS: dict[str, KeySpec] = {
    "recovery": KeySpec(">=", 0.95, "compressed / base score of each task metric", per_set=True, most=1.5),
    "history": KeySpec(">=", 0.95, "base score / its stored baseline score", per_set=True, most=1.5),
    "top1_agreement": KeySpec(">=", 0.80, "share of corpus positions where both models rank the same token first",
                              most=1.0),
    "kl_mean": KeySpec("<=", 0.20, "mean KL(base || compressed) per corpus token, nats (top-k approximation)"),
    "kl_p99": KeySpec("<=", 2.0, "99th percentile of the per-token KL, nats"),
    "ppl_ratio": KeySpec("<=", 1.10, "compressed / base perplexity of the corpus"),
    "greedy_topk": KeySpec(">=", 0.90, "share of greedy prompts whose first differing token is in the other's top-k",
                           most=1.0),
    "min_score": KeySpec(">=", None, "absolute floor on either model's score (a warning, not a failure)",
                         per_set=True, warn_only=True),
}
_VALUE = re.compile(r"^[0-9]*\.?[0-9]+(?:[eE]-?[0-9]+)?$")


@dataclass(frozen=True)
class AccuracyBudget:
    key: str
    op: Op
    value: float | None  # None: switched off
    source: str

    @property
    def off(self) -> bool:
        return self.value is None

    def describe(self) -> str:
        return "off" if self.value is None else f"{self.op} {self.value:g}"

    def holds(self, value: float) -> bool:
        if self.value is None:
            return True
        return value >= self.value if self.op == ">=" else value <= self.value


def _split_key(key: str, set_names: set[str]) -> tuple[str, str | None] | None:
    if key in KEYS:
        return key, None
    for base, spec in KEYS.items():
        if spec.per_set and key.startswith(base + "_") and key[len(base) + 1:] in set_names:
            return base, key[len(base) + 1:]
    return None


def parse_budget(key: str, raw: object, set_names: Iterable[str], where: str = "") -> AccuracyBudget:
    names = set(set_names)
    split = _split_key(key, names)
    if split is None:
        per_set = ", ".join(f"{k}_<set>" for k, s in KEYS.items() if s.per_set)
        raise UsageError(f"{where}unknown accuracy budget key {key!r}; valid keys: {', '.join(KEYS)}, {per_set} "
                         f"with <set> one of: {', '.join(sorted(names)) or '(no eval sets found)'}")
    spec = KEYS[split[0]]
    if is_off(raw):
        return AccuracyBudget(key, spec.op, None, str(raw))
    if isinstance(raw, bool):
        raise UsageError(f"{where}accuracy budget {key}={raw!r}: give a number such as {spec.op} 0.9, or \"off\"")
    given_op, number = split_operator(raw)
    if not _VALUE.match(number):
        raise UsageError(f"{where}accuracy budget {key}={raw!r}: write a number ({spec.op} is implied), "
                         f"\"{spec.op} 0.9\", or \"off\"")
    op = given_op or spec.op
    if op != spec.op:
        kind = "a lower limit" if spec.op == ">=" else "an upper limit"
        raise UsageError(f"{where}accuracy budget {key}={raw!r}: {split[0]} is {kind}; write \"{spec.op} "
                         f"{number}\"")
    value = float(number)
    if spec.most is not None and value > spec.most:
        raise UsageError(f"{where}accuracy budget {key}={raw!r}: {split[0]} is a ratio, at most {spec.most:g} to mean "
                         f"anything; for {value:g}% write {value / 100:g}")
    return AccuracyBudget(key, spec.op, value, str(raw))


def parse_budgets(spec: Mapping[str, object], set_names: Iterable[str], where: str = "") -> dict[str, AccuracyBudget]:
    names = set(set_names)
    return parse_each(spec, lambda key, raw: parse_budget(key, raw, names, where))


def budget_marker(set_names: Callable[[], Iterable[str]]) -> BudgetMarker:
    """The ``vllm_accuracy_budget`` marker for the budget core; per-set keys checked against
    ``set_names()`` (the eval sets and lm-eval tasks the run's settings know)."""
    return BudgetMarker(MARKER_NAME, MARKER_HELP, lambda kwargs, where: parse_budgets(kwargs, set_names(), where))


def defaults() -> dict[str, AccuracyBudget]:
    return {key: AccuracyBudget(key, spec.op, spec.default, "default") for key, spec in KEYS.items()}


@dataclass(frozen=True)
class BudgetBook:
    """The budgets in force for one test: defaults < config < markers (closest marker wins)."""

    budgets: Mapping[str, AccuracyBudget]

    def layered(self, *layers: Mapping[str, AccuracyBudget]) -> BudgetBook:
        merged = dict(self.budgets)
        for layer in layers:
            merged.update(layer)
        return BudgetBook(merged)

    def for_set(self, key: str, set_name: str) -> AccuracyBudget:
        """``<key>_<set>`` when given, else ``<key>``."""
        return self.budgets.get(f"{key}_{set_name}") or self.budgets[key]

    def get(self, key: str) -> AccuracyBudget:
        return self.budgets[key]


def judge_interval(recovery: Recovery, budget: AccuracyBudget, gate: Gate) -> Verdict:
    """A recovery (or history ratio) against its budget, by the gate rule of the module docstring."""
    if budget.off:
        return Verdict(Outcome.NO_BUDGET, "no budget")
    assert budget.value is not None
    if recovery.value is None or recovery.lower is None or recovery.upper is None:
        return Verdict(Outcome.NOT_JUDGED, "the reference scored 0: no ratio")
    sure_pass = recovery.lower >= budget.value
    sure_fail = recovery.upper < budget.value
    if gate == "upper":
        passed = not sure_fail
    elif gate == "lower":
        passed = sure_pass
    else:
        passed = recovery.value >= budget.value
    if not (sure_pass or sure_fail):
        return Verdict.of(passed, f"the {recovery.confidence:.0%} interval [{recovery.lower:.3f}, "
                          f"{recovery.upper:.3f}] contains the budget {budget.value:g}", inconclusive=True)
    return Verdict.of(passed)


def judge_value(value: float, budget: AccuracyBudget, interval: Interval | None = None) -> Verdict:
    """A value against its budget on the point estimate; inconclusive where its interval holds the budget."""
    if budget.off:
        return Verdict(Outcome.NO_BUDGET, "no budget")
    assert budget.value is not None
    if interval is not None and interval.contains(budget.value):
        return Verdict.of(budget.holds(value), f"the interval [{interval.lower:.4g}, {interval.upper:.4g}] contains "
                          f"the budget {budget.value:g}", inconclusive=True)
    return Verdict.of(budget.holds(value))


# -- settings ------------------------------------------------------------------------------------
SETTING_KEYS = {
    "confidence": "confidence level of the recovery intervals (default 0.95)",
    "gate": "how intervals decide: point (default), upper or lower",
    "budgets": "a table of budget key = value",
    "eval_dirs": "extra folders of eval sets (*.jsonl) and lm-eval task YAMLs",
    "concurrency": "requests in flight per server (default 16)",
    "seed": "the seed sent with every request (default 1234)",
    "require_baseline": "fail when the base model has no stored baseline (default false: a note)",
    "lmeval_tokenizer": "tokenizer (path or id) for lm-eval when a server's model path is not local",
    "lmeval_tasks": "lm-eval's own tasks or groups the tests use (gsm8k, mmlu), so that budgets may name them",
}


@dataclass(frozen=True)
class AccuracySettings:
    confidence: float = DEFAULT_CONFIDENCE
    gate: Gate = "point"
    budgets: BudgetBook = field(default_factory=lambda: BudgetBook(defaults()))
    eval_dirs: tuple[Path, ...] = ()
    concurrency: int = 16
    seed: int = 1234
    require_baseline: bool = False
    lmeval_tokenizer: str | None = None
    lmeval_tasks: tuple[str, ...] = ()


def settings_from(table: Mapping[str, Any], rootdir: Path, set_names: Sequence[str] | None = None) -> AccuracySettings:
    """Settings from ``[tool.pytest_vllm.accuracy]``; every mistake is a UsageError naming the fix."""
    where = "[tool.pytest_vllm.accuracy]: "
    unknown = sorted(set(table) - set(SETTING_KEYS))
    if unknown:
        raise UsageError(f"{where}unknown key(s) {', '.join(unknown)}; valid keys: "
                         + "; ".join(f"{k} ({h})" for k, h in SETTING_KEYS.items()))
    eval_dirs = table.get("eval_dirs", [])
    if isinstance(eval_dirs, str):
        eval_dirs = [eval_dirs]
    dirs = tuple(p if p.is_absolute() else rootdir / p for p in (Path(str(d)) for d in eval_dirs))
    confidence = _number(table.get("confidence", DEFAULT_CONFIDENCE), "confidence", where)
    if not 0.5 <= confidence < 1.0:
        raise UsageError(f"{where}confidence must be at least 0.5 and below 1, not {confidence}")
    gate = str(table.get("gate", "point"))
    if gate not in GATES:
        raise UsageError(f"{where}gate must be one of {', '.join(GATES)}, not {gate!r}")
    concurrency = int(_number(table.get("concurrency", 16), "concurrency", where))
    if concurrency < 1:
        raise UsageError(f"{where}concurrency must be positive")
    raw_budgets = table.get("budgets", {})
    if not isinstance(raw_budgets, Mapping):
        raise UsageError(f"{where}budgets must be a table of key = value")
    lmeval_tasks = table.get("lmeval_tasks", [])
    if isinstance(lmeval_tasks, str) or not all(isinstance(t, str) for t in lmeval_tasks):
        raise UsageError(f"{where}lmeval_tasks must be a list of task names, e.g. [\"gsm8k\", \"mmlu\"]")
    if set_names is None:
        set_names = known_set_names(dirs, lmeval_tasks)
    book = BudgetBook(defaults()).layered(parse_budgets(raw_budgets, set_names, where=f"{where}budgets: "))
    tokenizer = table.get("lmeval_tokenizer")
    return AccuracySettings(confidence=confidence, gate=gate, budgets=book, eval_dirs=dirs,  # type: ignore[arg-type]
                            concurrency=concurrency, seed=int(_number(table.get("seed", 1234), "seed", where)),
                            require_baseline=bool(table.get("require_baseline", False)),
                            lmeval_tokenizer=str(tokenizer) if tokenizer else None,
                            lmeval_tasks=tuple(lmeval_tasks))


def _number(raw: Any, key: str, where: str) -> float:
    try:
        return float(raw)
    except (TypeError, ValueError):
        raise UsageError(f"{where}{key} must be a number, not {raw!r}") from None


def known_set_names(dirs: Sequence[Path] = (), lmeval_tasks: Sequence[str] = ()) -> list[str]:
    """Names a per-set budget may use: eval sets and lm-eval task YAMLs found in the package and
    ``dirs``, and the lm-eval tasks the settings declare."""
    from pytest_vllm.accuracy.evalsets import discover
    from pytest_vllm.accuracy.lmeval import discover_tasks

    return sorted(set(discover(dirs)) | set(discover_tasks(dirs)) | set(lmeval_tasks))
