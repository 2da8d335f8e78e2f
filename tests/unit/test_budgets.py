"""Budget parsing, direction defaults, the noise floor's widening and its cap."""

from __future__ import annotations

import math

import pytest

from pytest_vllm.errors import UsageError
from pytest_vllm.perf.budgets import DEFAULT_BUDGETS, GatePolicy, default_budgets, evaluate, parse_budget, parse_budgets
from pytest_vllm.perf.resolution import Noise


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
    assert evaluate(budget, current=1.3).passed
    assert not evaluate(budget, current=1.1).passed
    with pytest.raises(UsageError, match="ratio"):
        parse_budget("output_throughput", ">= 100 tok/s", kind_hint="pair")


def test_relative_check_directions() -> None:
    latency = parse_budget("ttft_p50", "<= baseline * 1.10")
    assert evaluate(latency, current=109.0, reference=100.0).passed
    assert not evaluate(latency, current=111.0, reference=100.0).passed
    throughput = parse_budget("output_throughput", ">= baseline * 0.90")
    assert evaluate(throughput, current=91.0, reference=100.0).passed
    assert not evaluate(throughput, current=89.0, reference=100.0).passed


def noise(sigma: float) -> Noise:
    """A noise model with a given sigma (a test double: the arithmetic of the model is tested in
    test_resolution.py)."""
    return Noise(within=0.0, between=sigma, between_measured=None, prior=sigma, recordings=1, repeats=5, sigma=sigma)


def test_noise_widens_the_tolerance_up_to_the_cap() -> None:
    throughput = parse_budget("output_throughput", ">= baseline * 0.95")
    policy = GatePolicy(false_alarm_rate=0.01, max_tolerance=0.20)
    quiet = evaluate(throughput, current=92.0, reference=100.0, noise=noise(0.001), policy=policy)
    assert not quiet.passed and quiet.tolerance == pytest.approx(0.05) and quiet.note == ""
    assert quiet.tolerance_source == "budget"
    # sigma 4%: the floor at 1% false alarms is 2.33 x 4% = 9.3% in ln units, so 92 passes, and says why
    noisy = evaluate(throughput, current=92.0, reference=100.0, noise=noise(0.04), policy=policy)
    assert noisy.passed and noisy.tolerance == pytest.approx(-math.expm1(-2.3263 * 0.04), rel=1e-3)
    assert "widened from 5% to 9%" in noisy.note and noisy.tolerance_source == "noise floor"
    # resolution: z(sqrt 0.9) = 1.6352 above the tolerance (a regression must fail twice, see resolution.py)
    assert noisy.resolution == pytest.approx(-math.expm1(-(2.3263 + 1.6352) * 0.04), rel=1e-3)
    # a very noisy baseline cannot switch the gate off: 25% slower still fails at the 20% cap
    wild = evaluate(throughput, current=75.0, reference=100.0, noise=noise(0.5), policy=policy)
    assert not wild.passed and wild.tolerance == pytest.approx(0.20) and "capped" in wild.note
    assert wild.tolerance_source == "capped"
    # a budget wider than the floor is applied as asked, and says nothing about widening
    wide = evaluate(parse_budget("output_throughput", ">= baseline * 0.60"), current=61.0, reference=100.0,
                    noise=noise(0.04), policy=policy)
    assert wide.passed and wide.tolerance == pytest.approx(0.40) and wide.note == ""


def test_a_budget_demanding_an_improvement_is_not_widened() -> None:
    faster = parse_budget("ttft_p50", "<= baseline * 0.9")
    check = evaluate(faster, current=95.0, reference=100.0, noise=noise(0.05))
    assert not check.passed and check.limit == pytest.approx(90.0) and check.note == ""


def test_relative_pair_budget_is_against_the_recorded_ratio() -> None:
    budget = parse_budget("output_throughput", ">= baseline * 0.9", kind_hint="pair")
    assert budget.kind == "relative" and budget.pair and "ratio" in budget.describe()
    assert evaluate(budget, current=1.55, reference=1.65, noise=noise(0.001)).passed
    assert not evaluate(budget, current=1.40, reference=1.65, noise=noise(0.001)).passed


def test_malformed_numbers_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="not a number"):
        parse_budget("ttft_p50", "<= baseline * 1.1.1")
    with pytest.raises(UsageError, match="positive"):
        parse_budget("ttft_p50", "<= baseline * 0")


def test_a_bare_number_is_refused_saying_which_strings_were_meant() -> None:
    with pytest.raises(UsageError) as err:
        parse_budget("ttft_p50", 1.1, where="[tool.pytest_vllm.budgets]: ")
    message = str(err.value)
    assert message.startswith("[tool.pytest_vllm.budgets]: budget ttft_p50=1.1 is a bare number")
    assert '"<= baseline * 1.1" (relative to the stored baseline)' in message
    assert '"<= 1.1 ms" (an absolute limit in ms)' in message
    with pytest.raises(UsageError, match=r'">= baseline \* 0.9".*">= 0.9 tok/s"'):
        parse_budget("output_throughput", 0.9)
    with pytest.raises(UsageError, match=r'">= 1.2" \(the ratio candidate / reference\) or ">= baseline \* 1.2"'):
        parse_budget("output_throughput", 1.2, kind_hint="pair")
    with pytest.raises(UsageError, match="a budget is a string"):
        parse_budget("ttft_p50", True)


def test_the_config_table_layers_over_the_defaults_and_reports_every_bad_entry() -> None:
    budgets = default_budgets({"ttft_p50": "<= 500 ms", "tpot_p50": "off"})
    assert set(budgets) == set(DEFAULT_BUDGETS)
    assert budgets["ttft_p50"].kind == "absolute" and budgets["tpot_p50"].kind == "off"
    assert budgets["output_throughput"].kind == "relative"
    with pytest.raises(UsageError) as err:
        default_budgets({"ttft_p50": 1.1, "tpot_p50": "<= baseline * 1.1.1"})
    lines = str(err.value).splitlines()
    assert len(lines) == 2 and all(line.startswith("[tool.pytest_vllm.budgets]: ") for line in lines)


def test_off_switches_a_budget_off() -> None:
    from pytest_vllm.perf.gate import in_force

    budgets = {**parse_budgets({"ttft_p50": "<= baseline * 1.1", "tpot_p50": "<= 50 ms"}),
               **parse_budgets({"ttft_p50": "off"})}
    assert budgets["ttft_p50"].kind == "off" and budgets["ttft_p50"].describe() == "off"
    assert set(in_force(budgets)) == {"tpot_p50"}
    assert parse_budget("output_throughput", "Off", kind_hint="pair").kind == "off"
