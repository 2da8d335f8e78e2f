"""A lean streaming client: one request → one RequestRecord with every chunk's arrival time.

It speaks raw HTTP + SSE through one shared httpx connection pool instead of the openai SDK,
whose per-chunk object parsing costs more client CPU than the measurement can afford on a
busy client (vllm#39963, inference-perf#648). Timestamps follow ``vllm bench serve``: TTFT is
measured to the first chunk that carries a choice, the end to the last such chunk.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from pytest_vllm.load.prompts import Prompt
from pytest_vllm.load.workload import Workload


@dataclass
class RequestRecord:
    """What happened to one request; times are ``time.perf_counter()`` seconds."""

    index: int
    scheduled_at: float = 0.0  # when the scheduler meant to send it
    sent_at: float = 0.0  # when it was actually sent
    first_token_at: float | None = None
    chunk_times: list[float] = field(default_factory=list)  # every chunk carrying a choice
    prompt_tokens: int = 0
    output_tokens: int = 0  # from usage.completion_tokens
    error: str | None = None
    text: str = ""
    warmup: bool = False

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


def request_body(workload: Workload, model: str, prompt: Prompt) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": workload.output_len,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if workload.ignore_eos:
        body["ignore_eos"] = True  # vLLM extension: exact output lengths
    if workload.endpoint == "chat":
        body["messages"] = prompt.messages
    else:
        body["prompt"] = prompt.text
    return body


class StreamParser:
    """Turns SSE lines of one streaming response into a RequestRecord (shared by both clients)."""

    def __init__(self, record: RequestRecord, chat: bool) -> None:
        self.record = record
        self.chat = chat
        self.parts: list[str] = []

    def feed(self, line: str) -> bool:
        """Handle one line; True when the stream is over."""
        if not line.startswith("data: "):
            return False  # blank separators and SSE comments (pings)
        payload = line[6:]
        if payload == "[DONE]":
            return True
        now = time.perf_counter()
        data = json.loads(payload)
        record = self.record
        choices = data.get("choices")
        if choices:
            if record.first_token_at is None:
                record.first_token_at = now
            record.chunk_times.append(now)
            piece = choices[0]["delta"].get("content") if self.chat else choices[0].get("text")
            if piece:
                self.parts.append(piece)
        elif usage := data.get("usage"):
            record.output_tokens = int(usage.get("completion_tokens") or 0)
            record.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        if data.get("error"):
            record.error = f"error in stream: {data['error']}"
            return True
        return False

    def finish(self) -> None:
        record = self.record
        record.text = "".join(self.parts)
        if record.error:
            return
        if record.first_token_at is None:
            record.error = "the stream carried no token"
        elif not record.output_tokens:
            record.error = "the stream carried no usage (stream_options.include_usage ignored?)"


async def send_streaming(http: httpx.AsyncClient, path: str, body: dict[str, Any], record: RequestRecord) -> None:
    """Send one streaming request and fill ``record`` (errors land in ``record.error``)."""
    parser = StreamParser(record, chat=path.endswith("chat/completions"))
    record.sent_at = time.perf_counter()
    try:
        async with http.stream("POST", path, json=body) as response:
            if response.status_code != 200:
                detail = (await response.aread()).decode(errors="replace")[:500]
                record.error = f"HTTP {response.status_code}: {detail}"
                return
            async for line in response.aiter_lines():
                if parser.feed(line):
                    break
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        record.error = f"{type(exc).__name__}: {exc}"
        return
    parser.finish()


def send_streaming_sync(http: httpx.Client, path: str, body: dict[str, Any], record: RequestRecord) -> None:
    """The blocking twin of ``send_streaming`` (for pytest-benchmark, which times a plain call)."""
    parser = StreamParser(record, chat=path.endswith("chat/completions"))
    record.sent_at = time.perf_counter()
    try:
        with http.stream("POST", path, json=body) as response:
            if response.status_code != 200:
                record.error = f"HTTP {response.status_code}: {response.read().decode(errors='replace')[:500]}"
                return
            for line in response.iter_lines():
                if parser.feed(line):
                    break
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        record.error = f"{type(exc).__name__}: {exc}"
        return
    parser.finish()
