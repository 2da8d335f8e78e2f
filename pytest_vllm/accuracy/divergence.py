"""Distribution distances between two models' next-token predictions, from top-k logprobs.

A server returns the logprobs of its top-k tokens (plus the actual token), not the whole
vocabulary, so the KL divergence is computed on a coarse-grained distribution: the tokens whose
logprob both servers returned, plus one "rest" bucket holding the remaining mass on each side::

    KL_topk(P || Q) = sum_{t in S} p(t) log(p(t) / q(t)) + p_rest log(p_rest / q_rest)
    S = known(P) & known(Q),  p_rest = 1 - sum_{t in S} p(t),  q_rest = 1 - sum_{t in S} q(t)

Merging tokens never increases a KL divergence (the log-sum inequality), so this is a lower bound
of the full-vocabulary KL, exact when the shared tokens carry all the mass, and close when the top-k
lists cover most of it (k = 20 by default). llama.cpp's perplexity tool computes the full KL from
stored full distributions; vLLM's API gives top-k only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

_EPS = 1e-12


def kl_divergence(p: Sequence[float], q: Sequence[float]) -> float:
    """KL(P || Q) in nats for two full probability vectors (q > 0 wherever p > 0)."""
    total = 0.0
    for pi, qi in zip(p, q):
        if pi > 0:
            total += pi * (math.log(pi) - math.log(max(qi, _EPS)))
    return max(0.0, total)


def topk_kl(p_logprobs: Mapping[int, float], q_logprobs: Mapping[int, float]) -> float:
    """KL(P || Q) coarse-grained onto the tokens both sides know plus a rest bucket (see above)."""
    shared = set(p_logprobs) & set(q_logprobs)
    p = [math.exp(p_logprobs[t]) for t in shared]
    q = [math.exp(q_logprobs[t]) for t in shared]
    p_rest = max(0.0, 1.0 - sum(p))
    q_rest = max(0.0, 1.0 - sum(q))
    return kl_divergence([*p, p_rest], [*q, max(q_rest, _EPS)])


def nearest_rank(values: Sequence[float], percentile: float) -> float:
    """The nearest-rank percentile (p99 of 1000 values is the 990th smallest)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(percentile / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def perplexity(logprobs: Sequence[float]) -> float:
    """exp of the mean negative log-likelihood of the actual tokens."""
    if not logprobs:
        return math.nan
    return math.exp(-sum(logprobs) / len(logprobs))
