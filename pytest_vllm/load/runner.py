"""Drive a Workload against one server (or two, interleaved): warmup, closed or open loop,
repetitions on prompt sets of their own, progress.

Open-loop arrivals are scheduled on absolute times (start + offset), so a slow client shows up
as send delay instead of silently lowering the rate. The client's own CPU time and event-loop lag
are measured alongside, so a saturated client is reported as such, not blamed on the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import httpx

from pytest_vllm.load.balancer import ROUND_ROBIN, Balancer, make_balancer
from pytest_vllm.load.client import HungServer, PreparedRequest, RequestRecord, new_session, prepare, send_streaming
from pytest_vllm.load.host import HostCPUTimes, steal_share
from pytest_vllm.load.prompts import Prompt, PromptFactory
from pytest_vllm.load.workload import Workload
from pytest_vllm.server.counters import PrefixCacheCounts, read_summed_prefix_cache
from pytest_vllm.server.handle import http_limits
from pytest_vllm.server.telemetry import ServerTelemetry, TelemetrySampler

T = TypeVar("T")
PROGRESS_EVERY = 10.0  # seconds between progress lines during a run
LAG_TICK = 0.01  # seconds between event-loop lag probes
STOP_CHECK_EVERY = 0.25  # seconds between checks of an open loop's stop condition
# The error of a request an open loop cancelled once its outcome was decided (a capacity probe).
STOPPED = "stopped: the run was already decided"


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
    prefix_cache: PrefixCacheCounts | None = None  # the server's prefix cache during the run (None: not exported)
    telemetry: ServerTelemetry | None = None  # the server's /metrics sampled during the run (None: not sampled)
    replica_telemetry: dict[str, ServerTelemetry] = field(default_factory=dict)  # by replica URL (a role of several)
    long_prompt_records: list[RequestRecord] = field(default_factory=list)  # Workload.long_prompts, sent beside

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
    prompt_tokens: int = 0  # of one repetition
    template_tokens: int = 0  # per prompt, shared by all of them (a chat template's frame)


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


async def _send(session: aiohttp.ClientSession, balancer: Balancer, request: PreparedRequest, record: RequestRecord,
                hung: HungServer | None = None) -> None:
    """One request to the replica the balancer picks; the record remembers which."""
    url = balancer.acquire()
    record.replica = url
    try:
        await send_streaming(session, url, request, record, hung)
    finally:
        balancer.release(url)


async def _closed_loop(session: aiohttp.ClientSession, balancer: Balancer, requests: list[PreparedRequest],
                       concurrency: int, records: list[RequestRecord], hung: HungServer | None = None) -> None:
    queue = iter(range(len(requests)))

    async def worker() -> None:
        for index in queue:
            records[index].scheduled_at = time.perf_counter()
            await _send(session, balancer, requests[index], records[index], hung)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(requests)))))


async def _open_loop(session: aiohttp.ClientSession, balancer: Balancer, requests: list[PreparedRequest],
                     offsets: list[float], max_concurrency: int | None, records: list[RequestRecord], start: float,
                     hung: HungServer | None = None) -> None:
    gate = asyncio.Semaphore(max_concurrency) if max_concurrency else None

    async def one(index: int) -> None:
        due = start + offsets[index]
        records[index].scheduled_at = due
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if gate is None:
            await _send(session, balancer, requests[index], records[index], hung)
        else:
            async with gate:
                await _send(session, balancer, requests[index], records[index], hung)

    await asyncio.gather(*(one(i) for i in range(len(requests))))


async def until_decided(run: Coroutine[Any, Any, None], records: list[RequestRecord],
                        decided: Callable[[list[RequestRecord]], bool] | None) -> None:
    """``run``, cancelled once ``decided`` holds for its records; the requests it had not answered
    then carry the error STOPPED."""
    if decided is None:
        await run
        return
    task = asyncio.ensure_future(run)
    while not task.done():
        await asyncio.wait({task}, timeout=STOP_CHECK_EVERY)
        if not task.done() and decided(records):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            for record in records:
                if record.error is None and not record.output_tokens:
                    record.error = STOPPED
            return
    task.result()


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


# Prompt sets built in this process, by tokenizer, workload shape, set and count (see build_prompt_sets).
_BUILT_PROMPTS: dict[tuple[object, ...], list[Prompt]] = {}
WARMUP_SET = "warmup"


def prompt_shape(workload: Workload) -> tuple[object, ...]:
    """The workload fields its prompts depend on (not concurrency, rate or output length)."""
    return (workload.name, workload.endpoint, workload.input_len, workload.shared_prefix_len, workload.seed,
            workload.prompt_seed)


def forget_built_prompts() -> None:
    _BUILT_PROMPTS.clear()


@dataclass
class PromptSets:
    """The warmup's prompts and each repetition's own: no two sets share a prompt."""

    warmup: list[Prompt]
    runs: list[list[Prompt]]
    template_tokens: int = 0  # tokens of a chat template's frame, the same in every prompt

    @property
    def prompt_tokens(self) -> int:
        return sum(p.input_tokens for p in self.runs[0]) if self.runs else 0


async def build_prompt_sets(url: str, model: str, workload: Workload, api_key: str = "EMPTY") -> PromptSets:
    """The warmup set and ``workload.repeats`` measured sets, from the server's tokenizer.

    Each set is built once per tokenizer in this process: the two servers of a pair (the same
    tokenizer) get the same prompts. Exact-length prompts cost several /tokenize round trips each
    (a thousand took 10-20 s on a GPU host), so the served checkpoint's tokenizer file counts
    instead where it matches the server's (prompts.PromptFactory.use_local_tokenizer).
    """
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=url, timeout=120, headers=headers, limits=http_limits(64)) as http:
        factory = PromptFactory(http, model)
        sizes = [(WARMUP_SET, workload.warmup)] + [(f"run{r + 1}", workload.num_requests)
                                                   for r in range(workload.repeats)]
        if workload.dataset:  # read from a file: nothing to save, and no tokenizer is asked
            built, start = [], 0
            for name, count in sizes:
                built.append(await factory.build(workload, count, name, start=start))
                start += count
            return PromptSets(built[0], built[1:])
        tokenizer = await factory.tokenizer_fingerprint()
        built = []
        for name, count in sizes:
            key = (tokenizer, prompt_shape(workload), name, count)
            if key not in _BUILT_PROMPTS:
                if factory.local is None:
                    await factory.use_local_tokenizer()
                _BUILT_PROMPTS[key] = await factory.build(workload, count, name)
            built.append(list(_BUILT_PROMPTS[key]))
        return PromptSets(built[0], built[1:], await factory.template_tokens(workload))


@dataclass(frozen=True)
class Target:
    """Where a workload goes: a server's URL, the model name to request, its API key, and how often
    to sample its /metrics during a repetition (seconds; None: not sampled). A role of several
    replicas lists them all in ``replicas`` (``url`` is the first: prompts are built there; /metrics
    is sampled on every one) and spreads requests over them by ``balance`` (load/balancer.py)."""

    url: str
    model: str
    api_key: str = "EMPTY"
    label: str = ""
    telemetry_interval: float | None = None
    replicas: tuple[str, ...] = ()
    balance: str = ROUND_ROBIN

    @property
    def urls(self) -> tuple[str, ...]:
        """Every replica the load goes to (the one ``url`` when no replicas are listed)."""
        return self.replicas or (self.url,)

    def sampler(self) -> TelemetrySampler | None:
        """A started /metrics sampler for one repetition (None when telemetry is off)."""
        if self.telemetry_interval is None:
            return None
        return TelemetrySampler(self.urls, self.api_key, self.telemetry_interval).start()


@dataclass
class LongPromptStream:
    """The prepared long prompts of a workload's ``long_prompts``: a warmup set and one set per repetition."""

    workload: Workload
    warmup: list[PreparedRequest]
    runs: list[list[PreparedRequest]]


