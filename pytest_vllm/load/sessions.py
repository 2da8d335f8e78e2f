"""Multi-turn sessions: conversations whose every turn resends the whole history.

Chat and agent traffic is multi-turn: each turn's prompt is the history so far, the server's own
earlier replies included, plus a new user turn, so prefix reuse and growing prompts decide its
latency, which single-shot prompts never show (vllm#54783: ShareGPT sent as single prompts sees 0%
cache reuse). A MultiTurnWorkload runs ``concurrency`` conversations at once, each conversation's
turns in sequence with ``think_time_s`` between them, and appends to the history the reply the
server actually generated. Every repetition converses anew (PROMPT_SCHEME: conversations of its
own), else the prefix cache that the previous repetition filled would serve it.

How much of each turn's prompt the prefix cache served comes from
``usage.prompt_tokens_details.cached_tokens`` where the server reports it (vLLM: started with
``--enable-prompt-tokens-details``); otherwise from the server's prefix cache counters, read around
every turn when one conversation runs at a time, and only per repetition when several do (the
counters cannot tell concurrent turns apart).

A role of several replicas gets whole conversations, round robin by conversation: every turn of
one goes to the same replica, as a session-affine router sends them, so its history is cached
where it is resent (spread turn by turn, each replica would prefill histories it never saw). The
prefix cache counters are summed over the replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx

from pytest_vllm.errors import UsageError
from pytest_vllm.load.client import HungServer, RequestRecord, new_session, prepare, send_streaming
from pytest_vllm.load.host import HostCPUTimes, steal_share
from pytest_vllm.load.prompts import PARALLEL_PROMPTS, Prompt, PromptFactory
from pytest_vllm.load.runner import (  # the runner's own instruments, shared within the load package
    WARMUP_SET,
    RunResult,
    Target,
    WorkloadRuns,
    _LagProbe,
    _progress,
    _with_heartbeat,
    run_async,
)
from pytest_vllm.load.workload import Endpoint, Workload
from pytest_vllm.server.counters import PrefixCacheCounts, read_summed_prefix_cache
from pytest_vllm.server.handle import http_limits

# Per-turn metrics are declared for turns 1..MAX_TURNS (perf/metrics.py), so budgets on them parse
# before anything runs.
MAX_TURNS = 16
Message = dict[str, str]


@dataclass(frozen=True)
class MultiTurnWorkload(Workload):
    """Conversations, measured per turn. The Workload fields are read per conversation:
    ``num_requests`` conversations per repetition, ``concurrency`` of them at once (a closed loop),
    ``input_len`` tokens per synthetic user turn, ``output_len`` tokens per reply, ``warmup_requests``
    warmup conversations. ``dataset``: a JSONL file of ``{"messages": [...]}`` rows whose user turns
    are sent in order (at most ``turns``; a leading system message is kept, the assistant turns are
    replaced by the server's replies)."""

    endpoint: Endpoint = "chat"
    input_len: int = 32
    output_len: int = 16
    turns: int = 4
    think_time_s: float = 0.0  # between the reply to one turn and the next turn of the same conversation

    def __post_init__(self) -> None:
        super().__post_init__()
        problems = []
        if self.endpoint != "chat":
            problems.append(f"a conversation talks to the chat endpoint: endpoint='chat', not {self.endpoint!r}")
        if self.request_rate is not None:
            problems.append("conversations run as a closed loop: give concurrency (conversations at once), "
                            "not request_rate")
        if not 1 <= self.turns <= MAX_TURNS:
            problems.append(f"turns must be 1 to {MAX_TURNS} (per-turn metrics are declared up to it), "
                            f"not {self.turns}")
        if self.think_time_s < 0:
            problems.append(f"think_time_s must be 0 or more, not {self.think_time_s:g}")
        if self.shared_prefix_len:
            problems.append("shared_prefix_len does not apply: a conversation's history is its shared prefix "
                            "(set it to 0)")
        if problems:
            raise UsageError(f"multi-turn workload {self.name!r}: " + "; ".join(problems))

    def describe(self) -> str:
        source = (f"conversations of {Path(self.dataset).name}" if self.dataset
                  else f"user turns {self.input_len} tokens")
        think = f", think {self.think_time_s:g} s" if self.think_time_s else ""
        return (f"{self.num_requests} conversations x {self.turns} turns ({source}, replies {self.output_len} "
                f"tokens), {self.concurrency} at once{think}, {self.repeats} runs")


@dataclass
class Conversation:
    """One conversation: the user turns it will send, and the history sent and answered so far."""

    user_turns: list[str]
    history: list[Message] = field(default_factory=list)  # a system message, then user/assistant pairs
    replica: str = ""  # the URL every turn goes to ("": the target's first)

    def next_messages(self, turn: int) -> list[Message]:
        """What turn ``turn`` (0-based) sends: the whole history, then its own user turn."""
        return [*self.history, {"role": "user", "content": self.user_turns[turn]}]

    def add_reply(self, turn: int, reply: str) -> None:
        """Turn ``turn`` was answered with ``reply``: both join the history the next turn resends."""
        self.history += [{"role": "user", "content": self.user_turns[turn]}, {"role": "assistant", "content": reply}]


# Sends one turn's messages and fills its record (its text: the reply).
SendTurn = Callable[[list[Message], RequestRecord], Awaitable[None]]


async def converse(conversation: Conversation, records: list[RequestRecord], send: SendTurn,
                   think_time_s: float = 0.0) -> None:
    """The conversation's turns in sequence, one record each: every turn sends the history plus its
    user turn and appends the reply the server gave. A failed turn ends the conversation: the turns
    after it cannot be sent without its reply, and fail as not sent."""
    for turn, record in enumerate(records):
        if turn and think_time_s:
            await asyncio.sleep(think_time_s)
        record.scheduled_at = time.perf_counter()
        record.replica = conversation.replica
        await send(conversation.next_messages(turn), record)
        if not record.ok:
            for later in records[turn + 1:]:
                later.error = f"not sent: turn {turn + 1} of its conversation failed"
            return
        conversation.add_reply(turn, record.text)


async def converse_all(conversations: list[Conversation], records: list[list[RequestRecord]], send: SendTurn,
                       concurrency: int, think_time_s: float = 0.0) -> None:
    """``concurrency`` conversations at once; a conversation that ends makes room for the next."""
    queue = iter(range(len(conversations)))

    async def worker() -> None:
        for index in queue:
            await converse(conversations[index], records[index], send, think_time_s)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(conversations)))))


