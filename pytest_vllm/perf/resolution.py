"""How small a regression a relative budget can see: the noise model behind every tolerance.

A relative budget compares this run's median with the baseline's (the median of its recordings,
each one run of the suite on some host of the class). Both move for reasons that are not a
regression: the repetitions of one run differ a little (within-run noise), and one boot or host
of a class serves faster than another (between-boot noise). In log space, with

* ``s_w``: the pooled standard deviation of ln(value) within runs (this run's repetitions and
  every stored recording's repetitions),
* ``s_b``: the standard deviation of ln(value) between boots: from the recordings' medians where
  there are several, never below the profile's measured prior (``GPUProfile.boot_noise``),
* ``f(n)``: the variance factor of a median of ``n`` draws (1, 1/2, then π/(2n)),

the log ratio current / baseline has the standard deviation
``sigma = sqrt(s_b² + f(n)·s_w² + f(k)·(s_b² + f(n_b)·s_w²))`` for ``n`` repetitions now and ``k``
recordings of ``n_b`` repetitions stored. At the false-alarm rate ``alpha`` (per check) the
finest tolerance is ``floor = z(1 - alpha) · sigma``: a budget asking for less is widened to it,
and says so. The resolution printed beside each verdict is the smallest true regression the
check catches with probability ``power`` (0.9). A gated measurement out of budget is measured
once more, at the end of the session (``perf/deferral.py``), and the second decides, so a
regression must fail twice:
each attempt is sized to catch it with probability sqrt(power), which keeps ``power`` for the
pair even if the two attempts were independent (they share the boot, so it is higher):
``resolution = tolerance + z(sqrt(power)) · sigma``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_FALSE_ALARM_RATE = 0.01
DETECTION_POWER = 0.9  # "resolves X%": a true regression of X% fails this often, confirmation included
ATTEMPT_POWER = math.sqrt(DETECTION_POWER)  # per measurement: a regression must fail first and confirming one


def median_variance_factor(n: int) -> float:
    """Variance of the median of ``n`` normal draws, in units of one draw's variance (π/2n for
    n >= 3: slightly above the exact small-sample values, 0.449 for 3 and 0.287 for 5)."""
    if n <= 1:
        return 1.0
    if n == 2:
        return 0.5
    return math.pi / (2 * n)


def _logs(values: Sequence[float]) -> list[float]:
    return [math.log(v) for v in values if v > 0 and math.isfinite(v)]


def pooled_within_sd(runs: Sequence[Sequence[float]]) -> float:
    """Pooled standard deviation of ln(value) over groups of repetitions (0 without any pair)."""
    squares, dof = 0.0, 0
    for group in runs:
        logs = _logs(group)
        if len(logs) < 2:
            continue
        mean = statistics.fmean(logs)
        squares += sum((x - mean) ** 2 for x in logs)
        dof += len(logs) - 1
    return math.sqrt(squares / dof) if dof else 0.0


@dataclass(frozen=True)
class Noise:
    """The noise a check's verdict is judged against (all in ln units)."""

    within: float  # s_w
    between: float  # s_b applied
    between_measured: float | None  # s_b from the recordings (None with fewer than two)
    prior: float  # the profile's measured between-boot prior
    recordings: int
    repeats: int
    sigma: float  # of ln(current / baseline)

    def describe(self) -> str:
        source = (f"{self.recordings} recordings" if self.between_measured is not None and
                  self.between_measured >= self.prior else f"the profile's prior, {self.recordings} recording(s)")
        return f"between boots {self.between:.1%} ({source}), within a run {self.within:.1%}"


def baseline_noise(current: Sequence[float], recordings: Sequence[Sequence[float]], prior: float) -> Noise:
    """The noise of ln(median(current) / median of the recordings' medians)."""
    within = pooled_within_sd([current, *recordings])
    medians = [statistics.median(r) for r in recordings if _logs(r)]
    k = max(1, len(medians))
    n = max(1, len(_logs(current)))
    n_b = max(1, round(statistics.fmean(len(_logs(r)) for r in recordings))) if recordings else 1
    measured = None
    if len(medians) >= 2:
        spread = statistics.variance(_logs(medians)) - median_variance_factor(n_b) * within**2
        measured = math.sqrt(max(0.0, spread))
    between = max(prior, measured or 0.0)
    variance = (between**2 + median_variance_factor(n) * within**2
                + median_variance_factor(k) * (between**2 + median_variance_factor(n_b) * within**2))
    return Noise(within, between, measured, prior, len(medians), n, math.sqrt(variance))


def run_noise(current: Sequence[float]) -> Noise:
    """The noise of one run's median alone (absolute budgets, ratios measured in one run)."""
    within = pooled_within_sd([current])
    n = max(1, len(_logs(current)))
    return Noise(within, 0.0, None, 0.0, 0, n, math.sqrt(median_variance_factor(n)) * within)


def z(probability: float) -> float:
    return statistics.NormalDist().inv_cdf(probability)


@dataclass(frozen=True)
class Tolerance:
    """A relative budget's tolerance after the noise model (ln units) and what it can resolve."""

    asked: float
    floor: float  # z(1 - alpha) * sigma
    applied: float
    capped: bool  # the floor exceeded the configured maximum
    resolution: float  # as a fraction of the baseline: the regression caught with DETECTION_POWER (confirmed)

    @property
    def widened(self) -> bool:
        return self.applied > self.asked + 1e-12


def tolerance(asked: float, noise: Noise, lower_is_better: bool, false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
              max_tolerance: float | None = None) -> Tolerance:
    """``asked``: the budget's own tolerance in ln units (ln 1.10 for ``<= baseline * 1.10``)."""
    floor = z(1 - false_alarm_rate) * noise.sigma
    applied = max(asked, floor)
    capped = False
    if max_tolerance is not None and applied > max(asked, max_tolerance):
        applied, capped = max(asked, max_tolerance), True
    caught = applied + z(ATTEMPT_POWER) * noise.sigma
    resolution = math.expm1(caught) if lower_is_better else -math.expm1(-caught)
    return Tolerance(asked, floor, applied, capped, resolution)


def as_fraction(log_tolerance: float, lower_is_better: bool) -> float:
    """A ln-unit tolerance as the fraction of the baseline it allows (+10% or -10%)."""
    return math.expm1(log_tolerance) if lower_is_better else -math.expm1(-log_tolerance)