class WorkloadSession:
    """One workload on one server: its prompt sets, its warmup and its measured repetitions.

    Every repetition reads the server's prefix cache counters before and after it, so a
    measurement can prove its prompts were not served from the cache.
    """

    def __init__(self, target: Target, workload: Workload, say: Callable[[str], None] = lambda _: None,
                 arrivals: Callable[[Workload, int, int], list[float]] | None = None) -> None:
        self.target = target
        # Open loop: when each request is due (``arrival_offsets``; a capacity probe paces its own).
        self.arrivals = arrivals or arrival_offsets
        self.workload = workload
        self.label = target.label or workload.name
        self._say = say
        self.sets: PromptSets | None = None
        self._requests: list[list[PreparedRequest]] = []
        self._long: LongPromptStream | None = None
        self._stack = contextlib.AsyncExitStack()
        self._session: aiohttp.ClientSession | None = None
        self._metrics: list[httpx.AsyncClient] = []  # one per replica
        self.balancer = make_balancer(target.balance, target.urls)  # one for the session: turns run on across runs
        self.hung = HungServer()  # once one request passes its deadline, the rest fail at once

    async def __aenter__(self) -> WorkloadSession:
        target, workload = self.target, self.workload
        self.sets = await _with_heartbeat(f"{self.label} preparing prompts", self._say,
                                          build_prompt_sets(target.url, target.model, workload, target.api_key))
        self._requests = [[prepare(workload, target.model, p) for p in run] for run in self.sets.runs]
        long = workload.long_prompt_workload()
        if long is not None:
            sets = await _with_heartbeat(f"{self.label} preparing long prompts", self._say,
                                         build_prompt_sets(target.url, target.model, long, target.api_key))
            self._long = LongPromptStream(long, [prepare(long, target.model, p) for p in sets.warmup],
                                          [[prepare(long, target.model, p) for p in run] for run in sets.runs])
        self._session = await self._stack.enter_async_context(new_session(target.api_key))
        self._metrics = [await self._stack.enter_async_context(httpx.AsyncClient(
            base_url=url, timeout=30, headers={"Authorization": f"Bearer {target.api_key}"})) for url in target.urls]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def warm_up(self) -> None:
        assert self.sets is not None and self._session is not None
        workload, target = self.workload, self.target
        records = [RequestRecord(i, warmup=True) for i in range(len(self.sets.warmup))]
        await _with_heartbeat(f"{self.label} warmup", self._say,
                              _closed_loop(self._session, self.balancer,
                                           [prepare(workload, target.model, p) for p in self.sets.warmup],
                                           workload.concurrency or 1, records, self.hung))
        if self._long is not None:  # one long prefill first: a first long shape may compile kernels
            long_records = [RequestRecord(i, warmup=True) for i in range(len(self._long.warmup))]
            await _closed_loop(self._session, self.balancer, self._long.warmup, 1, long_records, self.hung)
            records += long_records
        errors = [r.error for r in records if r.error]
        if errors:
            self._say(f"{self.label}: {len(errors)} warmup request(s) failed: {errors[0]}")

    async def prefix_cache(self) -> PrefixCacheCounts | None:
        """The prefix cache counters summed over the replicas (None when one does not export them)."""
        return await read_summed_prefix_cache(self._metrics)

    async def repetition(self, index: int,
                         stop_when: Callable[[list[RequestRecord]], bool] | None = None) -> RunResult:
        """Measured repetition ``index`` (0-based) on its own prompt set (open loop with ``stop_when``:
        the unanswered requests are cancelled once it holds for the records so far)."""
        assert self._session is not None
        workload = self.workload
        requests = self._requests[index]
        records = [RequestRecord(i) for i in range(len(requests))]
        cache_before = await self.prefix_cache()
        sampler = self.target.sampler()
        probe = _LagProbe()
        probe.start()
        cpu_before = time.thread_time()
        host_before = HostCPUTimes.now()
        start = time.perf_counter()
        run_label = f"{self.label} run {index + 1}/{workload.repeats}"
        progress = asyncio.create_task(_progress(run_label, records, self._say, start))
        long_records: list[RequestRecord] = []
        beside: asyncio.Task[None] | None = None
        if self._long is not None and workload.long_prompts is not None:
            long_requests = self._long.runs[index]
            long_records = [RequestRecord(i) for i in range(len(long_requests))]
            beside = asyncio.create_task(_open_loop(self._session, self.balancer, long_requests,
                                                    workload.long_prompts.offsets(), None, long_records, start,
                                                    self.hung))
        try:
            if workload.closed_loop:
                await _closed_loop(self._session, self.balancer, requests, workload.concurrency or 1, records,
                                   self.hung)
            else:
                offsets = self.arrivals(workload, len(requests), index)
                await until_decided(_open_loop(self._session, self.balancer, requests, offsets, workload.concurrency,
                                               records, start, self.hung), records, stop_when)
            end = time.perf_counter()  # the run is the requests': long prompts still in flight wait outside it
            if beside is not None:
                await beside
        finally:
            if beside is not None and not beside.done():
                beside.cancel()
            progress.cancel()
            await probe.stop()
        telemetry = sampler.stop() if sampler else None
        lags = probe.samples or [0.0]
        cpu = time.thread_time() - cpu_before
        steal = steal_share(host_before, HostCPUTimes.now())
        cache_after = await self.prefix_cache()
        cache = cache_after.since(cache_before) if cache_before and cache_after else None
        return RunResult(records=records, started_at=start, ended_at=end, client_cpu_s=cpu,
                         loop_lag_max_s=max(lags), loop_lag_mean_s=sum(lags) / len(lags), host_steal=steal,
                         requested_rate=workload.request_rate, prefix_cache=cache, telemetry=telemetry,
                         replica_telemetry=sampler.by_replica if sampler else {}, long_prompt_records=long_records)

    async def send(self, index: int, request: int, record: RequestRecord) -> None:
        """One request of repetition ``index``, on its own (single-stream measurements)."""
        assert self._session is not None
        record.scheduled_at = time.perf_counter()
        await _send(self._session, self.balancer, self._requests[index][request], record, self.hung)

    def runs(self, results: list[RunResult]) -> WorkloadRuns:
        assert self.sets is not None
        return WorkloadRuns(self.workload, results, self.sets.prompt_tokens, self.sets.template_tokens)


