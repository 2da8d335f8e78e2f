"""Strict checks of the Responses API (``POST /v1/responses``): bodies and streamed events.

Field presence and types come from openai-python's own models, read the way ``openai_schema`` reads
the chat ones: ``openai.types.responses.Response`` for a body and, for a stream, the member of the
``ResponseStreamEvent`` union whose ``type`` literal names the event (the SDK discriminates the
union by ``type``; matching by closeness instead would blame the wrong event model). On top of them
the rules of the API reference and streaming guide that no type can express:

- ``object`` is ``"response"``; ``created_at`` is a Unix timestamp in seconds;
- a finished request is ``completed`` or ``incomplete``; ``incomplete_details.reason`` is set exactly
  when it is ``incomplete``; ``usage.total_tokens = input_tokens + output_tokens``; ``output_tokens``
  never exceeds ``max_output_tokens``;
- a stream's events carry ``sequence_number`` 0, 1, 2, ... in order, and the SSE ``event:`` name (when
  sent) equals the event's ``type``; it starts with ``response.created`` and ends with exactly one
  terminal event (``response.completed``, ``response.incomplete`` or ``response.failed``) whose response
  has the created one's id; the ``response.output_text.delta`` events of a content part add up to its
  ``response.output_text.done`` text, and to the text of the final response.
"""

from __future__ import annotations

import time
import typing
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

from hypothesis import strategies as st

from pytest_vllm.conformance import openai_schema as schemas
from pytest_vllm.conformance.deviations import Deviation
from pytest_vllm.conformance.probe import Exchange, StrictJSONError, loads_strict
from pytest_vllm.conformance.validators import CLOCK_SKEW_S, EARLIEST_TIMESTAMP, check_rejection

if TYPE_CHECKING:
    from pytest_vllm.conformance.runner import PropertyRun

RESPONSES_PATH = "/v1/responses"
TERMINAL_EVENTS = ("response.completed", "response.incomplete", "response.failed")
FINISHED_STATUSES = ("completed", "incomplete")


# -- schemas from openai-python -----------------------------------------------------------------------
@cache
def response_schema() -> schemas.ObjectNode:
    from openai.types.responses import Response

    return schemas.model_node(Response)


@cache
def event_schemas() -> dict[str, schemas.ObjectNode]:
    """Event ``type`` -> the openai-python model of that streamed event."""
    from openai.types.responses import ResponseStreamEvent

    union = typing.get_args(ResponseStreamEvent)[0]  # Annotated[Union[...], PropertyInfo(discriminator="type")]
    by_type: dict[str, schemas.ObjectNode] = {}
    for model in typing.get_args(union):
        for name in typing.get_args(model.model_fields["type"].annotation):
            by_type[name] = schemas.model_node(model)
    return by_type


