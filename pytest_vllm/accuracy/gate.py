"""The ``vllm_accuracy`` fixture's object: evaluate, compare, gate, record; and the session's state.

``recovery`` gates compressed / base per metric, ``history`` gates a server's scores against its
stored baseline (and records it with ``--update-baselines``), ``agreement`` gates logprob
agreement. Each fails its test once, with one table of every metric against its budget; each
keeps its checks for the session's report (``report.section``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from pytest_vllm import baselines
from pytest_vllm.accuracy import agreement as agreement_mod
from pytest_vllm.accuracy import history as history_mod
from pytest_vllm.accuracy.budgets import (
    AccuracyBudget,
    AccuracySettings,
    BudgetBook,
    budget_marker,
    judge_interval,
    judge_value,
    known_set_names,
    parse_budgets,
)
from pytest_vllm.accuracy.engine import Reference, Scored
from pytest_vllm.accuracy.evalsets import resolve
from pytest_vllm.accuracy.report import agreement_table, history_table, recovery_table, render
from pytest_vllm.accuracy.results import AccuracyState, AgreementCheck, AgreementRow, HistoryCheck, RecoveryCheck
from pytest_vllm.accuracy.stats import PairedCounts, recovery_interval
from pytest_vllm.accuracy.tasks import run
from pytest_vllm.errors import BaselineError, UsageError, VLLMPluginError
from pytest_vllm.gating import Outcome, Verdict, closest_wins
from pytest_vllm.server.handle import ServerHandle

# Below this many right answers on the base model, a recovery ratio is mostly noise: warned about.
FEW_RIGHT = 10


class AccuracyWarning(UserWarning):
    """An absolute score below its floor, or a score that cannot be judged: reported, never fatal."""


def _describe(exc: VLLMPluginError) -> str:
    return f"usage error: {exc}" if isinstance(exc, UsageError) else str(exc)


def _pair(pair: Any) -> tuple[ServerHandle, ServerHandle]:
    if hasattr(pair, "base") and hasattr(pair, "compressed"):
        return pair.base, pair.compressed
    base, compressed = pair
    return base, compressed


class AccuracyGate:
    """``vllm_accuracy``: ``recovery(server_pair, "facts", "lmeval:pytest_vllm_choice")``,
    ``history(base_server, "facts")``, ``agreement(server_pair)``."""

    def __init__(self, state: AccuracyState, item: pytest.Item) -> None:
        self._state = state
        self._item = item
        self._set_names = known_set_names(state.settings.eval_dirs, state.settings.lmeval_tasks)
        self._markers: dict[str, AccuracyBudget] = closest_wins(item, budget_marker(lambda: self._set_names))

    @property
    def settings(self) -> AccuracySettings:
        return self._state.settings

    def budgets(self, extra: Mapping[str, object] | None = None) -> BudgetBook:
        layers = [self._markers]
        if extra:
            layers.append(parse_budgets(extra, self._set_names, where=f"{self._item.nodeid}: "))
        return self.settings.budgets.layered(*layers)

    def scores(self, servers: Sequence[ServerHandle], refs: Sequence[Reference]) -> list[list[Scored]]:
        try:
            return self._state.engine.score(servers, refs)
        except VLLMPluginError as exc:
            problem = _describe(exc)
        pytest.fail(problem, pytrace=False)  # outside the except: no chained traceback in the report

    # -- recovery --------------------------------------------------------------------------------
    def recovery(self, pair: Any, *refs: Reference, budgets: Mapping[str, object] | None = None) -> list[RecoveryCheck]:
        """Score ``refs`` on both servers at once and gate compressed / base per metric."""
        base, compressed = _pair(pair)
        book = self.budgets(budgets)
        base_scores, compressed_scores = self.scores([base, compressed], refs)
        checks = []
        for b, c in zip(base_scores, compressed_scores):
            for metric in b.metrics:
                counts = PairedCounts.from_items(b.metrics[metric], c.metrics[metric])
                interval = recovery_interval(counts, self.settings.confidence)
                budget = book.for_set("recovery", b.name)
                check = RecoveryCheck(self._item.nodeid, b, c, metric, interval, budget,
                                      judge_interval(interval, budget, self.settings.gate))
                check.warnings += self._floors(book, b, metric) + self._floors(book, c, metric)
                if interval.value is None:
                    check.warnings.append(f"{check.label}: the base model scored 0 of {counts.n}; no recovery")
                elif counts.base_correct < FEW_RIGHT:
                    check.warnings.append(f"{check.label}: the base model got only {counts.base_correct} of "
                                          f"{counts.n} right; its recovery says little")
                checks.append(check)
        self._state.recoveries += checks
        for check in checks:
            if check.verdict.outcome is Outcome.INCONCLUSIVE:
                check.warnings.append(f"{check.label}: inconclusive, {check.verdict.note} (recovery "
                                      f"{check.recovery.value:.3f}; resolves {check.resolution:.1%})")
            if note := check.resolution_note():
                check.warnings.append(note)
            for message in check.warnings:
                warnings.warn(AccuracyWarning(message), stacklevel=2)
        if not all(c.verdict.passed for c in checks):
            failed = [c.label for c in checks if not c.verdict.passed]
            pytest.fail(f"accuracy recovery out of budget ({', '.join(failed)}):\n"
                        + render(recovery_table(checks, self.settings)), pytrace=False)
        return checks

    def _floors(self, book: BudgetBook, scored: Scored, metric: str) -> list[str]:
        floor = book.for_set("min_score", scored.name)
        if floor.off or floor.holds(scored.score(metric)):
            return []
        return [f"{scored.label} {metric}: the {scored.role} model scored {scored.score(metric):.3f}, below the "
                f"floor {floor.describe()} (a warning, not a failure)"]

    # -- history ---------------------------------------------------------------------------------
    def history(self, server: ServerHandle, *refs: Reference,
                budgets: Mapping[str, object] | None = None) -> list[HistoryCheck]:
        """Gate ``server``'s scores against the baselines stored for this GPU profile, model and test;
        with ``--update-baselines``, record them instead."""
        book = self.budgets(budgets)
        (scores,) = self.scores([server], refs)
        state = self._state
        checks = []
        for scored in scores:
            key = history_mod.baseline_key(state.gpu, self._item.nodeid, scored)
            if state.update:
                server_record = {"key": server.spec.portable_key if server.spec else f"remote:{server.model}",
                                 "flags": server.spec.recorded_flags if server.spec else {}}
                entry = history_mod.make_entry(scored, server_record, state.environment, self._item.nodeid)
                try:
                    path = baselines.write(state.baseline_dir, key, entry)
                except BaselineError as exc:
                    pytest.fail(f"not recorded: {exc}", pytrace=False)
                state.written.append(path)
                for metric in scored.metrics:
                    checks.append(HistoryCheck(self._item.nodeid, scored, metric, scored.score(metric), None,
                                               book.for_set("history", scored.name), Verdict(Outcome.RECORDED),
                                               f"baseline written to {path}", path))
                continue
            checks += self._compare_history(server, scored, key, book)
        state.histories += checks
        for check in checks:
            if check.verdict.outcome is Outcome.INCONCLUSIVE:
                warnings.warn(AccuracyWarning(f"{check.label} ({check.scored.role}) against its baseline: "
                                              f"inconclusive, {check.verdict.note}"), stacklevel=2)
        failed = [c for c in checks if not c.verdict.passed]
        if failed:
            pytest.fail(f"the {server.role} model's accuracy is out of budget against its baseline "
                        f"({', '.join(c.label for c in failed)}):\n" + render(history_table(checks, self.settings)),
                        pytrace=False)
        return checks

    def _compare_history(self, server: ServerHandle, scored: Scored, key: baselines.BaselineKey,
                         book: BudgetBook) -> list[HistoryCheck]:
        state = self._state
        path = key.path(state.baseline_dir)
        try:
            stored = baselines.load(state.baseline_dir, key)
        except BaselineError as exc:
            pytest.fail(str(exc), pytrace=False)
        server_key = server.spec.portable_key if server.spec else f"remote:{server.model}"
        note = ""
        if stored is not None and (stored.workload_key != scored.key or stored.server_key != server_key):
            note = (f"the baseline in {path} was recorded for another eval-set version, scoring version, sampling "
                    "or server spec; re-record it with --update-baselines")
            stored = None
        checks = []
        for metric in scored.metrics:
            budget = book.for_set("history", scored.name)
            if stored is None:
                message = note or (f"no baseline for {key.entry_name} in {path}; record one with --update-baselines")
                verdict = self._no_baseline(message)
                checks.append(HistoryCheck(self._item.nodeid, scored, metric, None, None, budget, verdict, message,
                                           path))
                continue
            counts = history_mod.stored_counts(stored, metric, scored)
            if counts is None:
                message = f"the baseline in {path} has no per-item results for {metric}; re-record it"
                checks.append(HistoryCheck(self._item.nodeid, scored, metric, stored.median(metric), None, budget,
                                           self._no_baseline(message),
                                           message, path))
                continue
            ratio = recovery_interval(counts, self.settings.confidence)
            checks.append(HistoryCheck(self._item.nodeid, scored, metric, stored.median(metric), ratio, budget,
                                       judge_interval(ratio, budget, self.settings.gate),
                                       f"baseline {path} (recorded {stored.recorded})", path))
        return checks

    def _no_baseline(self, message: str) -> Verdict:
        """A score without a baseline: a note, or a failure where the settings require one."""
        return Verdict(Outcome.FAIL if self.settings.require_baseline else Outcome.NO_BASELINE, message)

    # -- logprob agreement -------------------------------------------------------------------------
    def agreement(self, pair: Any, corpus: Reference = "agreement_corpus",
                  prompts: Reference | None = "greedy_prompts",
                  budgets: Mapping[str, object] | None = None, share: float = 1.0) -> AgreementCheck:
        """Top-1 agreement, KL divergence, perplexity ratio on ``corpus``; the greedy top-k check
        on ``prompts`` (None: none); each against its budget, with its interval and resolution.
        ``share`` below 1 scores every round(1/share)-th corpus text (a slow host's sizing)."""
        base, compressed = _pair(pair)
        book = self.budgets(budgets)
        try:
            corpus_set = resolve(corpus, self.settings.eval_dirs)
            if not 0 < share <= 1:
                raise UsageError(f"agreement share={share!r}: give a share of the corpus in (0, 1]")
            corpus_set = corpus_set.every(round(1 / share))
            prompt_set = None if prompts is None else resolve(prompts, self.settings.eval_dirs)
            if corpus_set.kind != "corpus" or (prompt_set is not None and prompt_set.kind != "prompts"):
                got = f" and {prompt_set.name} ({prompt_set.kind})" if prompt_set else ""
                raise UsageError(f"agreement needs a corpus set and a prompts set (or prompts=None), got "
                                 f"{corpus_set.name} ({corpus_set.kind}){got}")
            result = run(agreement_mod.measure(base, compressed, corpus_set, prompt_set, self.settings.concurrency,
                                               self.settings.seed))
        except VLLMPluginError as exc:
            result, problem = None, _describe(exc)
        if result is None:
            pytest.fail(problem, pytrace=False)
        values = result.values()
        intervals = result.intervals(self.settings.confidence)
        rows = []
        for metric in agreement_mod.METRICS:
            if metric == "greedy_topk" and prompt_set is None:
                continue
            budget, interval = book.get(metric), intervals.get(metric)
            rows.append(AgreementRow(metric, values[metric], interval, budget,
                                     judge_value(values[metric], budget, interval), result.sample_size(metric)))
        check = AgreementCheck(self._item.nodeid, result, rows, (base.model, compressed.model),
                               self.settings.confidence)
        self._state.agreements.append(check)
        for row in rows:
            if row.verdict.outcome is Outcome.INCONCLUSIVE:
                warnings.warn(AccuracyWarning(f"{row.metric}: inconclusive, {row.verdict.note}"), stacklevel=2)
        if not check.passed:
            failed = [row.metric for row in rows if not row.verdict.passed]
            pytest.fail(f"logprob agreement out of budget ({', '.join(failed)}):\n" + render(agreement_table(check)),
                        pytrace=False)
        return check
