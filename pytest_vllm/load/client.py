"""A lean streaming client: one request → one RequestRecord with every chunk's arrival time.

Why not the openai SDK or httpx: a load client's own CPU per token decides how much load it can
drive before it, not the server, becomes the bottleneck (vllm#39963, inference-perf#648). This
client speaks raw HTTP through aiohttp's C parser and one shared connection pool, sends request
bodies encoded once in advance, splits SSE events on bytes, and decodes them with msgspec (or
the standard json module where msgspec is missing). Timestamps follow ``vllm bench serve``: TTFT
to the first event carrying a choice, the end at the last such event.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from pytest_vllm.load.prompts import Prompt
from pytest_vllm.load.workload import Workload
from pytest_vllm.server.handle import IDLE_CONNECTION_EXPIRY_S

_decode: Callable[[bytes], Any]
try:  # msgspec ships with vLLM; it decodes SSE payloads several times faster than json
    from msgspec.json import decode as _decode
except ImportError:  # pragma: no cover - plain json works, only slower
    _decode = json.loads

_DATA = b"data: "
_DONE = b"[DONE]"
# A request's total deadline: PREFILL_ALLOWANCE_S + max output tokens x PER_TOKEN_BOUND_S. Measured
# on the slowest profile (CPU, 2 cores): TPOT p50 26-30 ms at concurrency 4 and TTFT about 1 s
# (README); 2 s per token is ~70x that, room for a loaded host and deep queues, and the 60 s
# allowance covers prefill and queueing behind an open loop's backlog. So a 64-token request
# that has not finished after 188 s is taken as hung: minutes, not the 900 s per silent read
# (and hours per run) of before.
PREFILL_ALLOWANCE_S = 60.0
PER_TOKEN_BOUND_S = 2.0
CONNECT_TIMEOUT_S = 30.0


def request_deadline(workload: Workload) -> float:
    """Seconds one request of ``workload`` may take in all before it is failed as hung."""
    return PREFILL_ALLOWANCE_S + workload.output_len * PER_TOKEN_BOUND_S


@dataclass
class RequestRecord:
    """What happened to one request; times are ``time.perf_counter()`` seconds."""

    index: int
    scheduled_at: float = 0.0  # when the scheduler meant to send it
    sent_at: float = 0.0  # when it was actually sent
    first_token_at: float | None = None
    chunk_times: list[float] = field(default_factory=list)  # every event carrying a choice
    prompt_tokens: int = 0
    output_tokens: int = 0  # from usage.completion_tokens
    # usage.prompt_tokens_details.cached_tokens: prompt tokens the server's prefix cache served (None:
    # not reported; vLLM reports it only when started with --enable-prompt-tokens-details)
    cached_tokens: int | None = None
    error: str | None = None
    text: str = ""
    warmup: bool = False
    replica: str = ""  # the URL of the replica that served it (load/balancer.py)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.sent_at

    @property
    def e2el(self) -> float | None:
        return self.chunk_times[-1] - self.sent_at if self.chunk_times else None

    @property
    def send_delay(self) -> float:
        return self.sent_at - self.scheduled_at


@dataclass(frozen=True)
class PreparedRequest:
    """A request ready to send: the endpoint path and its JSON body, encoded once."""

    path: str
    body: bytes
    chat: bool
    deadline_s: float = PREFILL_ALLOWANCE_S + PER_TOKEN_BOUND_S  # total, see request_deadline


def prepare(workload: Workload, model: str, prompt: Prompt) -> PreparedRequest:
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": workload.output_len,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if workload.ignore_eos:
        body["ignore_eos"] = True  # vLLM extension: exact output lengths
    chat = workload.endpoint == "chat"
    if chat:
        body["messages"] = prompt.messages
    else:
        body["prompt"] = prompt.text
    path = "/v1/chat/completions" if chat else "/v1/completions"
    return PreparedRequest(path, json.dumps(body).encode(), chat, request_deadline(workload))


class StreamParser:
    """Splits an SSE byte stream into events and fills a RequestRecord."""

    def __init__(self, record: RequestRecord, chat: bool) -> None:
        self.record = record
        self.chat = chat
        self.parts: list[str] = []
        self._buffer = b""
        self.done = False

    def feed(self, data: bytes, now: float) -> None:
        """Handle bytes that arrived at ``now``; complete events only, the rest waits for more."""
        buffer = self._buffer + data
        lines = buffer.split(b"\n")
        self._buffer = lines.pop()
        record = self.record
        for line in lines:
            if not line.startswith(_DATA):
                continue  # blank separators and SSE comments (pings)
            payload = line[6:].rstrip(b"\r")
            if payload == _DONE:
                self.done = True
                return
            event = _decode(payload)
            choices = event.get("choices")
            if choices:
                if record.first_token_at is None:
                    record.first_token_at = now
                record.chunk_times.append(now)
                choice = choices[0]
                piece = (choice.get("delta") or {}).get("content") if self.chat else choice.get("text")
                if piece:
                    self.parts.append(piece)
            elif usage := event.get("usage"):
                record.output_tokens = int(usage.get("completion_tokens") or 0)
                record.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                details = usage.get("prompt_tokens_details") or {}
                if details.get("cached_tokens") is not None:
                    record.cached_tokens = int(details["cached_tokens"])
            if event.get("error"):
                record.error = f"error in stream: {event['error']}"
                self.done = True
                return

    def finish(self) -> None:
        record = self.record
        record.text = "".join(self.parts)
        if record.error:
            return
        if record.first_token_at is None:
            record.error = "the stream carried no token"
        elif not record.output_tokens:
            record.error = "the stream carried no usage (stream_options.include_usage ignored?)"


@dataclass
class HungServer:
    """Set when a request passed its total deadline: the server is then taken as hung, and the
    requests after it fail at once instead of each waiting out a deadline of its own."""

    reason: str | None = None


async def send_streaming(session: aiohttp.ClientSession, base_url: str, request: PreparedRequest,
                         record: RequestRecord, hung: HungServer | None = None) -> None:
    """Send one streaming request and fill ``record`` (errors land in ``record.error``); it may
    take ``request.deadline_s`` in all."""
    parser = StreamParser(record, request.chat)
    clock = time.perf_counter
    record.sent_at = clock()
    if hung is not None and hung.reason:
        record.error = f"not sent: {hung.reason}"
        return
    timeout = aiohttp.ClientTimeout(total=request.deadline_s, sock_connect=CONNECT_TIMEOUT_S)
    try:
        async with session.post(base_url + request.path, data=request.body, timeout=timeout,
                                headers={"Content-Type": "application/json"}) as response:
            if response.status != 200:
                detail = (await response.read()).decode(errors="replace")[:500]
                record.error = f"HTTP {response.status}: {detail}"
                return
            async for data in response.content.iter_any():
                parser.feed(data, clock())
                if parser.done:
                    break
    except (aiohttp.ClientError, ValueError, KeyError, AttributeError) as exc:
        record.error = f"{type(exc).__name__}: {exc}"
        return
    except TimeoutError:  # the total deadline (connect and read timeouts are ClientErrors)
        record.error = (f"no complete answer within its total deadline of {request.deadline_s:g} s "
                        f"({PREFILL_ALLOWANCE_S:.0f} s + {PER_TOKEN_BOUND_S:g} s per output token): the server hangs")
        if hung is not None:
            hung.reason = f"an earlier request passed its total deadline of {request.deadline_s:g} s (server hung)"
        return
    parser.finish()


def new_session(api_key: str = "EMPTY", limit: int = 0) -> aiohttp.ClientSession:
    """One shared connection pool for a whole run (``limit=0``: as many connections as requests)."""
    connector = aiohttp.TCPConnector(limit=limit, ttl_dns_cache=300, force_close=False,
                                     keepalive_timeout=IDLE_CONNECTION_EXPIRY_S)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S)  # per request: send_streaming
    return aiohttp.ClientSession(connector=connector, timeout=timeout,
                                 headers={"Authorization": f"Bearer {api_key}"})
