"""Confidence bounds for accuracy scores and for recovery (compressed score / base score).

Both models answer the same items, so recovery is a ratio of *paired* proportions. Items both
models score alike say nothing about the ratio; only the discordant items do (McNemar's
conditioning). With ``a`` items right on both, ``b`` right only on the compressed model and ``c``
right only on the base::

    recovery = (a + b) / (a + c)

Given the ``d = b + c`` discordant items, ``b`` is binomial(d, pi). The Wilson score interval of pi
at the run's confidence maps monotonically onto recovery, ``R(pi) = (a + d*pi) / (a + d*(1 - pi))``,
which gives the recovery interval. It is as wide as the evidence: few discordant items on many
agreeing ones give a tight bound; many discordant items, or few items at all, a wide one. With no
discordant item the two models scored identically and the interval is exactly [1, 1]; the logprob
agreement checks see the drift that task accuracy cannot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

DEFAULT_CONFIDENCE = 0.95


def z_value(confidence: float) -> float:
    """The two-sided normal quantile for ``confidence`` (0.95 -> 1.96)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, not {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(successes: int, n: int, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion; (0, 1) when there is no trial."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes}/{n}")
    if n == 0:
        return 0.0, 1.0
    z = z_value(confidence)
    p = successes / n
    denominator = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denominator
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == n else min(1.0, center + half)
    return low, high


@dataclass(frozen=True)
class PairedCounts:
    """How two models' per-item correctness lines up on the same items."""

    both: int  # a: right on both
    compressed_only: int  # b
    base_only: int  # c
    neither: int

    @classmethod
    def from_items(cls, base: Sequence[bool], compressed: Sequence[bool]) -> PairedCounts:
        if len(base) != len(compressed):
            raise ValueError(f"paired scores need the same items: {len(base)} vs {len(compressed)}")
        pairs = list(zip(base, compressed))
        return cls(both=sum(1 for b, c in pairs if b and c),
                   compressed_only=sum(1 for b, c in pairs if c and not b),
                   base_only=sum(1 for b, c in pairs if b and not c),
                   neither=sum(1 for b, c in pairs if not b and not c))

    @property
    def n(self) -> int:
        return self.both + self.compressed_only + self.base_only + self.neither

    @property
    def base_correct(self) -> int:
        return self.both + self.base_only

    @property
    def compressed_correct(self) -> int:
        return self.both + self.compressed_only

    @property
    def discordant(self) -> int:
        return self.compressed_only + self.base_only


@dataclass(frozen=True)
class Recovery:
    """compressed / base with its confidence interval; None where the base scored nothing."""

    value: float | None
    lower: float | None
    upper: float | None
    confidence: float
    counts: PairedCounts


def recovery_interval(counts: PairedCounts, confidence: float = DEFAULT_CONFIDENCE) -> Recovery:
    """Recovery and its paired (discordant-item) Wilson interval, as the module docstring derives."""
    a, b, c = counts.both, counts.compressed_only, counts.base_only
    if counts.base_correct == 0:
        return Recovery(None, None, None, confidence, counts)
    value = (a + b) / (a + c)
    d = b + c
    if d == 0:
        return Recovery(value, value, value, confidence, counts)
    low_pi, high_pi = wilson_interval(b, d, confidence)

    def ratio(pi: float) -> float:
        denominator = a + d * (1.0 - pi)
        return math.inf if denominator == 0 else (a + d * pi) / denominator

    return Recovery(value, ratio(low_pi), ratio(high_pi), confidence, counts)


# -- resolution: how small a drop a sample can tell from none ------------------------------------
# With no true drop, the discordant items split evenly between the two models, so b - c has a
# standard deviation of sqrt(d), and recovery - 1 = (b - c) / base_correct. The smallest drop a
# sample resolves at ``confidence`` is z * sqrt(d) / base_correct. A sample with almost no
# discordant item still cannot rule out about z^2 of them (the Wilson bound of 0 in n), which sets
# the floor. Both d and base_correct grow with the item count, so the resolution shrinks as
# 1/sqrt(n): n * (resolution / wanted)^2 items resolve a drop of ``wanted``.
def detectable_drop(counts: PairedCounts, confidence: float = DEFAULT_CONFIDENCE) -> float | None:
    """The smallest recovery shortfall (0.05 = a 5% drop) this sample tells from none; None: the
    reference scored nothing."""
    if counts.base_correct == 0:
        return None
    z = z_value(confidence)
    return z * math.sqrt(max(counts.discordant, z * z)) / counts.base_correct


def items_to_resolve(n: int, resolution: float, wanted: float) -> int:
    """Items (or tokens) a sample like this one needs to resolve ``wanted`` instead of ``resolution``."""
    if wanted <= 0:
        raise ValueError(f"a drop to resolve must be positive, not {wanted}")
    return math.ceil(n * (resolution / wanted) ** 2)
