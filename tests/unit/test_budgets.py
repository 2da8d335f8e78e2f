"""Budget parsing, direction defaults, noise widening and its cap."""

from __future__ import annotations

import pytest

from pytest_vllm.budgets import NoisePolicy, evaluate, parse_budget, parse_budgets
from pytest_vllm.errors import UsageError


def test_relative_budget_with_and_without_operator() -> None:
    explicit = parse_budget("ttft_p50", "<= baseline * 1.10")
    implicit = parse_budget("ttft_p50", "baseline * 1.10")
    assert explicit == implicit.__class__(**{**implicit.__dict__, "source": explicit.source})
    assert (explicit.kind, explicit.op, explicit.value) == ("relative", "<=", 1.10)
    assert parse_budget("output_throughput", "baseline * 0.9").op == ">="


def test_absolute_budgets_convert_units() -> None:
    assert parse_budget("tpot_p99", "<= 50 ms").value == 50
    assert parse_budget("tpot_p99", "<= 0.05 s").value == pytest.approx(50)
    assert parse_budget("output_throughput", ">= 100 tok/s").value == 100
    with pytest.raises(UsageError, match="measured in ms, not tok/s"):
        parse_budget("tpot_p99", "<= 50 tok/s")


def test_unknown_metric_lists_the_valid_names() -> None:
    with pytest.raises(UsageError) as err:
        parse_budget("ttft_median", "<= baseline * 1.1")
    assert "unknown metric 'ttft_median'" in str(err.value) and "ttft_p50" in str(err.value)


def test_informational_metric_cannot_be_budgeted() -> None:
    with pytest.raises(UsageError, match="informational"):
        parse_budget("duration", "<= 10 s")


def test_all_problems_reported_together() -> None:
    with pytest.raises(UsageError) as err:
        parse_budgets({"nope": "<= 1 ms", "ttft_p50": "fast please"})
    assert "nope" in str(err.value) and "fast please" in str(err.value)


def test_pair_budget_is_a_ratio() -> None:
    budget = parse_budget("output_throughput", ">= 1.2", kind_hint="pair")
    assert evaluate(budget, current=130.0, reference=100.0).passed
    assert not evaluate(budget, current=110.0, reference=100.0).passed
    with pytest.raises(UsageError, match="ratio"):
        parse_budget("output_throughput", ">= 100 tok/s", kind_hint="pair")


def test_relative_check_directions() -> None:
    latency = parse_budget("ttft_p50", "<= baseline * 1.10")
    assert evaluate(latency, current=109.0, reference=100.0).passed
    assert not evaluate(latency, current=111.0, reference=100.0).passed
    throughput = parse_budget("output_throughput", ">= baseline * 0.90")
    assert evaluate(throughput, current=91.0, reference=100.0).passed
    assert not evaluate(throughput, current=89.0, reference=100.0).passed


def test_noise_widens_the_tolerance_up_to_the_cap() -> None:
    throughput = parse_budget("output_throughput", ">= baseline * 0.95")
    policy = NoisePolicy(noise_k=2.0, max_tolerance=0.20)
    quiet = evaluate(throughput, current=92.0, reference=100.0, spread=0.01, noise=policy)
    assert not quiet.passed and quiet.tolerance == pytest.approx(0.05)
    noisy = evaluate(throughput, current=92.0, reference=100.0, spread=0.05, noise=policy)
    assert noisy.passed and noisy.tolerance == pytest.approx(0.10) and "widened" in noisy.note
    # a very noisy baseline cannot switch the gate off: 25% slower still fails
    wild = evaluate(throughput, current=75.0, reference=100.0, spread=0.5, noise=policy)
    assert not wild.passed and wild.tolerance == pytest.approx(0.20) and "capped" in wild.note
    # a budget wider than the cap is applied as asked, and says nothing about widening
    wide = evaluate(parse_budget("output_throughput", ">= baseline * 0.60"), current=61.0, reference=100.0,
                    spread=0.5, noise=policy)
    assert wide.passed and wide.tolerance == pytest.approx(0.40) and wide.note == ""
