"""Raw HTTP exchanges with a server under test, kept for replay.

The openai SDK parses leniently (malformed JSON, wrong types and missing fields pass), so the
conformance checks talk plain HTTP through httpx and keep the exact bytes: the request as sent
(for the JSON + curl replay of a failure) and the response as received (JSON parsed strictly:
``NaN``/``Infinity`` are not JSON; a server that sends them is non-conformant).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from pytest_vllm.conformance.replay import describe_request, encode_body
from pytest_vllm.server.handle import http_limits

DEFAULT_TIMEOUT = 120.0


class StrictJSONError(ValueError):
    """The text is not JSON as RFC 8259 defines it."""


def _reject_constant(name: str) -> Any:
    raise StrictJSONError(f"{name} is not valid JSON")


def loads_strict(text: str) -> Any:
    """``json.loads`` without Python's extensions (NaN, Infinity, -Infinity)."""
    return json.loads(text, parse_constant=_reject_constant)


@dataclass(frozen=True)
class SSEEvent:
    """One server-sent event: its ``data`` lines joined by newlines, and its ``event`` name if any."""

    data: str
    event: str | None = None


def parse_sse(text: str) -> list[SSEEvent]:
    """Events of an ``text/event-stream`` body (WHATWG HTML, "Interpreting an event stream")."""
    events: list[SSEEvent] = []
    data: list[str] = []
    name: str | None = None
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if not line:
            if data:
                events.append(SSEEvent("\n".join(data), name))
            data, name = [], None
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if key == "data":
            data.append(value)
        elif key == "event":
            name = value
    if data:
        events.append(SSEEvent("\n".join(data), name))
    return events


@dataclass
class Exchange:
    """One request and what came back."""

    method: str
    url: str
    body: Any  # the JSON document sent, or None for a raw body
    payload: bytes | None  # the exact bytes sent
    content_type: str | None
    api_key: str | None
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes = b""
    text: str = ""
    elapsed: float = 0.0
    transport_error: str | None = None  # connection reset, timeout: no HTTP answer at all
    dropped_connection: str | None = None  # the pooled connection was gone: sent again on a new one

    @property
    def utf8(self) -> bool:
        """Whether the body is valid UTF-8 (JSON text exchanged between systems must be, RFC 8259 §8.1)."""
        try:
            self.content.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return True

    @property
    def streamed(self) -> bool:
        return "text/event-stream" in self.headers.get("content-type", "")

    def json(self) -> Any:
        """The body as strict JSON; raises StrictJSONError / ValueError when it is not."""
        return loads_strict(self.text)

    def events(self) -> list[SSEEvent]:
        return parse_sse(self.text)

    def describe(self) -> str:
        return describe_request(self.url, self.body, self.payload, method=self.method, api_key=self.api_key,
                                content_type=self.content_type)

    def summary(self) -> str:
        if self.transport_error:
            return f"no HTTP response: {self.transport_error}"
        body = self.text if len(self.text) <= 2000 else self.text[:2000] + f"... ({len(self.text)} chars)"
        return f"HTTP {self.status} ({self.headers.get('content-type', 'no content-type')}): {body}"


class Probe:
    """Sends requests to one server and remembers those of the current example for replay."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers, limits=http_limits())
        self.history: list[Exchange] = []

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def post(self, path: str, body: Any) -> Exchange:
        """POST a JSON document (serialized by ``replay.encode_body``, so the replay is byte-exact)."""
        return self.send("POST", path, body=body, payload=encode_body(body), content_type="application/json")

    def post_raw(self, path: str, payload: bytes, content_type: str | None = "application/json") -> Exchange:
        return self.send("POST", path, body=None, payload=payload, content_type=content_type)

    def get(self, path: str) -> Exchange:
        return self.send("GET", path, body=None, payload=None, content_type=None)

    def send(self, method: str, path: str, *, body: Any, payload: bytes | None, content_type: str | None) -> Exchange:
        """Any request; ``path`` may carry a query string (it is part of the replayed URL)."""
        exchange = Exchange(method, f"{self.base_url}{path}", body, payload, content_type, self.api_key)
        self.history.append(exchange)
        headers = {"Content-Type": content_type} if content_type else {}
        start = time.perf_counter()
        try:
            try:
                response = self._http.request(method, path, content=payload, headers=headers)
            except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                # The server closed the pooled connection without saying so (no 'Connection:
                # close'): the request never reached it. Send it once more on a new connection, as
                # HTTP clients do, and keep the finding for the property to judge.
                exchange.dropped_connection = f"{type(exc).__name__}: {exc}"
                response = self._http.request(method, path, content=payload, headers=headers)
        except httpx.HTTPError as exc:
            exchange.transport_error = f"{type(exc).__name__}: {exc}"
        else:
            exchange.status = response.status_code
            exchange.headers = {k.lower(): v for k, v in response.headers.items()}
            exchange.content = response.content
            exchange.text = response.content.decode("utf-8", errors="replace")
        exchange.elapsed = time.perf_counter() - start
        return exchange

    def replay(self) -> str:
        """Every request of the current example, as JSON and as a curl line."""
        return "\n\n".join(e.describe() for e in self.history)
