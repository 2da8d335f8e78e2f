"""Host CPU steal: the arithmetic on two samples, what a real sample of this machine looks like,
and the note a failed gate carries when the host was loaded."""

from __future__ import annotations

import time

import pytest

from pytest_vllm.load.client import RequestRecord
from pytest_vllm.load.host import HostCPUTimes, steal_share
from pytest_vllm.load.workload import Workload
from pytest_vllm.perf.budgets import evaluate, parse_budget
from pytest_vllm.perf.judge import failure_text, host_note
from pytest_vllm.perf.metrics import RepeatedResult, compute_records
from pytest_vllm.perf.results import Measurement


def test_steal_share_is_stolen_over_elapsed_cpu_time() -> None:
    assert steal_share(HostCPUTimes(10.0, 1000.0), HostCPUTimes(13.0, 1100.0)) == pytest.approx(0.03)
    assert steal_share(HostCPUTimes(10.0, 1000.0), HostCPUTimes(10.0, 1000.0)) == 0.0  # no time passed


def test_a_real_sample_of_this_machine_is_consistent() -> None:
    first = HostCPUTimes.now()
    # /proc/stat counts in ticks of 10 ms: burn CPU until a tick passes (a fresh-clone run once read
    # the same total twice around a fixed 200,000-square loop), for at most 5 s
    deadline = time.monotonic() + 5.0
    second = HostCPUTimes.now()
    while second.total <= first.total and time.monotonic() < deadline:
        sum(i * i for i in range(200_000))
        second = HostCPUTimes.now()
    assert second.total > first.total and second.steal >= first.steal >= 0.0
    assert 0.0 <= steal_share(first, second) <= 1.0


def _measurement(steal: float) -> Measurement:
    """A measurement built from hand-made records (a test double for exact numbers)."""
    records = [RequestRecord(index=0, scheduled_at=0.0, sent_at=0.0, first_token_at=0.1, chunk_times=[0.1, 0.2],
                             output_tokens=2, prompt_tokens=10)]
    result = RepeatedResult([compute_records(records, duration=1.0, host_steal=steal)])
    measurement = Measurement("suites/test_perf.py::t", "base", "m", Workload(name="w"), result, "k", {})
    budget = parse_budget("output_throughput", ">= baseline * 0.75")
    measurement.checks.append(evaluate(budget, 1.0, 2.0))
    return measurement


def test_a_failed_gate_names_a_loaded_host_and_a_quiet_one_not() -> None:
    loaded = _measurement(steal=0.12)
    assert loaded.value("host_cpu_steal") == pytest.approx(12.0)
    assert "12.0% of this machine's CPU time" in failure_text(loaded)
    assert host_note(_measurement(steal=0.001)) == ""
    assert "host:" not in failure_text(_measurement(steal=0.001))


def test_steal_can_carry_an_absolute_budget() -> None:
    budget = parse_budget("host_cpu_steal", "<= 5")
    assert not evaluate(budget, 12.0).passed and evaluate(budget, 1.0).passed
