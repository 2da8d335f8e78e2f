"""Metric arithmetic on hand-made request records, and agreement with vLLM's own calculate_metrics.

The records here are a test double: exact, deterministic timings that no real server can give,
so that each definition is checked to the microsecond.
"""

from __future__ import annotations

import random

import pytest

from pytest_vllm.load.client import RequestRecord
from pytest_vllm.load.runner import RunResult
from pytest_vllm.perf.metrics import (
    METRICS,
    MULTI_TURN_METRICS,
    RepeatedResult,
    compute,
    compute_records,
    prefill_interference,
)
from pytest_vllm.server.counters import PrefixCacheCounts


def record(index: int, sent: float, chunks: list[float], tokens: int, prompt: int = 10,
           error: str | None = None) -> RequestRecord:
    return RequestRecord(index=index, scheduled_at=sent, sent_at=sent, first_token_at=chunks[0] if chunks else None,
                         chunk_times=chunks, output_tokens=tokens, prompt_tokens=prompt, error=error)


def test_definitions_on_exact_timings() -> None:
    records = [
        record(0, 0.0, [0.1, 0.2, 0.3, 0.4], tokens=4),  # ttft 100ms, e2el 400ms, tpot 100ms
        record(1, 0.0, [0.2, 0.25, 0.3], tokens=3),  # ttft 200ms, e2el 300ms, tpot 50ms
    ]
    result = compute_records(records, duration=2.0)
    assert result["ttft_mean"] == pytest.approx(150.0)
    assert result["ttft_p50"] == pytest.approx(150.0)
    assert result["e2el_mean"] == pytest.approx(350.0)
    assert result["tpot_mean"] == pytest.approx(75.0)
    # ITL pools every gap: 100, 100, 100, 50, 50
    assert result["itl_mean"] == pytest.approx(80.0)
    assert result["itl_p50"] == pytest.approx(100.0)
    assert result["request_throughput"] == pytest.approx(1.0)
    assert result["output_throughput"] == pytest.approx(3.5)
    assert result["total_token_throughput"] == pytest.approx(13.5)
    assert result["failed"] == 0


def test_one_token_requests_have_no_tpot_but_count_for_throughput() -> None:
    result = compute_records([record(0, 0.0, [0.5], tokens=1), record(1, 0.0, [0.1, 0.3], tokens=2)], duration=1.0)
    assert result["tpot_mean"] == pytest.approx(200.0)  # only the 2-token request has a TPOT
    assert result["output_throughput"] == pytest.approx(3.0)


def test_failures_are_counted_and_kept_out_of_latencies() -> None:
    records = [record(0, 0.0, [0.1, 0.2], tokens=2), record(1, 0.0, [], tokens=0, error="HTTP 500: boom")]
    result = compute_records(records, duration=1.0)
    assert result["failed"] == 1 and result["completed"] == 1
    assert result.errors == ["request 1: HTTP 500: boom"]
    assert result["ttft_mean"] == pytest.approx(100.0)


def test_goodput_counts_requests_meeting_every_slo() -> None:
    records = [record(0, 0.0, [0.1, 0.2], tokens=2), record(1, 0.0, [0.3, 0.9], tokens=2)]
    result = compute_records(records, duration=1.0, slo_ms={"ttft": 200, "tpot": 500})
    assert result["goodput"] == pytest.approx(1.0)  # request 1 misses both SLOs
    assert result["slo_attainment"] == pytest.approx(1 / len(records))


def test_send_delay_and_client_cost() -> None:
    late = RequestRecord(index=0, scheduled_at=1.0, sent_at=1.05, first_token_at=1.1, chunk_times=[1.1, 1.2],
                         output_tokens=2, prompt_tokens=1)
    result = compute_records([late], duration=1.0, client_cpu_s=0.002, loop_lag_mean_s=0.001, loop_lag_max_s=0.2)
    assert result["send_delay_p99"] == pytest.approx(50.0)
    assert result["client_cpu_us_per_token"] == pytest.approx(1000.0)
    assert not result.client_saturated
    assert compute_records([late], duration=1.0, client_cpu_s=0.95).client_saturated
    assert compute_records([late], duration=1.0, loop_lag_mean_s=0.02).client_saturated


def test_every_value_is_a_declared_metric() -> None:
    result = compute_records([record(0, 0.0, [0.1, 0.2], tokens=2)], duration=1.0)
    from pytest_vllm.server.telemetry import ServerTelemetry

    server_side = {"prefix_cache_hit_rate", *ServerTelemetry(samples=1).__dataclass_fields__} - {"samples"}
    beside_long_prompts = {n for n in METRICS if "prefill" in n or n.startswith("long_prompt")}
    # Not here: those only from a server's /metrics, Workload.long_prompts', a multi-turn run's
    # (tests/unit/test_conversations.py), slo_attainment (only with SLOs), a capacity search's capacity
    assert set(result.values) == (set(METRICS) - server_side - beside_long_prompts - MULTI_TURN_METRICS
                                  - {"slo_attainment", "capacity"})
    assert "slo_attainment" in compute_records([record(0, 0.0, [0.1, 0.2], tokens=2)], 1.0, slo_ms={"ttft": 50}).values
    interfered = prefill_interference([record(0, 0.0, [0.1, 0.2, 0.3], tokens=3)],
                                      [RequestRecord(0, 0.0, 0.0, 0.15, [0.15], prompt_tokens=10, output_tokens=1)])
    assert set(interfered) == beside_long_prompts


