"""Workload validation and open-loop arrival schedules."""

from __future__ import annotations

import statistics

import pytest

from pytest_vllm.errors import UsageError
from pytest_vllm.load.runner import arrival_offsets
from pytest_vllm.load.workload import Workload


@pytest.mark.parametrize(("changes", "message"), [
    ({"repeats": 2}, "repeats must be odd"),
    ({"concurrency": None}, "give concurrency"),
    ({"endpoint": "embeddings"}, "endpoint must be"),
    ({"shared_prefix_len": 200, "input_len": 100}, "shared_prefix_len must be below input_len"),
    ({"request_rate": -1.0}, "request_rate must be positive"),
    ({"slo_ms": {"latency": 5}}, "slo_ms keys"),
    ({"dataset": "/no/such/file.jsonl"}, "does not exist"),
])
def test_invalid_workloads_name_the_problem(changes: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        Workload(name="w", **changes)


def test_key_ignores_name_and_repeats_but_not_load() -> None:
    a = Workload(name="a", concurrency=4)
    assert a.key == Workload(name="b", concurrency=4, repeats=5).key
    assert a.key != Workload(name="a", concurrency=8).key


def test_warmup_defaults_to_the_concurrency() -> None:
    assert Workload(concurrency=8).warmup == 8
    assert Workload(concurrency=None, request_rate=2.0).warmup == 1
    assert Workload(concurrency=8, warmup_requests=0).warmup == 0


@pytest.mark.parametrize(("burstiness", "cv"), [(1.0, 1.0), (0.5, 2 ** 0.5), (4.0, 0.5)])
def test_arrivals_have_the_asked_rate_and_burstiness(burstiness: float, cv: float) -> None:
    workload = Workload(concurrency=None, request_rate=5.0, burstiness=burstiness)
    offsets = arrival_offsets(workload, 20000, repeat=0)
    gaps = [b - a for a, b in zip(offsets, offsets[1:])]
    assert statistics.mean(gaps) == pytest.approx(1 / 5.0, rel=0.03)
    assert statistics.stdev(gaps) / statistics.mean(gaps) == pytest.approx(cv, rel=0.05)
    assert offsets == arrival_offsets(workload, 20000, repeat=0), "seeded: the same schedule every time"
    assert offsets != arrival_offsets(workload, 20000, repeat=1), "each repetition gets its own draw"