@dataclass
class ConversationRun(RunResult):
    """One repetition of a multi-turn workload: ``records`` holds every turn, conversation after
    conversation; ``turns`` the turn (0-based) of each record; ``turn_cache`` the prefix cache
    counters across each record's request where they were read around every turn (else empty)."""

    turns: list[int] = field(default_factory=list)
    turn_cache: list[PrefixCacheCounts | None] = field(default_factory=list)
    conversations: list[Conversation] = field(default_factory=list)  # their histories once answered


def load_conversations(path: Path, count: int, max_turns: int, seed: int, start: int = 0) -> list[Conversation]:
    """``count`` conversations from a JSONL file of ``{"messages": [...]}`` rows: each row's user turns
    in order (at most ``max_turns``), a system message before the first user turn kept as the start
    of the history, the assistant turns dropped (the server's replies take their place). Rows
    ``start``, ``start + 1``, ... of a seeded permutation, cycling when the file has fewer rows."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            messages = json.loads(line).get("messages")
        except (ValueError, AttributeError) as exc:
            raise UsageError(f"{path}:{number}: not a JSON object ({exc})") from None
        if not isinstance(messages, list) or not all(isinstance(m, dict) and "content" in m for m in messages):
            raise UsageError(f"{path}:{number}: a conversation row needs \"messages\": a list of "
                             "{\"role\", \"content\"} objects")
        users = [str(m["content"]) for m in messages if m.get("role") == "user"]
        if not users:
            raise UsageError(f"{path}:{number}: the conversation has no user turn to send")
        first_user = next(i for i, m in enumerate(messages) if m.get("role") == "user")
        system = [{"role": "system", "content": str(m["content"])} for m in messages[:first_user]
                  if m.get("role") == "system"]
        rows.append((users[:max_turns], system))
    if not rows:
        raise UsageError(f"{path} holds no conversations")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    picked = [rows[order[(start + i) % len(rows)]] for i in range(count)]
    return [Conversation(list(users), [dict(m) for m in system]) for users, system in picked]


async def build_conversations(factory: PromptFactory, workload: MultiTurnWorkload, count: int, conversation_set: str,
                              start: int = 0) -> list[Conversation]:
    """``count`` conversations of the set ``conversation_set`` ("warmup", "run1", ...): synthetic user
    turns of ``input_len`` tokens each, seeded by the workload's name, seeds, the set, the
    conversation and the turn (no two sets share a turn), or dataset rows from ``start`` on."""
    if workload.dataset:
        return load_conversations(Path(workload.dataset), count, workload.turns,
                                  workload.seed + 7919 * workload.prompt_seed, start)
    limit = asyncio.Semaphore(PARALLEL_PROMPTS)

    async def user_turn(conversation: int, turn: int) -> str:
        rng = random.Random(f"{workload.name}-{workload.seed}-{workload.prompt_seed}-{conversation_set}-"
                            f"{conversation}-{turn}")
        async with limit:
            return await factory.text_of_length(rng, workload.input_len)

    texts = await asyncio.gather(*(user_turn(c, t) for c in range(count) for t in range(workload.turns)))
    return [Conversation(list(texts[c * workload.turns:(c + 1) * workload.turns])) for c in range(count)]


class ConversationSession:
    """One multi-turn workload on one server: its conversation sets, warmup and repetitions.

    The warmup also finds out where the cached share comes from: the usage of the server's replies
    when it reports ``cached_tokens``, else its prefix cache counters (around every turn when
    ``concurrency`` is 1, else per repetition only, which it says)."""

    def __init__(self, target: Target, workload: MultiTurnWorkload,
                 say: Callable[[str], None] = lambda _: None) -> None:
        self.target = target
        self.workload = workload
        self.label = target.label or workload.name
        self._say = say
        self._sets: list[list[Conversation]] = []  # the warmup's, then each repetition's
        self.template_tokens = 0
        self.usage_reports_cache = False
        self.counters_per_turn = False
        self._stack = contextlib.AsyncExitStack()
        self._session: aiohttp.ClientSession | None = None
        self._http: httpx.AsyncClient | None = None
        self._metrics: list[httpx.AsyncClient] = []  # one per replica
        self._last_counts: PrefixCacheCounts | None = None
        self.hung = HungServer()

    async def __aenter__(self) -> ConversationSession:
        target, workload = self.target, self.workload
        self._http = await self._stack.enter_async_context(httpx.AsyncClient(
            base_url=target.url, timeout=120, headers={"Authorization": f"Bearer {target.api_key}"},
            limits=http_limits(PARALLEL_PROMPTS)))
        factory = PromptFactory(self._http, target.model)
        if not workload.dataset:
            await factory.use_local_tokenizer()
        sizes = [(WARMUP_SET, workload.warmup)] + [(f"run{r + 1}", workload.num_requests)
                                                   for r in range(workload.repeats)]
        start = 0
        for name, count in sizes:
            self._sets.append(await _with_heartbeat(f"{self.label} preparing conversations", self._say,
                                                    build_conversations(factory, workload, count, name, start)))
            start += count
        self.template_tokens = await factory.template_tokens(workload.with_(dataset=None))
        urls = target.urls
        for conversations in self._sets:
            for number, conversation in enumerate(conversations):
                conversation.replica = urls[number % len(urls)]
        self._metrics = [self._http] + [await self._stack.enter_async_context(httpx.AsyncClient(
            base_url=url, timeout=30, headers={"Authorization": f"Bearer {target.api_key}"})) for url in urls[1:]]
        self._session = await self._stack.enter_async_context(new_session(target.api_key))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def prefix_cache(self) -> PrefixCacheCounts | None:
        """The prefix cache counters summed over the replicas (None when one does not export them)."""
        return await read_summed_prefix_cache(self._metrics)

    def _sender(self, counted: dict[int, PrefixCacheCounts | None] | None) -> SendTurn:
        """Sends a turn to the server; with ``counted``, reads the counters around it (one
        conversation at a time: nothing else runs between two readings)."""
        assert self._session is not None
        session, target, workload = self._session, self.target, self.workload

        async def send(messages: list[Message], record: RequestRecord) -> None:
            request = prepare(workload, target.model, Prompt(None, messages, 0))
            url = record.replica or target.url
            record.replica = url
            if counted is None:
                await send_streaming(session, url, request, record, self.hung)
                return
            before = self._last_counts or await self.prefix_cache()
            await send_streaming(session, url, request, record, self.hung)
            self._last_counts = await self.prefix_cache()
            counted[id(record)] = self._last_counts.since(before) if before and self._last_counts else None

        return send

    def _records(self, conversations: list[Conversation], warmup: bool = False) -> list[list[RequestRecord]]:
        return [[RequestRecord(0, warmup=warmup) for _ in c.user_turns] for c in conversations]

    async def warm_up(self) -> None:
        conversations = self._sets[0]
        records = self._records(conversations, warmup=True)
        await _with_heartbeat(f"{self.label} warmup", self._say,
                              converse_all(conversations, records, self._sender(None), self.workload.concurrency or 1,
                                           self.workload.think_time_s))
        answered = [r for turns in records for r in turns if r.ok]
        if len(answered) < sum(len(turns) for turns in records):
            failed = next(r.error for turns in records for r in turns if r.error)
            self._say(f"{self.label}: a warmup turn failed: {failed}")
        self.usage_reports_cache = bool(answered) and all(r.cached_tokens is not None for r in answered)
        if self.usage_reports_cache:
            return
        counters = await self.prefix_cache()
        self.counters_per_turn = counters is not None and (self.workload.concurrency or 1) == 1
        if self.counters_per_turn:
            self._say(f"{self.label}: the server reports no usage.prompt_tokens_details.cached_tokens (vLLM: "
                      "--enable-prompt-tokens-details); the cached share of each turn comes from its prefix cache "
                      "counters, read around every turn")
        else:
            self._say(f"{self.label}: the server reports no usage.prompt_tokens_details.cached_tokens (vLLM: "
                      "--enable-prompt-tokens-details) and runs several conversations at once: the cached share "
                      "is per repetition only" + ("" if counters else " (and it exports no prefix cache counters)"))

    async def repetition(self, index: int) -> ConversationRun:
        """Measured repetition ``index`` (0-based) on conversations of its own."""
        workload = self.workload
        conversations = self._sets[index + 1]
        records = self._records(conversations)
        flat = [r for turns in records for r in turns]
        for number, record in enumerate(flat):
            record.index = number
        counted: dict[int, PrefixCacheCounts | None] | None = {} if self.counters_per_turn else None
        self._last_counts = None
        cache_before = await self.prefix_cache()
        sampler = self.target.sampler()
        probe = _LagProbe()
        probe.start()
        cpu_before, host_before = time.thread_time(), HostCPUTimes.now()
        start = time.perf_counter()
        progress = asyncio.create_task(_progress(f"{self.label} run {index + 1}/{workload.repeats}", flat,
                                                 self._say, start))
        try:
            await converse_all(conversations, records, self._sender(counted), workload.concurrency or 1,
                               workload.think_time_s)
        finally:
            progress.cancel()
            await probe.stop()
        end = time.perf_counter()
        telemetry = sampler.stop() if sampler else None
        lags = probe.samples or [0.0]
        cpu, steal = time.thread_time() - cpu_before, steal_share(host_before, HostCPUTimes.now())
        cache_after = await self.prefix_cache()
        return ConversationRun(
            records=flat, started_at=start, ended_at=end, client_cpu_s=cpu, loop_lag_max_s=max(lags),
            loop_lag_mean_s=sum(lags) / len(lags), host_steal=steal,
            prefix_cache=cache_after.since(cache_before) if cache_before and cache_after else None,
            telemetry=telemetry, turns=[turn for turns in records for turn in range(len(turns))],
            turn_cache=[counted.get(id(r)) for r in flat] if counted is not None else [],
            conversations=conversations)


async def run_conversations_async(target: Target, workload: MultiTurnWorkload,
                                  say: Callable[[str], None] = lambda _: None) -> WorkloadRuns:
    """Warm up, then ``workload.repeats`` measured repetitions, each on conversations of its own."""
    async with ConversationSession(target, workload, say) as session:
        await session.warm_up()
        runs: list[RunResult] = [await session.repetition(r) for r in range(workload.repeats)]
        first = runs[0].records if runs else []
        return WorkloadRuns(workload, runs, sum(r.prompt_tokens for r in first), session.template_tokens)


def run_conversations(target: Target, workload: MultiTurnWorkload,
                      say: Callable[[str], None] = lambda _: None) -> WorkloadRuns:
    """Synchronous entry point (for plain test functions and ``vllm_bench.run``)."""
    return run_async(run_conversations_async(target, workload, say))
