"""Multi-turn metrics: one repetition's turns, per turn index and overall.

A turn's cached share is Σ cached / Σ prompt tokens over the conversations' turns of that index:
from ``usage.prompt_tokens_details.cached_tokens`` where every answered turn reported it, else
from the prefix cache counters read around each turn (one conversation at a time), else absent
(several conversations at once and no usage: the counters only give the repetition's share,
``cached_share``). They are metrics like any other (``turn2_ttft_p50``, ``turn3_cached_share``):
the same medians, baselines and budgets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from pytest_vllm.load.client import RequestRecord
from pytest_vllm.load.runner import RunResult
from pytest_vllm.load.sessions import ConversationRun
from pytest_vllm.perf.metrics import BenchResult, compute
from pytest_vllm.perf.results import Measurement
from pytest_vllm.report.tables import Table, fmt


def compute_run(run: RunResult, slo_ms: Mapping[str, float] | None = None) -> BenchResult:
    """``metrics.compute``, and for a multi-turn repetition its per-turn metrics too."""
    result = compute(run, slo_ms)
    if isinstance(run, ConversationRun):
        result.values.update(turn_values(run))
    return result


def _share(cached: Sequence[float], prompt: Sequence[float]) -> float:
    total = sum(prompt)
    return sum(cached) / total if total > 0 else 0.0


def turn_values(run: ConversationRun) -> dict[str, float]:
    """``cached_share`` and, per turn k (1-based), ``turnk_ttft_p50``, ``turnk_prompt_tokens`` and,
    where it can be told per turn, ``turnk_cached_share``."""
    answered: list[tuple[int, int, RequestRecord]] = [(turn, i, r) for i, (turn, r)
                                                      in enumerate(zip(run.turns, run.records)) if r.ok]
    values: dict[str, float] = {}
    usage = bool(answered) and all(r.cached_tokens is not None for _, _, r in answered)
    if usage:
        values["cached_share"] = _share([r.cached_tokens or 0 for _, _, r in answered],
                                        [r.prompt_tokens for _, _, r in answered])
    elif run.prefix_cache is not None:
        values["cached_share"] = run.prefix_cache.hit_rate
    for turn in sorted({turn for turn, _, _ in answered}):
        of_turn = [(i, r) for t, i, r in answered if t == turn]
        name = f"turn{turn + 1}"
        ttfts = [r.ttft for _, r in of_turn if r.ttft is not None]
        if ttfts:
            values[f"{name}_ttft_p50"] = float(np.percentile(np.asarray(ttfts) * 1000.0, 50))
        values[f"{name}_prompt_tokens"] = float(np.mean([r.prompt_tokens for _, r in of_turn]))
        if usage:
            values[f"{name}_cached_share"] = _share([r.cached_tokens or 0 for _, r in of_turn],
                                                    [r.prompt_tokens for _, r in of_turn])
        elif run.turn_cache and all(run.turn_cache[i] is not None for i, _ in of_turn):
            counts = [run.turn_cache[i] for i, _ in of_turn]
            values[f"{name}_cached_share"] = _share([c.hits for c in counts if c], [c.queries for c in counts if c])
    return values


def turn_count(measurement: Measurement) -> int:
    """The turns every repetition of ``measurement`` measured (0: not a multi-turn measurement)."""
    count = 0
    while measurement.result.has(f"turn{count + 1}_prompt_tokens"):
        count += 1
    return count


def turns_table(measurements: Sequence[Measurement]) -> Table | None:
    """Per turn of each multi-turn measurement: prompt length, TTFT p50, cached share (medians of the
    repetitions); None when no measurement is multi-turn."""
    table = Table("vllm performance: multi-turn sessions (per turn, median of repetitions: each turn resends "
                  "the history)", ["measurement", "server", "turn", "prompt tokens", "TTFT p50 (ms)", "cached share"])
    for m in measurements:
        for turn in range(1, turn_count(m) + 1):
            name = f"turn{turn}"
            share = (f"{m.value(f'{name}_cached_share'):.1%}" if m.result.has(f"{name}_cached_share")
                     else "per run only")
            ttft = fmt(m.value(f"{name}_ttft_p50")) if m.result.has(f"{name}_ttft_p50") else "-"
            table.add(f"{m.nodeid.split('::', 1)[-1]} · {m.workload.name}", m.role, turn,
                      fmt(m.value(f"{name}_prompt_tokens"), 0), ttft, share)
        if turn_count(m) and m.result.has("cached_share"):
            table.notes.append(f"{m.workload.name} [{m.role}]: {m.value('cached_share'):.1%} of all prompt tokens "
                               "served from the prefix cache")
    if not table.rows:
        return None
    table.notes.append("cached share: usage.prompt_tokens_details.cached_tokens where the server reports it (vLLM: "
                       "--enable-prompt-tokens-details), else its prefix cache counters read around each turn (one "
                       "conversation at a time); 'per run only': neither could be told per turn")
    return table
