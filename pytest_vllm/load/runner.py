"""Drive a Workload against one server: warmup, closed or open loop, repetitions, progress.

Open-loop arrivals are scheduled on absolute times (start + offset), so a slow client shows up
as send delay instead of silently lowering the rate. The client's own CPU time and event-loop lag
are measured alongside, so a saturated client is reported as such, not blamed on the server.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import httpx

from pytest_vllm.load.client import PreparedRequest, RequestRecord, new_session, prepare, send_streaming
from pytest_vllm.load.host import HostCPUTimes, steal_share
from pytest_vllm.load.prompts import Prompt, PromptFactory
from pytest_vllm.load.workload import Workload
from pytest_vllm.server.handle import http_limits

T = TypeVar("T")
PROGRESS_EVERY = 10.0  # seconds between progress lines during a run
LAG_TICK = 0.01  # seconds between event-loop lag probes


@dataclass
class RunResult:
    """One repetition: its measured requests (warmup excluded) and the client's own costs."""

    records: list[RequestRecord]
    started_at: float
    ended_at: float
    client_cpu_s: float = 0.0
    loop_lag_max_s: float = 0.0
    loop_lag_mean_s: float = 0.0
    host_steal: float = 0.0  # fraction of the host's CPU time stolen by the hypervisor (load/host.py)
    requested_rate: float | None = None

    @property
    def duration(self) -> float:
        return self.ended_at - self.started_at

    @property
    def failures(self) -> list[RequestRecord]:
        return [r for r in self.records if not r.ok]


@dataclass
class WorkloadRuns:
    workload: Workload
    runs: list[RunResult] = field(default_factory=list)
    prompt_tokens: int = 0


def arrival_offsets(workload: Workload, count: int, repeat: int) -> list[float]:
    """Seconds after the start at which each request is due (open loop): gamma-distributed gaps
    with mean 1/rate; shape = burstiness (1 = Poisson, <1 burstier, >1 smoother)."""
    assert workload.request_rate is not None
    rng = random.Random(f"{workload.seed}-arrivals-{repeat}")
    shape = workload.burstiness
    scale = 1.0 / (workload.request_rate * shape)
    offsets, now = [], 0.0
    for _ in range(count):
        offsets.append(now)
        now += rng.gammavariate(shape, scale)
    return offsets


