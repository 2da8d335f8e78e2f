"""Tool-calling strategies and checks on fixed exchanges: valid calls pass, each broken one is named.

The valid documents follow the API reference's chat object with ``tool_calls`` (and its streaming
chunks, ``delta.tool_calls`` keyed by ``index``); each invalid one changes one thing. No server.
"""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings

from pytest_vllm.conformance import tools as T
from pytest_vllm.conformance.deviations import KNOWN_VLLM_DEVIATIONS, generic_path, split_known
from pytest_vllm.conformance.probe import Exchange
from pytest_vllm.conformance.validators import CHAT, check_response

NOW = int(time.time())
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8},
                                            "days": {"type": "integer", "minimum": 1, "maximum": 7}},
           "required": ["city", "days"], "additionalProperties": False}


def request(choice: str = T.NAMED, *, stream: bool = False, parameters: dict[str, Any] | None = WEATHER
            ) -> T.ToolRequest:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": parameters}},
             {"type": "function", "function": {"name": "add"}}]
    body: dict[str, Any] = {"messages": [], "tools": tools, "max_tokens": 96,
                            "tool_choice": T.tool_choice_value(choice, "get_weather" if choice == T.NAMED else None)}
    if stream:
        body["stream"] = True
    return T.ToolRequest(body, choice, "get_weather" if choice == T.NAMED else None,
                         {"get_weather": parameters, "add": None})


def completion(calls: list[dict[str, Any]] | None, finish: str = "tool_calls", content: str | None = None
               ) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if calls is not None:
        message["tool_calls"] = calls
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": NOW, "model": "m",
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}}


def call(name: str = "get_weather", arguments: str = '{"city": "Paris", "days": 3}', id: str = "call_abc"
         ) -> dict[str, Any]:
    return {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}


def exchange(text: str, content_type: str = "application/json") -> Exchange:
    return Exchange("POST", "http://server/v1/chat/completions", None, b"{}", "application/json", None, status=200,
                    headers={"content-type": content_type}, content=text.encode(), text=text)


def checked(document: dict[str, Any], tool_request: T.ToolRequest) -> set[tuple[str, str]]:
    outcome = check_response(exchange(json.dumps(document)), CHAT, tool_request.body)
    assert outcome.ok, outcome.deviations
    return {(d.rule, generic_path(d.path)) for d in T.check_tool_calls(outcome, tool_request)}


def test_a_valid_named_call_passes() -> None:
    assert checked(completion([call()], finish="stop"), request()) == set()
    assert checked(completion([call()]), request(T.REQUIRED)) == set()


def test_a_function_without_parameters_takes_an_empty_object() -> None:
    tool_request = request(T.REQUIRED)
    assert checked(completion([call("add", "{}")]), tool_request) == set()
    for arguments in ('{"x": 1}', '"add"', "[]"):
        assert checked(completion([call("add", arguments)]), tool_request) == {
            ("tool.arguments-no-parameters", "tool_calls[*].function.arguments")}


@pytest.mark.parametrize(("document", "tool_request", "rule"), [
    (completion(None, finish="stop", content="Sunny."), request(), "tool.missing"),
    (completion([call()], finish="tool_calls"), request(), "tool.finish-reason"),
    (completion([call()], finish="stop"), request(T.REQUIRED), "tool.finish-reason"),
    (completion([call(id="")]), request(), "tool.id"),
    (completion([call(), call(arguments='{"city": "Rome", "days": 1}')]), request(T.REQUIRED), "tool.id"),
    (completion([call("add", "{}")]), request(), "tool.name"),
    (completion([call("get_time")]), request(T.REQUIRED), "tool.name"),
    (completion([call(arguments='{"city": "Paris"')]), request(), "tool.arguments-json"),
    (completion([call(arguments='"Paris"')]), request(), "tool.arguments-schema"),
    (completion([call(arguments='{"city": "Paris", "days": 30}')]), request(), "tool.arguments-schema"),
    (completion([call(arguments='{"city": "Paris", "days": 3, "unit": "C"}')]), request(), "tool.arguments-schema"),
    (completion([call()]), request(T.NONE), "tool.unexpected"),
    (completion(None, finish="tool_calls", content="Sunny."), request(T.NONE), "tool.finish-reason"),
], ids=["no call", "named finish tool_calls", "required finish stop",
        "empty id", "duplicate id", "another function", "undeclared function",
        "arguments not JSON", "arguments not an object", "argument out of range", "undeclared argument",
        "a call under none", "none finish tool_calls"])
def test_each_broken_call_is_named(document: dict[str, Any], tool_request: T.ToolRequest, rule: str) -> None:
    assert rule in {found for found, _ in checked(document, tool_request)}


def test_auto_may_answer_in_text() -> None:
    assert checked(completion(None, finish="stop", content="Hello."), request(T.AUTO)) == set()
    assert checked(completion([call()]), request(T.AUTO)) == set()


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": NOW, "model": "m",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


def tool_stream(deltas: list[dict[str, Any]], finish: str = "tool_calls") -> Exchange:
    chunks = [chunk({"role": "assistant", "content": ""}),
              *(chunk({"tool_calls": [d]}) for d in deltas), chunk({}, finish)]
    text = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    return exchange(text, "text/event-stream")