async def run_workload_async(url: str, model: str, workload: Workload, api_key: str = "EMPTY",
                             say: Callable[[str], None] = lambda _: None, label: str = "",
                             telemetry_interval: float | None = None, replicas: tuple[str, ...] = (),
                             balance: str = ROUND_ROBIN) -> WorkloadRuns:
    """Warm up, then run ``workload.repeats`` measured repetitions, each on its own prompts
    (``telemetry_interval``: sample the server's /metrics this often during each; ``replicas``: spread
    the requests over these servers by ``balance``)."""
    target = Target(url, model, api_key, label, telemetry_interval, replicas=replicas, balance=balance)
    async with WorkloadSession(target, workload, say) as session:
        await session.warm_up()
        return session.runs([await session.repetition(r) for r in range(workload.repeats)])


async def run_pair_async(reference: Target, candidate: Target, workload: Workload,
                         say: Callable[[str], None] = lambda _: None) -> tuple[WorkloadRuns, WorkloadRuns]:
    """The same workload on two servers, repetitions interleaved: reference then candidate, then
    candidate then reference, and so on, so that a host drifting during the measurement moves
    both sides of each pair alike (the gate compares per-pair ratios)."""
    async with WorkloadSession(reference, workload, say) as first, WorkloadSession(candidate, workload, say) as second:
        await first.warm_up()
        await second.warm_up()
        results: dict[WorkloadSession, list[RunResult]] = {first: [], second: []}
        for r in range(workload.repeats):
            for session in ((first, second) if r % 2 == 0 else (second, first)):
                results[session].append(await session.repetition(r))
        return first.runs(results[first]), second.runs(results[second])


