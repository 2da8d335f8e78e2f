"""The /v1/responses validators on fixed exchanges: the API reference's examples pass, each break is named.

The valid response follows the API reference's Response object example (responses/object); the
stream follows its streaming events (response.created ... response.completed). Each invalid one
changes one thing, and the test names the rule that must catch it. No server.
"""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import pytest

from pytest_vllm.conformance import responses as R
from pytest_vllm.conformance.deviations import generic_path
from pytest_vllm.conformance.probe import Exchange

NOW = int(time.time())

MESSAGE = {"type": "message", "id": "msg_67cc", "status": "completed", "role": "assistant",
           "content": [{"type": "output_text", "text": "Hello there!", "annotations": []}]}
# https://platform.openai.com/docs/api-reference/responses/object (the example, dated to now; usage with
# cache_write_tokens, which openai-python 3.57 requires)
RESPONSE: dict[str, Any] = {
    "id": "resp_67ccd3a9da748190baa7f1570fe91ac604becb25c45c1d41", "object": "response", "created_at": NOW,
    "status": "completed", "error": None, "incomplete_details": None, "instructions": None,
    "max_output_tokens": None, "model": "gpt-4o-2024-08-06", "output": [MESSAGE], "parallel_tool_calls": True,
    "previous_response_id": None, "reasoning": {"effort": None, "summary": None}, "store": True,
    "temperature": 1.0, "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [], "top_p": 1.0,
    "truncation": "disabled",
    "usage": {"input_tokens": 36, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
              "output_tokens": 3,
              "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 39},
    "user": None, "metadata": {},
}


def exchange(text: str, content_type: str = "application/json") -> Exchange:
    return Exchange("POST", "http://server/v1/responses", None, b"{}", "application/json", None, status=200,
                    headers={"content-type": content_type}, content=text.encode(), text=text)


def rules(outcome: R.ResponsesOutcome) -> set[tuple[str, str]]:
    return {(d.rule, generic_path(d.path)) for d in outcome.deviations}


def body_outcome(document: dict[str, Any], **asked: Any) -> R.ResponsesOutcome:
    return R.check_responses(exchange(json.dumps(document)), {"input": "Hi", **asked})


def test_the_reference_example_conforms() -> None:
    outcome = body_outcome(RESPONSE)
    assert outcome.deviations == []
    assert (outcome.text, outcome.status, outcome.output_tokens) == ("Hello there!", "completed", 3)


def changed(path: str, value: Any) -> dict[str, Any]:
    document = copy.deepcopy(RESPONSE)
    *parents, last = path.split(".")
    node: Any = document
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return document


@pytest.mark.parametrize(("document", "asked", "rule"), [
    (changed("id", KeyError), {}, ("schema.missing", "id")),
    (changed("object", "chat.completion"), {}, ("schema.enum", "object")),
    (changed("created_at", NOW * 1000), {}, ("value.created", "created_at")),
    (changed("status", "in_progress"), {}, ("responses.status", "status")),
    (changed("status", "incomplete"), {}, ("responses.incomplete-details", "incomplete_details")),
    (changed("incomplete_details", {"reason": "max_output_tokens"}), {},
     ("responses.incomplete-details", "incomplete_details")),
    (changed("usage.total_tokens", 40), {}, ("usage.total", "usage")),
    (changed("output.0.content.0.text", 5), {}, ("schema.type", "output[*].content[*].text")),
    (RESPONSE, {"max_output_tokens": 2}, ("usage.max_tokens", "usage.output_tokens")),
], ids=["no id", "wrong object", "milliseconds", "unfinished", "incomplete without reason",
        "completed with details", "usage sum", "text not a string", "over max_output_tokens"])
def test_each_broken_body_is_named(document: dict[str, Any], asked: dict[str, Any], rule: tuple[str, str]) -> None:
    assert rule in rules(body_outcome(document, **asked))


def events(final_text: str = "Hello there!", deltas: tuple[str, ...] = ("Hello", " there!")) -> list[dict[str, Any]]:
    created = {**copy.deepcopy(RESPONSE), "status": "in_progress", "output": [], "usage": None}
    item = {**MESSAGE, "status": "in_progress", "content": []}
    part = {"type": "output_text", "text": "", "annotations": []}
    done_part = {**part, "text": final_text}
    final = copy.deepcopy(RESPONSE)
    final["output"][0]["content"][0]["text"] = final_text
    out: list[dict[str, Any]] = [
        {"type": "response.created", "response": created},
        {"type": "response.in_progress", "response": created},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        {"type": "response.content_part.added", "item_id": MESSAGE["id"], "output_index": 0, "content_index": 0,
         "part": part},
        *({"type": "response.output_text.delta", "item_id": MESSAGE["id"], "output_index": 0, "content_index": 0,
           "delta": d, "logprobs": []} for d in deltas),
        {"type": "response.output_text.done", "item_id": MESSAGE["id"], "output_index": 0, "content_index": 0,
         "text": final_text, "logprobs": []},
        {"type": "response.content_part.done", "item_id": MESSAGE["id"], "output_index": 0, "content_index": 0,
         "part": done_part},
        {"type": "response.output_item.done", "output_index": 0, "item": final["output"][0]},
        {"type": "response.completed", "response": final},
    ]
    for number, event in enumerate(out):
        event["sequence_number"] = number
    return out


def stream_outcome(documents: list[dict[str, Any]], names: bool = True) -> R.ResponsesOutcome:
    text = "".join((f"event: {d['type']}\n" if names else "") + f"data: {json.dumps(d)}\n\n" for d in documents)
    return R.check_responses(exchange(text, "text/event-stream; charset=utf-8"), {"input": "Hi", "stream": True})


def test_a_reference_stream_conforms() -> None:
    outcome = stream_outcome(events())
    assert outcome.deviations == []
    assert (outcome.text, outcome.status) == ("Hello there!", "completed")
    assert stream_outcome(events(), names=False).deviations == []


def test_a_stream_without_its_terminal_event_is_named() -> None:
    assert ("responses.terminal-event", "") in rules(stream_outcome(events()[:-1]))


def test_a_renumbered_or_renamed_event_is_named() -> None:
    documents = events()
    documents[3]["sequence_number"] = 7
    assert ("responses.sequence", "event[*].sequence_number") in rules(stream_outcome(documents))
    text = "".join(f"event: response.bogus\ndata: {json.dumps(d)}\n\n" for d in events())
    found = rules(R.check_responses(exchange(text, "text/event-stream"), {"input": "Hi", "stream": True}))
    assert ("responses.event-name", "event[*]") in found


def test_an_unknown_event_type_and_a_malformed_event_are_named() -> None:
    documents = events()
    documents[2] = {**documents[2], "type": "response.no_such_event"}
    assert ("responses.event-type", "event[*].type") in rules(stream_outcome(documents, names=False))
    documents = events()
    del documents[4]["delta"]
    assert ("schema.missing", "event[*].delta") in rules(stream_outcome(documents))


def test_deltas_that_do_not_add_up_are_named() -> None:
    found = rules(stream_outcome(events(deltas=("Hello", " world"))))
    assert ("responses.text-done", "event[*].text") in found
    assert ("responses.final-text", "event[*].response.output") in found


def test_every_openai_event_type_has_a_schema() -> None:
    schemas = R.event_schemas()
    for kind in ("response.created", "response.output_text.delta", "response.completed", "response.incomplete",
                 "response.function_call_arguments.delta", "error"):
        assert kind in schemas