def streamed(deltas: list[dict[str, Any]], finish: str = "stop") -> tuple[list[T.ToolCall], set[str]]:
    tool_request = request(stream=True)
    outcome = check_response(tool_stream(deltas, finish), CHAT, tool_request.body)
    assert outcome.ok, outcome.deviations
    return T.tool_calls(outcome), {d.rule for d in T.check_tool_calls(outcome, tool_request)}


def test_streamed_deltas_reassemble_into_the_call() -> None:
    calls, found = streamed([
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}},
        {"index": 0, "function": {"arguments": '{"city": "Par'}},
        {"index": 0, "function": {"arguments": 'is", "days": 2}'}}])
    assert [(c.id, c.name, c.arguments) for c in calls] == [("call_1", "get_weather", '{"city": "Paris", "days": 2}')]
    assert found == set()


def test_a_first_delta_without_id_or_name_is_named() -> None:
    _, found = streamed([{"index": 0, "function": {"arguments": '{"city": "Paris", "days": 2}'}}])
    assert "tool.stream-first-delta" in found


def test_a_changed_name_mid_stream_is_named() -> None:
    _, found = streamed([
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather"}},
        {"index": 0, "function": {"name": "add", "arguments": '{"city": "Paris", "days": 2}'}}])
    assert "tool.stream-changed" in found


def test_gapped_indices_are_named() -> None:
    _, found = streamed([{"index": 1, "id": "call_1", "type": "function",
                          "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 2}'}}])
    assert "tool.stream-index" in found


@settings(max_examples=60, deadline=None)
@given(T.tool_requests(choices=(T.NONE, T.AUTO, T.REQUIRED, T.NAMED)))
def test_generated_requests_declare_valid_schemas_and_ask_for_a_declared_function(tool_request: T.ToolRequest
                                                                                  ) -> None:
    for parameters in tool_request.tools.values():
        if parameters is not None:
            jsonschema.Draft202012Validator.check_schema(parameters)
    names = [t["function"]["name"] for t in tool_request.body["tools"]]
    assert len(set(names)) == len(names) and all(len(n) <= 64 for n in names)
    if tool_request.choice == T.NAMED:
        assert tool_request.body["tool_choice"] == {"type": "function", "function": {"name": tool_request.name}}
        assert tool_request.name in names
    else:
        assert tool_request.body["tool_choice"] == tool_request.choice


@pytest.mark.parametrize("shape", sorted(T.PROPERTY_SCHEMAS))
def test_every_property_shape_is_a_valid_schema(shape: str) -> None:
    jsonschema.Draft202012Validator.check_schema(T.PROPERTY_SCHEMAS[shape])


@pytest.mark.parametrize(("what", "body"), T.broken_tool_requests(), ids=[w for w, _ in T.broken_tool_requests()])
def test_broken_parameters_are_no_valid_schema(what: str, body: dict[str, Any]) -> None:
    parameters = copy.deepcopy(body["tools"][0]["function"]["parameters"])
    with pytest.raises(jsonschema.SchemaError):
        jsonschema.Draft202012Validator.check_schema(parameters)


def test_only_the_parameterless_finding_is_a_known_vllm_deviation() -> None:
    parameterless = T.check_tool_calls(check_response(exchange(json.dumps(completion([call("add", '"add"')]))), CHAT,
                                                      request(T.REQUIRED).body), request(T.REQUIRED))
    broken = T.check_tool_calls(check_response(exchange(json.dumps(completion([call(arguments='"Paris"')],
                                                                                finish="stop"))), CHAT,
                                               request().body), request())
    assert [k.key for k, _ in split_known(parameterless, KNOWN_VLLM_DEVIATIONS)[1]] == [
        "parameterless-tool-arguments-unconstrained"]
    assert split_known(broken, KNOWN_VLLM_DEVIATIONS)[0] == broken != []


def test_streamed_calls_compare_by_text_then_by_json() -> None:
    def calls(*arguments: str, name: str = "get_weather") -> list[T.ToolCall]:
        return [T.ToolCall(f"call_{i}", "function", name, a) for i, a in enumerate(arguments)]

    assert T.compare_streamed(calls('{"a": 1}'), calls('{"a": 1}')) == []
    respelled = T.compare_streamed(calls('{"a": 1}'), calls('{\n "a":1}'))
    assert [(d.rule, d.path) for d in respelled] == [("tool.stream-arguments-text", "tool_calls[0].function.arguments")]
    assert [k.key for k, _ in split_known(respelled, KNOWN_VLLM_DEVIATIONS)[1]] == [
        "required-call-arguments-reserialized"]
    assert [d.rule for d in T.compare_streamed(calls('{"a": 1}'), calls('{"a": 2}'))] == ["tool.stream-differs"]
    assert [d.rule for d in T.compare_streamed(calls("{}"), calls("{}", name="add"))] == ["tool.stream-differs"]
    assert [d.rule for d in T.compare_streamed(calls("{}"), calls("{}", "{}"))] == ["tool.stream-differs"]
