"""The noise model behind every relative budget: its arithmetic, and its false-alarm and detection
rates on simulated runs drawn from known noise (a test double: real servers cannot give noise of
a known size; benchmarks/test_noise_gate.py measures the rates on real boots)."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from pytest_vllm.perf.budgets import GatePolicy, evaluate, parse_budget
from pytest_vllm.perf.resolution import (
    baseline_noise,
    median_variance_factor,
    pooled_within_sd,
    run_noise,
    tolerance,
    z,
)


def test_median_variance_factors() -> None:
    assert median_variance_factor(1) == 1.0 and median_variance_factor(2) == 0.5
    assert median_variance_factor(5) == pytest.approx(math.pi / 10)
    assert median_variance_factor(3) > 0.449  # the exact value for three normal draws: a little conservative


def test_pooled_within_sd_pools_the_groups_in_log_space() -> None:
    a, b = [100.0, 110.0, 90.0], [50.0, 55.0]
    logs = [[math.log(v) for v in g] for g in (a, b)]
    squares = sum((x - statistics.fmean(g)) ** 2 for g in logs for x in g)
    assert pooled_within_sd([a, b]) == pytest.approx(math.sqrt(squares / 3))
    assert pooled_within_sd([[1.0], []]) == 0.0  # no pair of repetitions: nothing to pool


def test_one_recording_takes_the_prior_and_agreeing_recordings_keep_it() -> None:
    one = baseline_noise([100.0] * 5, [[100.0] * 5], prior=0.04)
    assert one.between == 0.04 and one.between_measured is None
    assert one.sigma == pytest.approx(math.sqrt(0.04**2 * 2))  # the run and the single recording
    agreeing = baseline_noise([100.0] * 5, [[100.0] * 5, [101.0] * 5, [99.5] * 5], prior=0.04)
    assert agreeing.between == 0.04 and agreeing.between_measured is not None and agreeing.between_measured < 0.04


def test_recordings_that_disagree_widen_the_between_boot_noise() -> None:
    hosts = [[100.0] * 5, [80.0] * 5, [120.0] * 5]
    noise = baseline_noise([100.0] * 5, hosts, prior=0.02)
    spread = statistics.stdev(math.log(v) for v in (100.0, 80.0, 120.0))
    assert noise.between == pytest.approx(spread) and noise.recordings == 3
    assert "3 recordings" in noise.describe()


def test_tolerance_floor_widening_cap_and_resolution() -> None:
    noise = baseline_noise([100.0] * 5, [[100.0] * 5], prior=0.05)
    floor = z(0.99) * noise.sigma
    tight = tolerance(math.log(1.05), noise, lower_is_better=True)
    assert tight.widened and tight.applied == pytest.approx(floor) and not tight.capped
    assert tight.resolution == pytest.approx(math.expm1(floor + z(math.sqrt(0.9)) * noise.sigma))
    loose = tolerance(math.log(1.50), noise, lower_is_better=True)
    assert not loose.widened and loose.applied == pytest.approx(math.log(1.5))
    capped = tolerance(math.log(1.05), noise, lower_is_better=True, max_tolerance=math.log(1.08))
    assert capped.capped and capped.applied == pytest.approx(math.log(1.08))


def test_run_noise_is_the_median_of_the_repetitions() -> None:
    noise = run_noise([1.0, 1.1, 0.9, 1.05, 0.95])
    assert noise.sigma == pytest.approx(math.sqrt(median_variance_factor(5)) * pooled_within_sd([[1.0, 1.1, 0.9,
                                                                                                  1.05, 0.95]]))


def simulated_runs(rng: random.Random, level: float, between: float, within: float, repeats: int,
                   boot: float | None = None) -> list[float]:
    """One run of ``repeats`` repetitions on a freshly booted server whose speed is ``level``
    (``boot``: the speed of a server already booted, for a second run on it)."""
    boot = level * math.exp(rng.gauss(0.0, between)) if boot is None else boot
    return [boot * math.exp(rng.gauss(0.0, within)) for _ in range(repeats)]


@pytest.mark.parametrize("recordings", [1, 3, 5])
def test_simulated_false_alarm_and_detection_rates(recordings: int) -> None:
    """Between-boot noise 5% (known to the model as its prior), within-run noise 2%: the gate at a
    1% false-alarm rate per check fails healthy servers at about that rate, and a regression as
    large as its printed resolution at least 9 times in 10, counting as the gate does: a first
    measurement out of budget is measured again on the same boot and the second decides."""
    rng = random.Random(recordings)
    budget = parse_budget("output_throughput", ">= baseline * 0.95")
    policy = GatePolicy(false_alarm_rate=0.01, max_tolerance=0.9)
    false_alarms = detections = 0
    trials = 4000
    for _ in range(trials):
        stored = [simulated_runs(rng, 100.0, 0.05, 0.02, 5) for _ in range(recordings)]
        reference = statistics.median(statistics.median(r) for r in stored)

        def failed(speed: float, factor: float = 1.0, stored: list[list[float]] = stored,
                   reference: float = reference) -> tuple[bool, float | None]:
            """The gate's verdict on a fresh boot of this speed: out of budget, confirmed."""
            boot = speed * math.exp(rng.gauss(0.0, 0.05))
            for _attempt in range(2):
                runs = [v * factor for v in simulated_runs(rng, speed, 0.05, 0.02, 5, boot=boot)]
                check = evaluate(budget, statistics.median(runs), reference, baseline_noise(runs, stored, 0.05),
                                 policy)
                if check.passed:
                    return False, check.resolution
            return True, check.resolution

        alarm, resolution = failed(100.0)
        false_alarms += alarm
        assert resolution is not None
        detections += failed(100.0, 1 - resolution)[0]
    assert false_alarms / trials <= 0.015
    assert detections / trials >= 0.88