class _SingleStream:
    """Repetitions of one request at a time, each request a blocking call of its own, so that
    pytest-benchmark can time them as rounds; counters and CPU are read between requests."""

    def __init__(self, loop: asyncio.Runner, session: WorkloadSession) -> None:
        self._loop = loop
        self._session = session
        workload = session.workload
        self._order = [(r, i) for r in range(workload.repeats) for i in range(workload.num_requests)]
        self._next = 0
        self.records = [[RequestRecord(i) for i in range(workload.num_requests)] for _ in range(workload.repeats)]
        self._opened: dict[int, tuple[PrefixCacheCounts | None, float, HostCPUTimes, TelemetrySampler | None]] = {}
        self.results: list[RunResult] = []

    @property
    def total(self) -> int:
        return len(self._order)

    def before_request(self) -> None:
        """Untimed (pytest-benchmark's ``setup``): closes the previous set, opens the next."""
        rep, index = self._order[self._next]
        if index == 0:
            if rep > 0:
                self._close(rep - 1)
            self._opened[rep] = (self._loop.run(self._session.prefix_cache()), time.thread_time(), HostCPUTimes.now(),
                                 self._session.target.sampler())

    def request(self) -> None:
        rep, index = self._order[self._next]
        self._next += 1
        self._loop.run(self._session.send(rep, index, self.records[rep][index]))

    def finish(self) -> list[RunResult]:
        if self.records:
            self._close(len(self.records) - 1)
        return self.results

    def _close(self, rep: int) -> None:
        cache_before, cpu_before, host_before, sampler = self._opened[rep]
        cpu, steal = time.thread_time() - cpu_before, steal_share(host_before, HostCPUTimes.now())
        telemetry = sampler.stop() if sampler else None
        cache_after = self._loop.run(self._session.prefix_cache())
        chunk = self.records[rep]
        end = max((r.chunk_times[-1] for r in chunk if r.chunk_times), default=chunk[-1].sent_at)
        self.results.append(RunResult(chunk, chunk[0].sent_at, end, client_cpu_s=cpu, host_steal=steal,
                                      prefix_cache=cache_after.since(cache_before)
                                      if cache_before and cache_after else None, telemetry=telemetry,
                                      replica_telemetry=sampler.by_replica if sampler else {}))


