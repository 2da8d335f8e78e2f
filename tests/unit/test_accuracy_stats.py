"""Wilson intervals and paired recovery bounds against values computed by hand and published ones."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_vllm.accuracy.stats import (
    PairedCounts,
    recovery_interval,
    wilson_interval,
    z_value,
)


def test_z_value_of_common_confidence_levels() -> None:
    assert z_value(0.95) == pytest.approx(1.959964, abs=1e-6)
    assert z_value(0.90) == pytest.approx(1.644854, abs=1e-6)
    assert z_value(0.99) == pytest.approx(2.575829, abs=1e-6)
    with pytest.raises(ValueError):
        z_value(1.0)


@pytest.mark.parametrize(("successes", "n", "low", "high"), [
    # Published 95% Wilson score intervals (e.g. statsmodels proportion_confint(method="wilson")).
    (5, 10, 0.236593, 0.763407),
    (0, 10, 0.0, 0.277533),
    (10, 10, 0.722467, 1.0),
    (1, 10, 0.017875, 0.404155),
    (20, 20, 0.838872, 1.0),
])
def test_wilson_interval_known_values(successes: int, n: int, low: float, high: float) -> None:
    got_low, got_high = wilson_interval(successes, n, 0.95)
    assert got_low == pytest.approx(low, abs=1e-5)
    assert got_high == pytest.approx(high, abs=1e-5)


def test_wilson_interval_narrows_with_more_samples() -> None:
    widths = [wilson_interval(n // 2, n)[1] - wilson_interval(n // 2, n)[0] for n in (10, 100, 1000)]
    assert widths[0] > widths[1] > widths[2]
    assert widths[2] < 0.07


def test_wilson_interval_without_trials_and_bad_counts() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_paired_counts_from_items() -> None:
    counts = PairedCounts.from_items([True, True, False, False, True], [True, False, True, False, True])
    assert (counts.both, counts.base_only, counts.compressed_only, counts.neither) == (2, 1, 1, 1)
    assert counts.base_correct == 3 and counts.compressed_correct == 3 and counts.discordant == 2
    with pytest.raises(ValueError):
        PairedCounts.from_items([True], [True, False])


def test_recovery_interval_maps_the_discordant_wilson_interval() -> None:
    # 54 right on both, 7 only on the compressed model, 8 only on the base: recovery 61/62.
    counts = PairedCounts(both=54, compressed_only=7, base_only=8, neither=68)
    result = recovery_interval(counts, 0.95)
    assert result.value == pytest.approx(61 / 62)
    low_pi, high_pi = wilson_interval(7, 15, 0.95)
    assert result.lower == pytest.approx((54 + 15 * low_pi) / (54 + 15 * (1 - low_pi)))
    assert result.upper == pytest.approx((54 + 15 * high_pi) / (54 + 15 * (1 - high_pi)))
    assert result.lower == pytest.approx(0.8843, abs=1e-3)
    assert result.lower < result.value < result.upper


def test_identical_answers_give_recovery_one_exactly() -> None:
    result = recovery_interval(PairedCounts(both=40, compressed_only=0, base_only=0, neither=60))
    assert (result.value, result.lower, result.upper) == (1.0, 1.0, 1.0)


def test_a_clearly_damaged_model_has_its_whole_interval_below_the_budget() -> None:
    result = recovery_interval(PairedCounts(both=33, compressed_only=7, base_only=39, neither=58))
    assert result.value == pytest.approx(40 / 72)
    assert result.upper is not None and result.upper < 0.8


def test_no_recovery_when_the_base_scores_nothing() -> None:
    result = recovery_interval(PairedCounts(both=0, compressed_only=3, base_only=0, neither=7))
    assert result.value is None and result.lower is None and result.upper is None


def test_everything_lost_has_lower_bound_zero_and_finite_upper() -> None:
    result = recovery_interval(PairedCounts(both=0, compressed_only=0, base_only=20, neither=0))
    assert result.value == 0.0 and result.lower == 0.0
    assert result.upper is not None and 0.0 < result.upper < 0.25


@given(st.integers(0, 60), st.integers(0, 30), st.integers(0, 30), st.integers(0, 30))
def test_bounds_bracket_the_point_estimate(both: int, b: int, c: int, neither: int) -> None:
    counts = PairedCounts(both=both, compressed_only=b, base_only=c, neither=neither)
    result = recovery_interval(counts)
    if counts.base_correct == 0:
        assert result.value is None
        return
    assert result.lower is not None and result.upper is not None and result.value is not None
    assert result.lower <= result.value + 1e-12
    assert result.value <= result.upper + 1e-12 or math.isinf(result.upper)
