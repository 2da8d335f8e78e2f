"""The capacity search's logic: bracketing, bisection to the precision, inconclusive probes, the
capacity measurement's budgets, and the paced arrivals of a probe.

``FakeServer`` is a test double of a server with a known capacity and a client with a known limit:
a real server cannot be told its true capacity, which is what the search must be shown to find."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

import pytest

from pytest_vllm.errors import UsageError
from pytest_vllm.gpu import PROFILES, noise_family
from pytest_vllm.load.client import RequestRecord
from pytest_vllm.load.probing import achieved_rate, decided_failing, missed_slo, paced_offsets
from pytest_vllm.load.runner import STOPPED, until_decided
from pytest_vllm.load.workload import Workload
from pytest_vllm.perf.budgets import evaluate, parse_budget
from pytest_vllm.perf.capacity import (
    MIN_ACHIEVED_SHARE,
    CapacitySearch,
    CapacityWorkload,
    Probe,
    outcome_of,
    start_rate_from,
    tolerance_problem,
)
from pytest_vllm.perf.capacity_bench import CAPACITY_BUDGET, bounded_by_precision, capacity_budgets, capacity_result


@dataclass
class FakeServer:
    """Passes every rate up to ``capacity``; the client cannot send beyond ``client_limit``, and
    its first ``flaky`` probes are saturated (a transient)."""

    capacity: float
    client_limit: float = math.inf
    flaky: int = 0

    def probe(self, rate: float) -> Probe:
        achieved = min(rate, self.client_limit)
        saturated = self.flaky > 0
        self.flaky -= 1
        good = 1.0 if rate <= self.capacity else 0.5
        outcome, reason = outcome_of(rate, achieved, good, saturated, 0.99)
        return Probe(rate, achieved, good * achieved, good, 10, 0, {}, saturated, 10.0, outcome, reason)


def searched(server: FakeServer, start: float, precision: float = 0.10, max_probes: int = 12) -> CapacitySearch:
    search = CapacitySearch(start, precision, max_probes)
    while (rate := search.next_rate()) is not None:
        search.record(server.probe(rate))
    return search


@pytest.mark.parametrize("start", [0.05, 0.3, 1.0, 2.9, 7.0, 40.0])
@pytest.mark.parametrize("precision", [0.05, 0.10, 0.25])
def test_the_search_brackets_the_true_capacity_to_its_precision(start: float, precision: float) -> None:
    search = searched(FakeServer(capacity=3.0), start, precision)
    assert search.converged and not search.client_bound
    assert search.capacity is not None and search.upper is not None
    assert search.capacity <= 3.0 < search.upper <= search.capacity * (1 + precision)
    assert "converged" in search.verdict()


def test_doubling_then_bisection_visits_the_expected_rates() -> None:
    search = searched(FakeServer(capacity=3.0), start=1.0)
    rates = [round(p.rate, 3) for p in search.probes]
    assert rates[:3] == [1.0, 2.0, 4.0]  # doubles until it fails
    assert rates[3] == round(math.sqrt(8), 3)  # then bisects geometrically
    assert [p.outcome for p in search.probes][:3] == ["pass", "pass", "fail"]


def test_a_failing_start_halves_until_a_rate_passes() -> None:
    search = searched(FakeServer(capacity=0.4), start=5.0)
    assert [p.rate for p in search.probes][:4] == [5.0, 2.5, 1.25, 0.625]
    assert search.converged and search.capacity is not None and search.capacity <= 0.4


def test_a_server_that_meets_no_rate_has_no_capacity() -> None:
    search = CapacitySearch(1.0, min_rate=0.1, max_probes=20)
    while (rate := search.next_rate()) is not None:
        search.record(FakeServer(capacity=0.0).probe(rate))
    assert search.capacity is None
    assert "no probed rate met the SLOs" in search.verdict()
    assert capacity_result(search).runs == []


def test_a_client_that_cannot_offer_the_rate_is_no_server_failure() -> None:
    """Above 2 req/s the client falls short; the server would sustain 5: the search stops raising
    the rate at the client's limit, reports a lower bound, and never records a failure."""
    search = searched(FakeServer(capacity=5.0, client_limit=2.0), start=1.0)
    assert all(p.outcome != "fail" for p in search.probes)
    assert search.client_bound and search.failed_at is None
    # a probe within 90% of the asked rate counts as offered
    assert search.capacity is not None and 2.0 / 1.1 < search.capacity <= 2.0 / MIN_ACHIEVED_SHARE
    assert "lower bound" in search.verdict()


def test_an_inconclusive_probe_is_probed_again_once() -> None:
    search = searched(FakeServer(capacity=3.0, flaky=1), start=1.0)
    assert [p.outcome for p in search.probes][:2] == ["inconclusive", "pass"]
    assert search.probes[0].rate == search.probes[1].rate == 1.0
    assert search.converged and not search.client_bound


