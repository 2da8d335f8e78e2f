"""Capacity probes against a server: a short single-stream calibration that warms the server and
sets the search's first rate, and open-loop probes at one rate each.

A probe's arrivals are Poisson gaps conditioned on the probe's span: the gaps are drawn as usual
(``arrival_offsets``) and scaled so that the arrivals span exactly (n - 1) / rate. Unconditioned,
the 8-30 requests of a short probe offer a rate ±20-35% off the one asked (the sd of a Poisson
count), and the search would bisect on the dice, not the server; conditioned, the arrivals keep
their bursts and the offered rate is the asked one, so a short achieved rate is the client's.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence

from pytest_vllm.load.client import RequestRecord
from pytest_vllm.load.runner import RunResult, Target, WorkloadSession, arrival_offsets
from pytest_vllm.load.workload import Workload

CALIBRATION_REQUESTS = 3


def paced_offsets(workload: Workload, count: int, repeat: int) -> list[float]:
    """``arrival_offsets`` scaled to span exactly (count - 1) / rate: the asked rate, bursts kept."""
    assert workload.request_rate is not None
    offsets = arrival_offsets(workload, count, repeat)
    if count < 2 or offsets[-1] <= 0:
        return offsets
    scale = (count - 1) / workload.request_rate / offsets[-1]
    return [offset * scale for offset in offsets]


def achieved_rate(records: Sequence[RequestRecord], rate: float) -> float:
    """The rate the client actually offered: ``rate`` scaled by the span of the sent requests'
    schedule over the span of their actual sends (``rate`` itself when it kept to the schedule).
    Measured against the schedule, not as (n - 1) / span, so that a probe stopped after a few
    sends still says whether the client was late (two Poisson sends say nothing about a rate)."""
    sent = sorted((r.scheduled_at, r.sent_at) for r in records if r.sent_at)  # a stopped probe's unsent left out
    if len(sent) < 2:
        return rate
    scheduled_span = sent[-1][0] - sent[0][0]
    sent_span = max(r[1] for r in sent) - min(r[1] for r in sent)
    if scheduled_span <= 0 or sent_span <= 0:
        return rate
    return rate * scheduled_span / sent_span


async def calibrate(target: Target, workload: Workload, say: Callable[[str], None] = lambda _: None) -> float:
    """The median end-to-end latency (s) of a few requests sent one at a time, after one warmup
    request: the server is warm for the probes, and the search's first rate follows from it."""
    single = workload.with_(name=f"{workload.name}-calibration", request_rate=None, concurrency=1,
                            num_requests=CALIBRATION_REQUESTS, repeats=1, warmup_requests=1)
    async with WorkloadSession(target, single, say) as session:
        await session.warm_up()
        run = await session.repetition(0)
    latencies = [r.e2el for r in run.records if r.ok and r.e2el is not None]
    return statistics.median(latencies) if latencies else 0.0


def missed_slo(record: RequestRecord, slo_ms: Mapping[str, float], output_len: int | None, now: float) -> bool:
    """Whether ``record`` has certainly missed an SLO by ``now`` (answered or not): it failed, its
    first token came (or is still missing) past the TTFT limit, it is past the E2EL limit, or its
    TPOT is past the limit (while streaming, with a known output length, the TPOT it can still
    reach is at least the time since its first token over the tokens after the first)."""
    if not record.sent_at:
        return False
    if record.error is not None:
        return True
    done = bool(record.output_tokens)
    ms = lambda seconds: seconds * 1000.0  # noqa: E731
    if "ttft" in slo_ms:
        first = record.first_token_at if record.first_token_at is not None else (None if done else now)
        if first is not None and ms(first - record.sent_at) > slo_ms["ttft"]:
            return True
    if "e2el" in slo_ms:
        end = record.chunk_times[-1] if done and record.chunk_times else now
        if ms(end - record.sent_at) > slo_ms["e2el"]:
            return True
    if "tpot" in slo_ms and record.first_token_at is not None:
        tokens = record.output_tokens if done else output_len
        end = record.chunk_times[-1] if done and record.chunk_times else now
        if tokens and tokens > 1 and ms(end - record.first_token_at) / (tokens - 1) > slo_ms["tpot"]:
            return True
    return False


def decided_failing(slo_ms: Mapping[str, float], good_fraction: float,
                    output_len: int | None) -> Callable[[list[RequestRecord]], bool]:
    """A probe's stop condition: more of its requests have missed an SLO than ``good_fraction``
    allows, so it fails whatever the rest do (an overloaded probe's queue then drains in seconds,
    not minutes: a 2x overloaded 16 req/s probe took 100 s to finish on the 2-core CPU host)."""
    def decided(records: list[RequestRecord]) -> bool:
        allowed = math.floor((1 - good_fraction) * len(records) + 1e-9)
        now = time.perf_counter()
        return sum(missed_slo(r, slo_ms, output_len, now) for r in records) > allowed

    return decided


async def probe(target: Target, workload: Workload, good_fraction: float,
                say: Callable[[str], None] = lambda _: None) -> RunResult:
    """One open-loop run of ``workload`` (one repetition, its own prompts, paced arrivals), stopped
    as soon as more requests missed ``workload.slo_ms`` than ``good_fraction`` allows."""
    output_len = workload.output_len if workload.ignore_eos else None
    async with WorkloadSession(target, workload, say, arrivals=paced_offsets) as session:
        return await session.repetition(0, stop_when=decided_failing(workload.slo_ms, good_fraction, output_len))
