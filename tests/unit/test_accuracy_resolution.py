"""Resolution of the accuracy metrics: the paired drop a sample resolves, the items that would
resolve a finer budget, and the bootstrap intervals of the agreement metrics."""

from __future__ import annotations

import math
import random

import pytest

from pytest_vllm.accuracy.bootstrap import Interval, agreement_intervals, share_interval
from pytest_vllm.accuracy.budgets import AccuracyBudget, judge_value
from pytest_vllm.accuracy.results import finer_than_resolution
from pytest_vllm.accuracy.stats import PairedCounts, detectable_drop, items_to_resolve, recovery_interval


def test_the_resolution_shrinks_with_the_square_root_of_the_items() -> None:
    small = PairedCounts(both=36, compressed_only=2, base_only=2, neither=10)
    large = PairedCounts(both=36 * 16, compressed_only=32, base_only=32, neither=160)
    assert detectable_drop(small) == pytest.approx(1.96 * 2 / 38, rel=1e-3)
    assert detectable_drop(large) == pytest.approx(detectable_drop(small) / 4, rel=1e-3)
    assert detectable_drop(PairedCounts(0, 0, 0, 5)) is None


def test_the_resolution_agrees_with_the_interval_when_the_models_agree() -> None:
    """With discordant items split evenly, the interval's lower side is about the resolution."""
    counts = PairedCounts(both=300, compressed_only=20, base_only=20, neither=60)
    interval = recovery_interval(counts)
    assert interval.lower is not None
    assert 1 - interval.lower == pytest.approx(detectable_drop(counts), rel=0.15)


def test_a_budget_finer_than_the_resolution_says_how_many_items_would_resolve_it() -> None:
    budget = AccuracyBudget("recovery", ">=", 0.95, "default")
    note = finer_than_resolution("facts accuracy", budget, 0.10, 137, "items")
    assert "allows a 5.0% drop, finer than the 10.0%" in note and "about 548 items (4.0x)" in note
    assert items_to_resolve(137, 0.10, 0.05) == 548
    assert finer_than_resolution("x", budget, 0.04, 137, "items") == ""  # resolved: no note


def _corpus(texts: int, per_text: int, drift: float, seed: int) -> tuple[list[int], list[bool], list[float],
                                                                          list[float], list[float]]:
    rng = random.Random(seed)
    text_of, agree, kl, base, compressed = [], [], [], [], []
    for t in range(texts):
        hard = rng.random()  # texts differ: positions of one text are alike
        for _ in range(per_text):
            text_of.append(t)
            agree.append(rng.random() > 0.1 + 0.1 * hard)
            kl.append(rng.expovariate(1 / (0.02 + 0.05 * hard)))
            lp = -rng.expovariate(1 / (2.0 + hard))
            base.append(lp)
            compressed.append(lp - drift * abs(lp))
    return text_of, agree, kl, base, compressed


def test_bootstrap_intervals_hold_the_point_and_narrow_with_more_texts() -> None:
    small = agreement_intervals(*_corpus(20, 50, 0.03, seed=1))
    large = agreement_intervals(*_corpus(320, 50, 0.03, seed=1))
    text_of, agree, kl, base, compressed = _corpus(20, 50, 0.03, seed=1)
    ppl_ratio = math.exp((sum(base) - sum(compressed)) / len(base))
    assert small["ppl_ratio"].contains(ppl_ratio) and small["top1_agreement"].contains(sum(agree) / len(agree))
    assert small["kl_mean"].contains(sum(kl) / len(kl))
    for metric in ("top1_agreement", "kl_mean", "kl_p99", "ppl_ratio"):
        assert large[metric].half_width < small[metric].half_width / 2.5, metric  # 16x the texts: about 1/4
    assert agreement_intervals([0, 0], [True, False], [0.1, 0.2], [-1.0, -2.0], [-1.0, -2.0]) == {}


def test_an_agreement_budget_inside_its_interval_is_inconclusive() -> None:
    budget = AccuracyBudget("ppl_ratio", "<=", 1.05, "default")
    interval = share_interval(5, 10)
    assert interval is not None and interval.contains(0.5)
    assert judge_value(1.04, budget, Interval(1.02, 1.06)).label == "INCONCLUSIVE (warning)"
    assert judge_value(1.04, budget, Interval(1.03, 1.045)).label == "PASS"
    assert judge_value(1.06, budget, Interval(1.04, 1.08)).label == "FAIL"
