"""Bootstrap intervals for the logprob-agreement metrics, resampling whole texts.

Positions of one text are not independent (a passage the compressed model finds hard is hard at
every token), so resampling positions would make the intervals too narrow; the texts are the
units, as in a cluster bootstrap. The interval is the percentile interval of each metric over
``ROUNDS`` resamples; its half-width is the metric's resolution (the drift the corpus can see).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pytest_vllm.accuracy.stats import DEFAULT_CONFIDENCE, wilson_interval

# 1000 resamples put the 2.5% and 97.5% percentiles within about 0.1 of a standard error of where
# more rounds would; they cost 0.4 s for 50,000 positions (kl_p99 sorts a resample each round).
ROUNDS = 1000


@dataclass(frozen=True)
class Interval:
    lower: float
    upper: float

    @property
    def half_width(self) -> float:
        return (self.upper - self.lower) / 2.0

    def contains(self, value: float) -> bool:
        return self.lower <= value <= self.upper


def _percentiles(samples: np.ndarray, confidence: float) -> Interval:
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return Interval(float(low), float(high))


def agreement_intervals(text_of: Sequence[int], agree: Sequence[bool], kl: Sequence[float],
                        base_logprobs: Sequence[float], compressed_logprobs: Sequence[float],
                        confidence: float = DEFAULT_CONFIDENCE, rounds: int = ROUNDS,
                        seed: int = 0) -> dict[str, Interval]:
    """Intervals of top1_agreement, kl_mean, kl_p99 and ppl_ratio from a bootstrap over texts;
    empty where there are fewer than two texts (nothing to resample)."""
    texts = np.asarray(text_of)
    units = np.unique(texts)
    if len(units) < 2:
        return {}
    index = np.searchsorted(units, texts)
    count = np.bincount(index, minlength=len(units)).astype(float)
    sums = {name: np.bincount(index, weights=np.asarray(values, dtype=float), minlength=len(units))
            for name, values in (("agree", agree), ("kl", kl), ("base", base_logprobs),
                                 ("compressed", compressed_logprobs))}
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(units), size=(rounds, len(units)))
    weights = np.stack([np.bincount(row, minlength=len(units)) for row in draws]).astype(float)
    n = weights @ count
    out = {
        "top1_agreement": _percentiles(weights @ sums["agree"] / n, confidence),
        "kl_mean": _percentiles(weights @ sums["kl"] / n, confidence),
        "ppl_ratio": _percentiles(np.exp((weights @ sums["base"] - weights @ sums["compressed"]) / n), confidence),
    }
    kl_by_text = [np.sort(np.asarray(kl, dtype=float)[index == u]) for u in range(len(units))]
    p99 = np.empty(rounds)
    for r, row in enumerate(draws):
        resample = np.concatenate([kl_by_text[u] for u in row])
        rank = max(1, math.ceil(0.99 * len(resample)))  # nearest rank, as divergence.nearest_rank
        p99[r] = np.partition(resample, rank - 1)[rank - 1]
    out["kl_p99"] = _percentiles(p99, confidence)
    return out


def share_interval(successes: int, n: int, confidence: float = DEFAULT_CONFIDENCE) -> Interval | None:
    """A share over independent items (greedy prompts): its Wilson interval."""
    if n == 0:
        return None
    low, high = wilson_interval(successes, n, confidence)
    return Interval(low, high)