def run_single_stream(target: Target, workload: Workload, benchmark: Any = None,
                      say: Callable[[str], None] = lambda _: None) -> WorkloadRuns:
    """Sequential requests, one at a time, each repetition on its own prompts; with a
    pytest-benchmark ``benchmark`` fixture every request is one of its rounds (its setup, which
    reads the counters, untimed)."""
    workload = workload.with_(concurrency=1, request_rate=None)
    with event_loop() as loop:
        session = WorkloadSession(target, workload, say)
        loop.run(session.__aenter__())
        try:
            loop.run(session.warm_up())
            stream = _SingleStream(loop, session)
            if benchmark is not None:
                benchmark.pedantic(stream.request, setup=stream.before_request, rounds=stream.total, iterations=1)
            else:
                for _ in range(stream.total):
                    stream.before_request()
                    stream.request()
            return session.runs(stream.finish())
        finally:
            loop.run(session.__aexit__(None, None, None))


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
                 say: Callable[[str], None] = lambda _: None, label: str = "",
                 telemetry_interval: float | None = None, replicas: tuple[str, ...] = (),
                 balance: str = ROUND_ROBIN) -> WorkloadRuns:
    """Synchronous entry point (for plain test functions)."""
    return run_async(run_workload_async(url, model, workload, api_key=api_key, say=say, label=label,
                                        telemetry_interval=telemetry_interval, replicas=replicas, balance=balance))