def test_a_search_out_of_probes_says_it_did_not_converge() -> None:
    search = searched(FakeServer(capacity=3.0), start=1.0, precision=0.01, max_probes=5)
    assert len(search.probes) == 5 and not search.converged
    assert "not converged" in search.verdict()


def test_outcome_names_why_a_probe_is_inconclusive() -> None:
    assert outcome_of(2.0, 1.7, 1.0, False, 0.99) == ("inconclusive", "the client sent 1.7 req/s, under 90% of the 2 "
                                                                      "asked")
    assert outcome_of(2.0, 2.0, 1.0, True, 0.99)[0] == "inconclusive"
    assert outcome_of(2.0, 1.9, 0.98, False, 0.99) == ("fail", "98.0% within the SLOs, 99% needed")
    assert outcome_of(2.0, 1.9, 0.99, False, 0.99) == ("pass", "")


def test_start_rate_follows_the_single_stream_latency() -> None:
    assert start_rate_from(0.5) == 4.0  # twice what one request at a time sustains
    with pytest.raises(UsageError, match="answered no request"):
        start_rate_from(0.0)


@pytest.mark.parametrize(("changes", "message"), [
    ({"slo_ms": {}}, "slo_ms is empty"),
    ({"precision": 0.0}, "precision must be in"),
    ({"good_fraction": 1.5}, "good_fraction must be in"),
    ({"max_probes": 1}, "max_probes must be at least 2"),
])
def test_invalid_capacity_workloads_name_the_problem(changes: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        CapacityWorkload(**{"slo_ms": {"ttft": 1000.0}, **changes})


def test_the_capacity_key_covers_the_search_definition() -> None:
    base = CapacityWorkload(slo_ms={"ttft": 1000.0})
    assert base.key == base.with_(name="other", prompt_seed=3).key
    for changed in ({"precision": 0.05}, {"good_fraction": 0.9}, {"slo_ms": {"ttft": 900.0}}, {"output_len": 16}):
        assert base.with_(**changed).key != base.key, changed


def test_probes_send_their_own_prompts_at_their_rate() -> None:
    search = CapacityWorkload(name="capacity", slo_ms={"tpot": 100.0}, probe_seconds=10.0, min_probe_requests=8)
    first, second = search.probe(2.0, 0), search.probe(0.2, 1)
    assert type(first) is Workload and first.request_rate == 2.0 and first.num_requests == 20
    assert second.num_requests == 8  # at least min_probe_requests
    assert search.probe(0.05, 2).num_requests == 2  # ... unless that spans over 4 x probe_seconds
    assert first.seed != second.seed and first.repeats == 1 and first.warmup == 0
    assert first.slo_ms == {"tpot": 100.0}


@pytest.mark.parametrize("burstiness", [1.0, 0.5])
def test_paced_arrivals_offer_exactly_the_asked_rate(burstiness: float) -> None:
    """Unconditioned, 12 Poisson arrivals offer a rate far off the asked one; paced, they span
    (n - 1) / rate, their gaps as uneven as before."""
    workload = Workload(num_requests=12, request_rate=3.0, concurrency=None, burstiness=burstiness)
    for repeat in range(20):
        offsets = paced_offsets(workload, 12, repeat)
        assert offsets[0] == 0.0 and offsets[-1] == pytest.approx(11 / 3.0)
        gaps = [b - a for a, b in zip(offsets, offsets[1:])]
        assert max(gaps) > 2 * min(gaps)  # still random gaps, not a metronome


def test_achieved_rate_compares_the_sends_with_their_schedule() -> None:
    on_time = [RequestRecord(i, scheduled_at=1.0 + 0.5 * i, sent_at=1.001 + 0.5 * i) for i in range(5)]
    assert achieved_rate(on_time, 2.0) == pytest.approx(2.0)
    late = [RequestRecord(i, scheduled_at=1.0 + 0.5 * i, sent_at=1.0 + 0.625 * i) for i in range(5)]
    assert achieved_rate(late, 2.0) == pytest.approx(1.6)
    # A probe stopped after two Poisson sends 3 s apart, on schedule: no shortfall (it once read as 0.33 req/s).
    stopped = [RequestRecord(0, scheduled_at=1.0, sent_at=1.0), RequestRecord(1, scheduled_at=4.0, sent_at=4.0),
               RequestRecord(2, scheduled_at=9.0)]
    assert achieved_rate(stopped, 2.0) == pytest.approx(2.0)
    assert achieved_rate(stopped[:1], 2.0) == 2.0  # one send: no evidence of lateness


def test_the_default_budget_is_consistent_with_the_default_precision() -> None:
    budget = parse_budget("capacity", CAPACITY_BUDGET)
    precision = CapacityWorkload(slo_ms={"ttft": 1.0}).precision
    assert tolerance_problem(precision, budget.value, budget.lower_is_better) is None
    assert capacity_budgets({"capacity": budget}, CapacityWorkload(slo_ms={"ttft": 1.0})) == {"capacity": budget}


def test_a_budget_finer_than_the_precision_is_refused_early() -> None:
    """A search to 10% cannot see a 5% regression: such a budget is a usage error, not a flaky gate."""
    budget = parse_budget("capacity", ">= baseline * 0.95")
    with pytest.raises(UsageError, match="finer precision"):
        capacity_budgets({"capacity": budget}, CapacityWorkload(slo_ms={"ttft": 1.0}))
    assert capacity_budgets({"capacity": budget}, CapacityWorkload(slo_ms={"ttft": 1.0}, precision=0.04))


def test_a_check_resolves_no_finer_than_the_search() -> None:
    check = evaluate(parse_budget("capacity", ">= baseline * 0.85"), 2.9, 3.0)
    bounded = bounded_by_precision([check], 0.10)[0]
    assert bounded.resolution is not None and bounded.resolution >= 0.10
    assert bounded.passed == check.passed


SLO = {"ttft": 1000.0, "tpot": 100.0}


def test_a_request_misses_its_slo_as_soon_as_that_is_certain() -> None:
    streaming = RequestRecord(0, sent_at=10.0, first_token_at=10.5, chunk_times=[10.5, 10.6])
    assert not missed_slo(streaming, SLO, output_len=32, now=11.0)
    # 32 tokens: the 31 after the first take at least (now - first token) / 31
    assert missed_slo(streaming, SLO, output_len=32, now=10.5 + 31 * 0.101)
    waiting = RequestRecord(1, sent_at=10.0)
    assert not missed_slo(waiting, SLO, 32, now=10.9) and missed_slo(waiting, SLO, 32, now=11.1)
    done = RequestRecord(2, sent_at=10.0, first_token_at=10.2, chunk_times=[10.2, 10.9], output_tokens=9)
    assert not missed_slo(done, SLO, 32, now=99.0)  # answered within both: later clocks change nothing
    assert missed_slo(RequestRecord(3, sent_at=10.0, error="HTTP 500"), SLO, 32, now=10.0)
    assert not missed_slo(RequestRecord(4), SLO, 32, now=99.0)  # not sent yet
    assert missed_slo(done, {"e2el": 900.0}, 32, now=99.0)


def test_a_probe_is_decided_once_more_requests_missed_than_allowed() -> None:
    decided = decided_failing({"ttft": 1000.0}, good_fraction=0.9, output_len=None)
    late = RequestRecord(0, sent_at=1.0, error="late")
    fine = RequestRecord(1, sent_at=1.0, first_token_at=1.1, chunk_times=[1.1], output_tokens=1)
    assert not decided([late] + [fine] * 19)  # 10% of 20 may miss: 2
    assert not decided([late, late] + [fine] * 18)
    assert decided([late, late, late] + [fine] * 17)
    assert decided_failing({"ttft": 1000.0}, 1.0, None)([late, fine])  # 100%: the first miss decides


def test_an_open_loop_stops_once_decided_and_marks_what_it_cut_off() -> None:
    """until_decided cancels a run as soon as its stop condition holds (here: a request failed), and the
    requests it had not answered say so; a run that is never decided runs to its end."""
    records = [RequestRecord(i, sent_at=1.0) for i in range(3)]

    async def run() -> None:
        await asyncio.sleep(0.05)
        records[0].error = "HTTP 500"
        records[1].output_tokens = 4  # answered before the stop
        await asyncio.sleep(30)

    started = time.perf_counter()
    asyncio.run(until_decided(run(), records, lambda rs: any(r.error for r in rs)))
    assert time.perf_counter() - started < 5
    assert [r.error for r in records] == ["HTTP 500", None, STOPPED]
    finished: list[int] = []

    async def short() -> None:
        finished.append(1)

    asyncio.run(until_decided(short(), [], lambda rs: False))
    assert finished == [1]


def test_capacity_has_a_noise_prior_of_its_own() -> None:
    """A capacity is noisier than a throughput (a probe near capacity passes or fails by chance):
    the CPU profile's measured prior, a GPU profile without one its largest."""
    assert noise_family("capacity") == "capacity"
    assert PROFILES["cpu"].boot_noise_of("capacity") > PROFILES["cpu"].boot_noise_of("output_throughput")
    assert PROFILES["h200"].boot_noise_of("capacity") == max(PROFILES["h200"].boot_noise.values())
