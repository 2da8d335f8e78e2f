"""The accuracy section of the run's reports: recovery, base-vs-baseline and agreement tables
(terminal summary, summary.md, report.html) and their data (results.json)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pytest_vllm.accuracy.agreement import METRICS as AGREEMENT_METRICS
from pytest_vllm.accuracy.budgets import AccuracySettings
from pytest_vllm.accuracy.results import AccuracyState, AgreementCheck, HistoryCheck, RecoveryCheck
from pytest_vllm.report.tables import Table, render_text

if TYPE_CHECKING:
    from pytest_vllm.report.writer import Section

GATE_NOTES = {
    "point": "a metric passes when its point estimate reaches the budget; INCONCLUSIVE (a warning): it does, but "
             "its interval contains the budget (more items would tell)",
    "upper": "a metric fails only when even the upper bound is below its budget; INCONCLUSIVE (a warning): the "
             "interval contains the budget",
    "lower": "a metric passes only when its lower bound reaches the budget",
}
RESOLUTION_NOTE = ("Resolves: the smallest drop the sample tells from none at the interval's confidence, "
                   "z * sqrt(discordant items) / base right answers (pytest_vllm/accuracy/stats.py)")


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _f(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def render(table: Table) -> str:
    return "\n".join(render_text(table))


def interval_note(settings: AccuracySettings) -> str:
    return (f"bounds: {settings.confidence:.0%} Wilson interval on the items the two models score differently, "
            f"mapped onto the ratio (paired; see pytest_vllm/accuracy/stats.py); gate={settings.gate}: "
            f"{GATE_NOTES[settings.gate]}")


def recovery_table(checks: Sequence[RecoveryCheck], settings: AccuracySettings) -> Table:
    table = Table("accuracy: recovery (compressed / base)",
                  ["Metric", "n", "Base", "Compressed", "Recovery", "Lower bound", "Upper bound", "Resolves", "Budget",
                   "Verdict"])
    models = []
    for check in checks:
        counts = check.recovery.counts
        table.add(check.label, counts.n, _f(check.scored_base.score(check.metric)),
                  _f(check.scored_compressed.score(check.metric)), _f(check.recovery.value),
                  _f(check.recovery.lower), _f(check.recovery.upper), _share(check.resolution),
                  check.budget.describe(), check.verdict)
        pair = f"base {check.scored_base.model}, compressed {check.scored_compressed.model}"
        if pair not in models:
            models.append(pair)
    table.notes += [f"models: {m}" for m in models]
    table.notes.append(interval_note(settings))
    table.notes.append(RESOLUTION_NOTE)
    table.notes.append("absolute scores are informative: a floor (min_score) only warns")
    for check in checks:
        table.notes += [f"warning: {w}" for w in check.warnings]
    return table


def history_table(checks: Sequence[HistoryCheck], settings: AccuracySettings) -> Table:
    table = Table("accuracy: scores against their baselines",
                  ["Metric", "Role", "n", "Baseline", "Now", "Ratio", "Lower bound", "Upper bound", "Resolves",
                   "Budget", "Verdict"])
    for check in checks:
        ratio = check.ratio
        table.add(check.label, check.scored.role, check.scored.n(check.metric), _f(check.baseline_score),
                  _f(check.scored.score(check.metric)), _f(ratio.value if ratio else None),
                  _f(ratio.lower if ratio else None), _f(ratio.upper if ratio else None), _share(check.resolution),
                  check.budget.describe(), check.verdict)
    notes = list(dict.fromkeys(c.note for c in checks if c.note))
    table.notes += notes
    table.notes.append(interval_note(settings))
    table.notes.append(RESOLUTION_NOTE)
    table.notes += [f"warning: {note}" for c in checks if (note := c.resolution_note())]
    return table


def agreement_table(check: AgreementCheck) -> Table:
    result = check.result
    values = result.values()
    table = Table("accuracy: logprob agreement (base -> compressed)",
                  ["Metric", "Value", "Lower bound", "Upper bound", "Resolves (±)", "Budget", "Verdict"])
    for row in check.rows:
        interval = row.interval
        table.add(row.metric, _f(row.value, 4), _f(interval.lower if interval else None, 4),
                  _f(interval.upper if interval else None, 4), _f(row.resolution, 4), row.budget.describe(),
                  row.verdict)
    mismatches = [g.mismatch_at for g in result.greedy if g.mismatch_at is not None]
    table.notes += [
        f"models: base {check.models[0]}, compressed {check.models[1]}",
        f"corpus {result.corpus.name}: {result.positions} token positions; "
        f"perplexity base {_f(values['ppl_base'], 2)}, "
        f"compressed {_f(values['ppl_compressed'], 2)}",
        f"KL(base || compressed) per token from the top-{result.top_k} logprobs of each side, coarse-grained onto the "
        "tokens both returned plus one rest bucket: a lower bound of the full-vocabulary KL "
        "(pytest_vllm/accuracy/divergence.py)",
        f"bounds: {check.confidence:.0%} percentile bootstrap over the {len(set(result.text_of))} corpus texts "
        f"(greedy_topk: Wilson over prompts); Resolves: the interval's half-width, the drift this corpus can see "
        "(pytest_vllm/accuracy/bootstrap.py)",
    ]
    if result.prompts is not None:
        table.notes.append(
            f"greedy {result.prompts.name}: {len(result.greedy)} prompts x {result.prompts.max_tokens} tokens, "
            f"{sum(g.mismatch_at is None for g in result.greedy)} identical; first differing token at "
            f"{_f(sum(mismatches) / len(mismatches), 1) if mismatches else '-'} on average; greedy_topk: at the "
            f"first difference each model's token is in the other's top-{result.greedy_top_k}")
    table.notes += [f"warning: {note}" for row in check.rows if (note := row.resolution_note())]
    return table


def _recovery_json(check: RecoveryCheck) -> dict[str, Any]:
    counts = check.recovery.counts
    return {"test": check.nodeid, "set": check.scored_base.name, "source": check.scored_base.source,
            "metric": check.metric, "n": counts.n,
            "base": {"model": check.scored_base.model, "score": check.scored_base.score(check.metric),
                     "correct": counts.base_correct},
            "compressed": {"model": check.scored_compressed.model, "score": check.scored_compressed.score(check.metric),
                           "correct": counts.compressed_correct},
            "paired": {"both": counts.both, "base_only": counts.base_only, "compressed_only": counts.compressed_only,
                       "neither": counts.neither},
            "recovery": check.recovery.value, "lower_bound": check.recovery.lower, "upper_bound": check.recovery.upper,
            "confidence": check.recovery.confidence, "resolution": check.resolution,
            "resolution_note": check.resolution_note(), "budget": check.budget.describe(),
            "verdict": check.verdict.label, "passed": check.verdict.passed, "warnings": check.warnings,
            "eval_key": check.scored_base.key,
            "seconds": {"base": round(check.scored_base.seconds, 2),
                        "compressed": round(check.scored_compressed.seconds, 2)},
            "discordant": discordant_items(check)}


def discordant_items(check: RecoveryCheck, limit: int = 50) -> list[dict[str, Any]]:
    """The items the two models score differently, with both answers (what a model team reads first)."""
    base, compressed = check.scored_base, check.scored_compressed
    flips = []
    for i, (b, c) in enumerate(zip(base.metrics[check.metric], compressed.metrics[check.metric])):
        if b != c:
            item: dict[str, Any] = {"index": i, "right_on": "base" if b else "compressed"}
            if i < len(base.item_ids):
                item["id"] = base.item_ids[i]
            if i < len(base.answers) and i < len(compressed.answers):
                item["base_answer"], item["compressed_answer"] = base.answers[i], compressed.answers[i]
            flips.append(item)
    return flips[:limit]


def _history_json(check: HistoryCheck) -> dict[str, Any]:
    ratio = check.ratio
    return {"test": check.nodeid, "set": check.scored.name, "source": check.scored.source, "metric": check.metric,
            "role": check.scored.role, "model": check.scored.model, "n": check.scored.n(check.metric),
            "baseline": check.baseline_score, "now": check.scored.score(check.metric),
            "ratio": ratio.value if ratio else None, "lower_bound": ratio.lower if ratio else None,
            "upper_bound": ratio.upper if ratio else None, "resolution": check.resolution,
            "resolution_note": check.resolution_note(), "budget": check.budget.describe(),
            "verdict": check.verdict.label, "passed": check.verdict.passed, "note": check.note,
            "eval_key": check.scored.key}


def _agreement_json(check: AgreementCheck) -> dict[str, Any]:
    return {"test": check.nodeid, "models": {"base": check.models[0], "compressed": check.models[1]},
            **check.result.to_dict(),
            "confidence": check.confidence,
            "checks": [{"metric": row.metric, "value": row.value,
                        "lower_bound": row.interval.lower if row.interval else None,
                        "upper_bound": row.interval.upper if row.interval else None,
                        "resolution": row.resolution, "resolution_note": row.resolution_note(), "sample": row.sample,
                        "budget": row.budget.describe(), "verdict": row.verdict.label,
                        "passed": row.verdict.passed} for row in check.rows]}


def section(state: AccuracyState) -> Section | None:
    from pytest_vllm.report.writer import Section

    if not (state.recoveries or state.histories or state.agreements):
        return None
    tables = []
    if state.recoveries:
        tables.append(recovery_table(state.recoveries, state.settings))
    for check in state.agreements:
        tables.append(agreement_table(check))
    if state.histories:
        tables.append(history_table(state.histories, state.settings))
    data = {"confidence": state.settings.confidence, "gate": state.settings.gate,
            "agreement_metrics": list(AGREEMENT_METRICS),
            "recovery": [_recovery_json(c) for c in state.recoveries],
            "agreement": [_agreement_json(c) for c in state.agreements],
            "history": [_history_json(c) for c in state.histories],
            "baselines_written": [str(p) for p in state.written]}
    return Section("accuracy", tables, data)