def test_prefill_interference_splits_the_streams_gaps_by_overlap_with_a_long_prefill() -> None:
    """Exact chunk times (a test double for what a real server cannot give): one stream ticks every
    50 ms except one 400 ms gap, which overlaps the long prompt's prefill window 1.0-1.5 s."""
    ticks = [0.05 * i for i in range(21)] + [1.4 + 0.05 * i for i in range(10)]  # 0-1.0 s, gap, 1.4-1.85 s
    stream = RequestRecord(0, 0.0, 0.0, 0.05, ticks, output_tokens=len(ticks), prompt_tokens=8)
    long = RequestRecord(0, 1.0, 1.0, 1.5, [1.5], prompt_tokens=1500, output_tokens=1)
    values = prefill_interference([stream], [long])
    assert values["prefill_overlapped_gaps"] == 3  # the 400 ms gap 1.0-1.4 s, then 1.4-1.45 and 1.45-1.5 s
    assert values["itl_max_during_prefill"] == pytest.approx(400.0)
    assert values["itl_p99_outside_prefill"] == pytest.approx(50.0)
    assert values["long_prompt_ttft_p50"] == pytest.approx(500.0)
    assert values["long_prompt_prefill_throughput"] == pytest.approx(3000.0)  # 1500 tokens in 0.5 s
    # a long prompt that failed opens no window: every gap is outside, and its own figures are absent
    failed = RequestRecord(0, 1.0, 1.0, None, [], error="HTTP 500")
    alone = prefill_interference([stream], [failed])
    assert alone["prefill_overlapped_gaps"] == 0 and "itl_p99_during_prefill" not in alone
    assert "long_prompt_ttft_p50" not in alone and alone["itl_p99_outside_prefill"] > 50.0


def test_a_run_records_its_prefix_cache_hit_share_only_where_counted() -> None:
    records = [record(0, 0.0, [0.1, 0.2], tokens=2)]
    counted = RunResult(records, 0.0, 1.0, prefix_cache=PrefixCacheCounts(hits=32.0, queries=1024.0))
    assert compute(counted).values["prefix_cache_hit_rate"] == pytest.approx(1 / 32)
    assert "prefix_cache_hit_rate" not in compute(RunResult(records, 0.0, 1.0)).values  # absent, never 0


def test_repeated_median_and_spread() -> None:
    runs = [compute_records([record(0, 0.0, [0.1, 0.2], tokens=2)], duration=d) for d in (1.0, 2.0, 4.0)]
    repeated = RepeatedResult(runs)
    assert repeated.median("output_throughput") == pytest.approx(1.0)
    assert repeated.spread("output_throughput") == pytest.approx((2.0 - 0.5) / 1.0)


def test_same_numbers_as_vllm_bench_serve() -> None:
    """Our definitions reproduce vllm.benchmarks.serve.calculate_metrics on the same outputs."""
    serve = pytest.importorskip("vllm.benchmarks.serve")
    from vllm.benchmarks.datasets.datasets import SampleRequest
    from vllm.benchmarks.lib.endpoint_request_func import RequestFuncOutput

    rng = random.Random(7)
    records, outputs, inputs = [], [], []
    for i in range(40):
        sent = rng.uniform(0, 5)
        n = rng.randint(1, 30)
        chunks, now = [], sent + rng.uniform(0.05, 0.5)
        for _ in range(n):
            chunks.append(now)
            now += rng.uniform(0.005, 0.05)
        rec = record(i, sent, chunks, tokens=n, prompt=rng.randint(5, 50))
        records.append(rec)
        outputs.append(RequestFuncOutput(success=True, latency=rec.e2el, output_tokens=n, ttft=rec.ttft,
                                         itl=[b - a for a, b in zip(chunks, chunks[1:])], prompt_len=rec.prompt_tokens,
                                         start_time=sent))
        inputs.append(SampleRequest(prompt="x", prompt_len=rec.prompt_tokens, expected_output_len=n))
    duration = 9.0
    slo = {"ttft": 300.0, "tpot": 30.0}
    theirs, _ = serve.calculate_metrics(inputs, outputs, duration, None, [50, 90, 95, 99], slo)
    ours = compute_records(records, duration=duration, slo_ms=slo)
    assert ours["request_throughput"] == pytest.approx(theirs.request_throughput)
    assert ours["output_throughput"] == pytest.approx(theirs.output_throughput)
    assert ours["total_token_throughput"] == pytest.approx(theirs.total_token_throughput)
    assert ours["goodput"] == pytest.approx(theirs.request_goodput)
    for metric in ("ttft", "tpot", "itl", "e2el"):
        assert ours[f"{metric}_mean"] == pytest.approx(getattr(theirs, f"mean_{metric}_ms"))
        assert ours[f"{metric}_std"] == pytest.approx(getattr(theirs, f"std_{metric}_ms"))
        assert ours[f"{metric}_p50"] == pytest.approx(getattr(theirs, f"median_{metric}_ms"))
        for p, value in getattr(theirs, f"percentiles_{metric}_ms"):
            assert ours[f"{metric}_p{int(p)}"] == pytest.approx(value), (metric, p)