class _LagProbe:
    """Measures how late the event loop wakes up: a saturated client lags."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            due = time.perf_counter() + LAG_TICK
            await asyncio.sleep(LAG_TICK)
            self.samples.append(max(0.0, time.perf_counter() - due))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass


async def _closed_loop(session: aiohttp.ClientSession, url: str, requests: list[PreparedRequest], concurrency: int,
                       records: list[RequestRecord]) -> None:
    queue = iter(range(len(requests)))

    async def worker() -> None:
        for index in queue:
            records[index].scheduled_at = time.perf_counter()
            await send_streaming(session, url, requests[index], records[index])

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(requests)))))


async def _open_loop(session: aiohttp.ClientSession, url: str, requests: list[PreparedRequest], offsets: list[float],
                     max_concurrency: int | None, records: list[RequestRecord], start: float) -> None:
    gate = asyncio.Semaphore(max_concurrency) if max_concurrency else None

    async def one(index: int) -> None:
        due = start + offsets[index]
        records[index].scheduled_at = due
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if gate is None:
            await send_streaming(session, url, requests[index], records[index])
        else:
            async with gate:
                await send_streaming(session, url, requests[index], records[index])

    await asyncio.gather(*(one(i) for i in range(len(requests))))


async def _progress(label: str, records: list[RequestRecord], say: Callable[[str], None], start: float) -> None:
    while True:
        await asyncio.sleep(PROGRESS_EVERY)
        done = [r for r in records if r.chunk_times and (r.output_tokens or r.error)]
        failed = sum(1 for r in records if r.error)
        tokens = sum(r.output_tokens for r in done)
        elapsed = time.perf_counter() - start
        say(f"{label}: {len(done)}/{len(records)} done, {failed} failed, {tokens / max(elapsed, 1e-9):.1f} out tok/s, "
            f"{elapsed:.0f}s")


async def _heartbeat(label: str, say: Callable[[str], None], start: float) -> None:
    """A line every PROGRESS_EVERY seconds while a stage without a request count runs, so a
    stalled stage is named in the output instead of looking like a silent hang."""
    while True:
        await asyncio.sleep(PROGRESS_EVERY)
        say(f"{label}: still running, {time.perf_counter() - start:.0f}s")


async def _with_heartbeat(label: str, say: Callable[[str], None], stage: Coroutine[Any, Any, T]) -> T:
    beat = asyncio.create_task(_heartbeat(label, say, time.perf_counter()))
    try:
        return await stage
    finally:
        beat.cancel()


# Prompts built in this process, by server, tokenizer, prompt shape and count (see build_prompts).
_BUILT_PROMPTS: dict[tuple[object, ...], list[Prompt]] = {}
WARMUP_SEED_OFFSET = 1_000_003  # warmup prompts differ from the measured ones


def prompt_shape(workload: Workload) -> tuple[object, ...]:
    """The workload fields the prompts depend on (not concurrency, rate, output length or name)."""
    return workload.endpoint, workload.input_len, workload.shared_prefix_len, workload.seed


def forget_built_prompts() -> None:
    _BUILT_PROMPTS.clear()


async def build_prompts(url: str, model: str, workload: Workload, api_key: str = "EMPTY"
                        ) -> tuple[list[Prompt], list[Prompt]]:
    """The measured prompts and the (different) warmup prompts, from the server's tokenizer.

    Built once per server, tokenizer, prompt shape and count in this process: a session measures
    one shape on a server more than once (the highest concurrency of the throughput sweep, then
    the speedup pair), and a thousand exact-length prompts cost 10-20 s of /tokenize round trips.
    """
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=url, timeout=120, headers=headers, limits=http_limits(64)) as http:
        factory = PromptFactory(http, model)
        if workload.dataset:  # read from a file: nothing to save, and no tokenizer is asked
            return (await factory.build(workload, workload.num_requests),
                    await factory.build(workload, workload.warmup, seed_offset=WARMUP_SEED_OFFSET))
        server = (url, model, await factory.tokenizer_fingerprint(), prompt_shape(workload))
        built = []
        for count, seed_offset in ((workload.num_requests, 0), (workload.warmup, WARMUP_SEED_OFFSET)):
            key = (*server, count, seed_offset)
            if key not in _BUILT_PROMPTS:
                _BUILT_PROMPTS[key] = await factory.build(workload, count, seed_offset=seed_offset)
            built.append(list(_BUILT_PROMPTS[key]))
    return built[0], built[1]


async def run_workload_async(url: str, model: str, workload: Workload, api_key: str = "EMPTY",
                             say: Callable[[str], None] = lambda _: None, label: str = "") -> WorkloadRuns:
    """Warm up, then run ``workload.repeats`` measured repetitions on the same prompts."""
    label = label or workload.name
    prompts, warmup_prompts = await _with_heartbeat(f"{label} preparing prompts", say,
                                                    build_prompts(url, model, workload, api_key))
    requests = [prepare(workload, model, p) for p in prompts]
    result = WorkloadRuns(workload, prompt_tokens=sum(p.input_tokens for p in prompts))
    async with new_session(api_key) as session:
        warm_records = [RequestRecord(i, warmup=True) for i in range(len(warmup_prompts))]
        await _with_heartbeat(f"{label} warmup", say,
                              _closed_loop(session, url, [prepare(workload, model, p) for p in warmup_prompts],
                                           workload.concurrency or 1, warm_records))
        warm_errors = [r.error for r in warm_records if r.error]
        if warm_errors:
            say(f"{label}: {len(warm_errors)} warmup request(s) failed: {warm_errors[0]}")

        for repeat in range(workload.repeats):
            records = [RequestRecord(i) for i in range(len(requests))]
            probe = _LagProbe()
            probe.start()
            cpu_before = time.thread_time()
            host_before = HostCPUTimes.now()
            start = time.perf_counter()
            run_label = f"{label} run {repeat + 1}/{workload.repeats}"
            progress = asyncio.create_task(_progress(run_label, records, say, start))
            try:
                if workload.closed_loop:
                    await _closed_loop(session, url, requests, workload.concurrency or 1, records)
                else:
                    offsets = arrival_offsets(workload, len(requests), repeat)
                    await _open_loop(session, url, requests, offsets, workload.concurrency, records, start)
            finally:
                progress.cancel()
                await probe.stop()
            end = time.perf_counter()
            lags = probe.samples or [0.0]
            result.runs.append(RunResult(records=records, started_at=start, ended_at=end,
                                         client_cpu_s=time.thread_time() - cpu_before,
                                         loop_lag_max_s=max(lags), loop_lag_mean_s=sum(lags) / len(lags),
                                         host_steal=steal_share(host_before, HostCPUTimes.now()),
                                         requested_rate=workload.request_rate))
    return result


def event_loop() -> asyncio.Runner:
    """An event loop on uvloop where installed (as vLLM's own benchmark client uses): less client
    CPU per token than the default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    with event_loop() as runner:
        return runner.run(coroutine)


def run_workload(url: str, model: str, workload: Workload, api_key: str = "EMPTY",
                 say: Callable[[str], None] = lambda _: None, label: str = "") -> WorkloadRuns:
    """Synchronous entry point (for plain test functions)."""
    return run_async(run_workload_async(url, model, workload, api_key=api_key, say=say, label=label))
