"""Schemathesis over the server's own ``/openapi.json``, for the endpoints no property covers by hand.

Optional: it needs ``schemathesis`` (``pip install 'pytest-vllm[openapi]'``); the property says so in
its skip reason otherwise. Only side-effect-free, cheap operations are exercised (``SAFE``): the
tokenizer endpoints, model listing, version and health. Generation endpoints have their own
properties, and operations that change the server (``/scale_elastic_ep``, ``/load``...) are never
called. Requests go through the conformance ``Probe``, so a failure replays as JSON + curl like
any other; the check is schemathesis's ``not_a_server_error`` plus strict JSON for 2xx bodies.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from pytest_vllm.conformance.deviations import Deviation
from pytest_vllm.conformance.probe import Exchange, Probe, StrictJSONError

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

# (method, path): cheap, read-only, and not covered by the hand-written properties.
SAFE = frozenset({("GET", "/v1/models"), ("GET", "/version"), ("GET", "/health"), ("GET", "/ping"),
                  ("POST", "/tokenize"), ("POST", "/detokenize")})


@dataclass(frozen=True)
class Request:
    """A generated request, in the form the probe sends."""

    method: str
    path: str  # with its query string
    body: Any  # a JSON document, or None
    label: str  # "POST /tokenize"


def operations(probe: Probe, safe: frozenset[tuple[str, str]] = SAFE) -> tuple[list[Any], str | None]:
    """(schemathesis operations of ``safe`` the server documents, a reason when there are none)."""
    import schemathesis
    from schemathesis.core.result import Ok

    exchange = probe.get("/openapi.json")
    probe.history.clear()
    if exchange.status != 200:
        return [], f"GET /openapi.json answered HTTP {exchange.status}"
    try:
        schema = schemathesis.openapi.from_dict(exchange.json())
    except (ValueError, StrictJSONError) as exc:
        return [], f"/openapi.json is not a usable OpenAPI document: {exc}"
    found = []
    for result in schema.get_all_operations():
        if isinstance(result, Ok):
            operation = result.ok()
            if (operation.method.upper(), operation.path) in safe:
                found.append(operation)
    return found, None if found else "the server documents none of " + ", ".join(f"{m} {p}" for m, p in sorted(safe))


def strategy(found: Sequence[Any], model: str) -> SearchStrategy[Request]:
    """Valid and invalid (schemathesis's negative mode) requests of the given operations."""
    from hypothesis import strategies as st
    from schemathesis import GenerationMode

    def to_request(case: Any) -> Request:
        body = case.body if _has_body(case) else None
        if isinstance(body, dict) and "model" in body and isinstance(body["model"], str):
            body = {**body, "model": model}  # a valid request names the served model
        query = f"?{urlencode(case.query, doseq=True)}" if case.query else ""
        return Request(case.method.upper(), f"{case.formatted_path}{query}", body,
                       f"{case.method.upper()} {case.operation.path}")

    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    return st.one_of([op.as_strategy(generation_mode=mode).map(to_request) for op in found for mode in modes])


def _has_body(case: Any) -> bool:
    from schemathesis.core import NotSet

    return not isinstance(case.body, NotSet)


def send(probe: Probe, request: Request) -> Exchange:
    if request.body is None:
        return probe.send(request.method, request.path, body=None, payload=None, content_type=None)
    if isinstance(request.body, (bytes, bytearray)):  # negative mode: a body that is not JSON
        return probe.send(request.method, request.path, body=None, payload=bytes(request.body),
                          content_type="application/json")
    return probe.send(request.method, request.path, body=request.body,
                      payload=json.dumps(request.body, ensure_ascii=False).encode(), content_type="application/json")


def check(exchange: Exchange, request: Request) -> list[Deviation]:
    """No 5xx (schemathesis's not_a_server_error), and a 2xx JSON body is strict JSON."""
    if exchange.transport_error:
        return [Deviation("http.no-response", request.label, exchange.transport_error)]
    if exchange.status >= 500:
        return [Deviation("http.5xx", request.label, f"HTTP {exchange.status}: {exchange.text[:300]}")]
    if 200 <= exchange.status < 300 and "json" in exchange.headers.get("content-type", ""):
        try:
            exchange.json()
        except ValueError as exc:
            return [Deviation("json.invalid", request.label, f"2xx body is not strict JSON: {exc}")]
    return []
