"""A request as a person replays it: pretty JSON and a curl line, both of the exact bytes sent.

A property failure prints these for every request of the failing example, so the failure can be
reproduced against the server (or any other) without pytest, hypothesis or this plugin.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from pytest_vllm import redact


def encode_body(body: Any) -> bytes:
    """The bytes sent for a JSON body: compact, UTF-8, and NaN/Infinity kept as Python writes them
    (an invalid-request strategy may send them on purpose; a strict server must reject them)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=True).encode("utf-8")


def pretty(body: Any) -> str:
    return json.dumps(body, ensure_ascii=False, indent=2, allow_nan=True)


def curl_line(url: str, payload: bytes | None, *, method: str = "POST", api_key: str | None = None,
              stream: bool = False, content_type: str | None = "application/json") -> str:
    """One shell line that sends the same request: ``curl -sS [-N] -X POST URL -H ... --data-binary ...``.

    A real API key is never written out: the line reads it from ``$VLLM_API_KEY`` (set it before
    pasting), so a failure report can be shared as it is."""
    parts = [shlex.quote(p) for p in ["curl", "-sS"] + (["-N"] if stream else []) + ["-X", method, url]]
    if content_type:
        parts += ["-H", shlex.quote(f"Content-Type: {content_type}")]
    if api_key and api_key in redact.NOT_SECRET:
        parts += ["-H", shlex.quote(f"Authorization: Bearer {api_key}")]
    elif api_key:
        parts += ["-H", '"Authorization: Bearer $VLLM_API_KEY"']
    if payload is not None:
        parts += ["--data-binary", shlex.quote(payload.decode("utf-8", errors="backslashreplace"))]
    return " ".join(parts)


def describe_request(url: str, body: Any, payload: bytes | None, *, method: str = "POST",
                     api_key: str | None = None, content_type: str | None = "application/json") -> str:
    """The text a failure report shows for one request."""
    stream = isinstance(body, dict) and body.get("stream") is True
    if body is not None:
        shown = pretty(body)
    elif payload is not None:
        shown = f"(raw body, not a JSON document) {payload.decode('utf-8', errors='backslashreplace')!r}"
    else:
        shown = "(no body)"
    return "\n".join([f"request {method} {url}", shown, "replay:",
                      curl_line(url, payload, method=method, api_key=api_key, stream=stream,
                                content_type=content_type)])