# -- what came back -----------------------------------------------------------------------------------
@dataclass
class ResponsesOutcome:
    """A checked ``/v1/responses`` exchange: its deviations and, when readable, the final response."""

    exchange: Exchange
    stream: bool
    deviations: list[Deviation] = field(default_factory=list)
    response: dict[str, Any] = field(default_factory=dict)  # the body, or the terminal event's response
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The output text: every ``output_text`` part of every output message, in order."""
        return output_text(self.response)

    @property
    def status(self) -> str | None:
        status = self.response.get("status")
        return status if isinstance(status, str) else None

    @property
    def output_tokens(self) -> int | None:
        usage = self.response.get("usage")
        value = usage.get("output_tokens") if isinstance(usage, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def incomplete_reason(self) -> str | None:
        details = self.response.get("incomplete_details")
        return details.get("reason") if isinstance(details, dict) else None


def output_text(response: dict[str, Any]) -> str:
    pieces: list[str] = []
    for item in response.get("output") or []:
        if isinstance(item, dict) and item.get("type") == "message":
            for part in item.get("content") or []:
                if isinstance(part, dict) and part.get("type") == "output_text" and isinstance(part.get("text"), str):
                    pieces.append(part["text"])
    return "".join(pieces)


def check_responses(exchange: Exchange, body: dict[str, Any]) -> ResponsesOutcome:
    """A request that must succeed: HTTP 200 and a conforming response or event stream."""
    stream = body.get("stream") is True
    outcome = ResponsesOutcome(exchange, stream)
    out = outcome.deviations
    if exchange.transport_error:
        out.append(Deviation("http.no-response", "", exchange.transport_error))
        return outcome
    if exchange.status != 200:
        out.append(Deviation("http.status", "", f"a valid request got HTTP {exchange.status}, not 200: "
                                                f"{exchange.text[:500]}"))
        return outcome
    limit = body.get("max_output_tokens")
    limit = limit if isinstance(limit, int) and not isinstance(limit, bool) else None
    if stream:
        _check_stream(outcome)
    else:
        if "application/json" not in exchange.headers.get("content-type", ""):
            out.append(Deviation("http.content-type", "", f"content-type {exchange.headers.get('content-type')!r}, "
                                                          "not application/json"))
        document = _parse(exchange.text, "", out, "response body")
        if isinstance(document, dict):
            outcome.response = document
        if document is not None:
            out.extend(schemas.validate(document, response_schema()))
    if outcome.response:
        _check_response_rules(outcome.response, "response" if stream else "", limit, out)
    return outcome


def _parse(text: str, path: str, out: list[Deviation], what: str) -> Any:
    try:
        return loads_strict(text)
    except StrictJSONError as exc:
        out.append(Deviation("json.invalid", path, f"{what} is not strict JSON: {exc}"))
    except ValueError as exc:
        out.append(Deviation("json.invalid", path, f"{what} is not JSON ({exc}): {text[:200]!r}"))
    return None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_response_rules(response: dict[str, Any], path: str, limit: int | None, out: list[Deviation]) -> None:
    created = response.get("created_at")
    if isinstance(created, (int, float)) and not isinstance(created, bool):
        if not EARLIEST_TIMESTAMP <= created <= time.time() + CLOCK_SKEW_S:
            out.append(Deviation("value.created", _join(path, "created_at"), f"{created} is not a Unix timestamp "
                                                                             "in seconds"))
    status = response.get("status")
    if status not in FINISHED_STATUSES:
        out.append(Deviation("responses.status", _join(path, "status"), f"a finished request has status {status!r}, "
                                                                        f"not one of {FINISHED_STATUSES}"))
    details = response.get("incomplete_details")
    reason = details.get("reason") if isinstance(details, dict) else None
    if status == "incomplete" and reason is None:
        out.append(Deviation("responses.incomplete-details", _join(path, "incomplete_details"),
                             "status 'incomplete' without incomplete_details.reason"))
    if status == "completed" and details is not None:
        out.append(Deviation("responses.incomplete-details", _join(path, "incomplete_details"),
                             f"status 'completed' with incomplete_details {details!r}"))
    usage = response.get("usage")
    if isinstance(usage, dict) and all(_is_int(usage.get(k)) for k in ("input_tokens", "output_tokens",
                                                                        "total_tokens")):
        if usage["total_tokens"] != usage["input_tokens"] + usage["output_tokens"]:
            out.append(Deviation("usage.total", _join(path, "usage"), f"total_tokens {usage['total_tokens']} != "
                                 f"input_tokens {usage['input_tokens']} + output_tokens {usage['output_tokens']}"))
        if limit is not None and usage["output_tokens"] > limit:
            out.append(Deviation("usage.max_tokens", _join(path, "usage.output_tokens"),
                                 f"{usage['output_tokens']} output tokens, max_output_tokens {limit}"))


def _check_stream(outcome: ResponsesOutcome) -> None:
    exchange, out = outcome.exchange, outcome.deviations
    if "text/event-stream" not in exchange.headers.get("content-type", ""):
        out.append(Deviation("stream.content-type", "", f"content-type {exchange.headers.get('content-type')!r}, "
                                                        "not text/event-stream"))
    known = event_schemas()
    raw_events = exchange.events()
    if raw_events and raw_events[-1].data.strip() == "[DONE]":  # not sent by OpenAI; tolerated as the SDK does
        raw_events = raw_events[:-1]
    for i, event in enumerate(raw_events):
        path = f"event[{i}]"
        document = _parse(event.data, path, out, "event")
        if not isinstance(document, dict):
            if document is not None:
                out.append(Deviation("schema.type", path, "an event must be a JSON object"))
            continue
        outcome.events.append(document)
        kind = document.get("type")
        node = known.get(kind) if isinstance(kind, str) else None
        if node is None:
            out.append(Deviation("responses.event-type", f"{path}.type", f"{kind!r} is not an event type of "
                                                                         "openai-python's ResponseStreamEvent"))
        else:
            out.extend(schemas.validate(document, node, path))
        if event.event is not None and event.event != kind:
            out.append(Deviation("responses.event-name", path, f"SSE event name {event.event!r} != data.type "
                                                               f"{kind!r}"))
        if document.get("sequence_number") != i:
            out.append(Deviation("responses.sequence", f"{path}.sequence_number",
                                 f"{document.get('sequence_number')!r}, expected {i} (0, 1, 2, ... in order)"))
    if not outcome.events:
        out.append(Deviation("stream.empty", "", "the stream has no events"))
        return
    _check_event_order(outcome)


def _check_event_order(outcome: ResponsesOutcome) -> None:
    events, out = outcome.events, outcome.deviations
    kinds = [e.get("type") for e in events]
    if kinds[0] != "response.created":
        out.append(Deviation("responses.first-event", "event[0].type", f"the first event is {kinds[0]!r}, not "
                                                                       "'response.created'"))
    terminal = [i for i, kind in enumerate(kinds) if kind in TERMINAL_EVENTS]
    if terminal != [len(events) - 1]:
        out.append(Deviation("responses.terminal-event", "", f"a stream ends with exactly one of {TERMINAL_EVENTS}; "
                                                             f"terminal events at {terminal} of {len(events)}"))
    final = events[terminal[-1]].get("response") if terminal else None
    if isinstance(final, dict):
        outcome.response = final
        first = events[0].get("response")
        if isinstance(first, dict) and first.get("id") != final.get("id"):
            out.append(Deviation("responses.id-changed", f"event[{terminal[-1]}].response.id",
                                 f"{final.get('id')!r} != response.created's {first.get('id')!r}"))
    deltas: dict[tuple[Any, Any], str] = {}
    done: dict[tuple[Any, Any], str] = {}
    for i, event in enumerate(events):
        key = (event.get("item_id"), event.get("content_index"))
        if event.get("type") == "response.output_text.delta" and isinstance(event.get("delta"), str):
            if key in done:
                out.append(Deviation("stream.after-finish", f"event[{i}]", "a text delta after its part's "
                                                                           "response.output_text.done"))
            deltas[key] = deltas.get(key, "") + event["delta"]
        elif event.get("type") == "response.output_text.done" and isinstance(event.get("text"), str):
            done[key] = event["text"]
            if event["text"] != deltas.get(key, ""):
                out.append(Deviation("responses.text-done", f"event[{i}].text",
                                     f"{event['text']!r} != the deltas' {deltas.get(key, '')!r}"))
    if isinstance(final, dict) and output_text(final) != "".join(deltas.values()):
        out.append(Deviation("responses.final-text", f"event[{len(events) - 1}].response.output",
                             f"the final response's text {output_text(final)!r} != the streamed deltas "
                             f"{''.join(deltas.values())!r}"))


# -- running it -----------------------------------------------------------------------------------------
def offered(run: PropertyRun) -> str | None:
    """None when the server serves ``/v1/responses``; else why not (for the skip)."""
    exchange = run.probe.post(RESPONSES_PATH, run.with_model({"input": "Hi", "max_output_tokens": 1}))
    run.probe.history.clear()
    if exchange.status in (404, 405, 501):
        return f"the server does not serve POST {RESPONSES_PATH} (HTTP {exchange.status})"
    return None


def send(run: PropertyRun, body: dict[str, Any], what: str = "valid responses request") -> ResponsesOutcome:
    """A valid request: 200 and a conforming body or stream (a known refusal discards the example, as
    ``PropertyRun.send`` does)."""
    exchange = run.probe.post(RESPONSES_PATH, run.with_model(body))
    outcome = check_responses(exchange, body)
    run.expect(outcome.deviations, what)
    run.discard_if_refused(exchange)
    return outcome


def reject(run: PropertyRun, body: dict[str, Any], param: str = "", what: str = "invalid responses request"
           ) -> Exchange:
    """An invalid request: a 4xx with an OpenAI error object."""
    exchange = run.probe.post(RESPONSES_PATH, body)
    run.expect(check_rejection(exchange, param), what)
    return exchange




# -- requests ---------------------------------------------------------------------------------------------
RESPONSE_INPUTS = ("Say hello.", "What is the capital of France?", "Count to five.", "Write a haiku about rain.",
                   "Name a colour.")
INSTRUCTIONS = ("Answer briefly.", "You are a pirate.", "Reply in French.")


@st.composite
def responses_requests(draw: st.DrawFn, stream: bool | None = None, max_tokens: int = 12,
                       temperatures: tuple[float, ...] = (0.0, 0.7, 1.0)) -> dict[str, Any]:
    """A valid ``/v1/responses`` body: a text or message-list input, optional instructions, a small
    ``max_output_tokens``, sampling parameters and (drawn or given) ``stream``."""
    text = draw(st.sampled_from(RESPONSE_INPUTS))
    body: dict[str, Any] = {"input": draw(st.sampled_from([
        text, [{"role": "user", "content": text}],
        [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}]])),
        "max_output_tokens": draw(st.integers(1, max_tokens)), "temperature": draw(st.sampled_from(temperatures))}
    if draw(st.booleans()):
        body["instructions"] = draw(st.sampled_from(INSTRUCTIONS))
    if draw(st.booleans()):
        body["top_p"] = draw(st.sampled_from([0.5, 0.9, 1.0]))
    if stream if stream is not None else draw(st.booleans()):
        body["stream"] = True
    return body


# (what is wrong, the field at fault, the body): each one OpenAI's API reference refuses.
INVALID_RESPONSES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("max_output_tokens a string", "max_output_tokens", {"input": "Hi", "max_output_tokens": "ten"}),
    ("max_output_tokens negative", "max_output_tokens", {"input": "Hi", "max_output_tokens": -1}),
    ("temperature above 2", "temperature", {"input": "Hi", "max_output_tokens": 4, "temperature": 3}),
    ("top_p above 1", "top_p", {"input": "Hi", "max_output_tokens": 4, "top_p": 1.5}),
    ("input a number", "input", {"input": 5, "max_output_tokens": 4}),
    ("an unknown input item type", "input", {"input": [{"type": "no_such_item"}], "max_output_tokens": 4}),
)
