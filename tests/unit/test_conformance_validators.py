"""The strict validators on exact JSON documents: OpenAI's own examples pass, each deviation is caught.

The valid documents follow the examples of the OpenAI API reference (chat/create, completions/create,
the streaming chunk object, the error object); each invalid one changes one thing, and the test
names the rule that must catch it. No server: these are fixed HTTP exchanges.
"""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import pytest

from pytest_vllm.conformance.deviations import KNOWN_VLLM_DEVIATIONS, Deviation, generic_path, split_known
from pytest_vllm.conformance.probe import Exchange, parse_sse
from pytest_vllm.conformance.validators import (
    CHAT,
    COMPLETIONS,
    check_accept_or_reject,
    check_error,
    check_forced_text,
    check_model_list,
    check_rejection,
    check_response,
)

NOW = int(time.time())

# https://platform.openai.com/docs/api-reference/chat/object (the example, dated to now)
CHAT_COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
    "object": "chat.completion",
    "created": NOW,
    "model": "gpt-4o-2024-08-06",
    "choices": [{
        "index": 0,
        "message": {"role": "assistant", "content": "Hello! How can I assist you today?", "refusal": None,
                    "annotations": []},
        "logprobs": None,
        "finish_reason": "stop",
    }],
    "usage": {
        "prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0,
                                      "rejected_prediction_tokens": 0},
    },
    "service_tier": "default",
    "system_fingerprint": "fp_44709d6fcb",
}

# https://platform.openai.com/docs/api-reference/completions/object
COMPLETION: dict[str, Any] = {
    "id": "cmpl-uqkvlQyYK7bGYrRHQ0eXlWi7",
    "object": "text_completion",
    "created": NOW,
    "model": "gpt-3.5-turbo-instruct",
    "system_fingerprint": "fp_44709d6fcb",
    "choices": [{"text": "\n\nThis is indeed a test", "index": 0, "logprobs": None, "finish_reason": "length"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
}

# https://platform.openai.com/docs/api-reference/chat/create ("logprobs" example), two tokens
CHAT_LOGPROBS = {"content": [
    {"token": "Hello", "logprob": -0.31725305, "bytes": [72, 101, 108, 108, 111],
     "top_logprobs": [{"token": "Hello", "logprob": -0.31725305, "bytes": [72, 101, 108, 108, 111]},
                      {"token": "Hi", "logprob": -1.3190403, "bytes": [72, 105]}]},
    {"token": "!", "logprob": -0.02380986, "bytes": [33],
     "top_logprobs": [{"token": "!", "logprob": -0.02380986, "bytes": [33]},
                      {"token": " there", "logprob": -3.787621, "bytes": [32, 116, 104, 101, 114, 101]}]},
]}

# https://platform.openai.com/docs/guides/error-codes (an invalid_request_error body)
ERROR = {"error": {"message": "Invalid 'messages': empty array. Expected an array with minimum length 1, but got "
                              "an empty array instead.",
                   "type": "invalid_request_error", "param": "messages", "code": "empty_array"}}


def exchange(document: Any = None, *, status: int = 200, content_type: str = "application/json",
             text: str | None = None, body: Any = None) -> Exchange:
    text = json.dumps(document) if text is None else text
    return Exchange("POST", "http://server/v1/chat/completions", body, b"{}", "application/json", None,
                    status=status, headers={"content-type": content_type}, content=text.encode(), text=text)


def stream(chunks: list[Any], *, done: bool = True, body: Any = None) -> Exchange:
    events = [f"data: {json.dumps(c) if not isinstance(c, str) else c}\n\n" for c in chunks]
    text = "".join(events) + ("data: [DONE]\n\n" if done else "")
    return exchange(text=text, content_type="text/event-stream; charset=utf-8", body=body)


def rules(deviations: list[Deviation]) -> set[tuple[str, str]]:
    return {(d.rule, generic_path(d.path)) for d in deviations}


def chat_outcome(document: Any, **asked: Any):
    return check_response(exchange(document), CHAT, {"messages": [], **asked})


def chunk(content: str | None = None, *, role: str | None = None, finish: str | None = None, index: int = 0,
          created: int = NOW, id: str = "chatcmpl-123", usage: Any = None, **extra: Any) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    return {"id": id, "object": "chat.completion.chunk", "created": created, "model": "gpt-4o-mini",
            "system_fingerprint": "fp_44709d6fcb", "usage": usage,
            "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish, **extra}]}


USAGE = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}


def usage_chunk(usage: Any = USAGE, **changes: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-123", "object": "chat.completion.chunk", "created": NOW, "model": "gpt-4o-mini",
            "choices": [], "usage": usage, **changes}


GOOD_STREAM = [chunk("", role="assistant"), chunk("Hello"), chunk("!"), chunk(finish="stop")]


# -- non-streamed chat -------------------------------------------------------------------------------
def test_openai_reference_chat_completion_conforms() -> None:
    outcome = chat_outcome(CHAT_COMPLETION)
    assert outcome.deviations == []
    assert outcome.text() == "Hello! How can I assist you today?" and outcome.finish_reason() == "stop"
    assert outcome.completion_tokens == 10


def test_optional_fields_may_be_absent_or_null_and_vendor_fields_are_allowed() -> None:
    document = copy.deepcopy(CHAT_COMPLETION)
    for key in ("usage", "service_tier", "system_fingerprint"):
        del document[key]
    document["choices"][0]["message"] = {"role": "assistant", "content": None, "tool_calls": None}
    del document["choices"][0]["logprobs"]
    document["prompt_logprobs"] = None  # vLLM's extras
    document["kv_transfer_params"] = None
    document["choices"][0]["stop_reason"] = None
    document["choices"][0]["message"]["reasoning"] = None
    assert chat_outcome(document).deviations == []


@pytest.mark.parametrize("field", ["id", "choices", "created", "model", "object"])
def test_each_required_top_level_field_is_required(field: str) -> None:
    document = copy.deepcopy(CHAT_COMPLETION)
    del document[field]
    assert ("schema.missing", field) in rules(chat_outcome(document).deviations)


@pytest.mark.parametrize(("path", "value", "rule"), [
    (("choices", 0, "message", "role"), "user", "schema.enum"),
    (("choices", 0, "finish_reason"), "eos", "schema.enum"),
    (("choices", 0, "finish_reason"), None, "schema.enum"),
    (("created",), "1741569952", "schema.type"),
    (("created",), 1741569952.5, "schema.type"),
    (("created",), NOW * 1000, "value.created"),
    (("object",), "chat.completion.chunk", "schema.enum"),
    (("choices", 0, "index"), True, "schema.type"),
    (("choices", 0, "message", "content"), 42, "schema.type"),
    (("usage", "total_tokens"), 30, "usage.total"),
    (("usage", "prompt_tokens"), None, "schema.null"),
    (("id",), None, "schema.null"),
])
def test_a_wrong_value_is_caught(path: tuple[Any, ...], value: Any, rule: str) -> None:
    document = copy.deepcopy(CHAT_COMPLETION)
    target = document
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    found = chat_outcome(document).deviations
    assert rule in {d.rule for d in found}, found


def test_an_integral_float_is_an_integer() -> None:
    document = copy.deepcopy(CHAT_COMPLETION)
    document["created"] = float(NOW)
    assert chat_outcome(document).deviations == []


def test_message_role_missing_is_caught() -> None:
    document = copy.deepcopy(CHAT_COMPLETION)
    del document["choices"][0]["message"]["role"]
    assert ("schema.missing", "choices[*].message.role") in rules(chat_outcome(document).deviations)


def test_n_choices_indexed_from_zero() -> None:
    document = copy.deepcopy(CHAT_COMPLETION)
    second = copy.deepcopy(document["choices"][0])
    second["index"] = 1
    document["choices"].append(second)
    assert chat_outcome(document, n=2).deviations == []
    assert "choices.index" in {d.rule for d in chat_outcome(document, n=3).deviations}
    second["index"] = 0
    assert "choices.index" in {d.rule for d in chat_outcome(document, n=2).deviations}


def test_max_tokens_bounds_completion_tokens() -> None:
    assert chat_outcome(CHAT_COMPLETION, max_tokens=10).deviations == []
    assert "usage.max_tokens" in {d.rule for d in chat_outcome(CHAT_COMPLETION, max_tokens=9).deviations}
    assert "usage.max_tokens" in {d.rule for d in chat_outcome(CHAT_COMPLETION, max_completion_tokens=9).deviations}


def test_stop_sequence_in_output_is_caught() -> None:
    assert chat_outcome(CHAT_COMPLETION, stop=["Goodbye"]).deviations == []
    found = chat_outcome(CHAT_COMPLETION, stop=["assist"]).deviations
    assert {d.rule for d in found} == {"stop.in-output"}
    assert {d.rule for d in chat_outcome(CHAT_COMPLETION, stop="How").deviations} == {"stop.in-output"}


def test_min_tokens_holds_stop_strings_off() -> None:
    """vLLM's min_tokens suppresses stop strings in the first tokens: no stop check then."""
    assert chat_outcome(CHAT_COMPLETION, stop=["assist"], min_tokens=4).deviations == []
    assert chat_outcome(CHAT_COMPLETION, stop=["assist"], min_tokens=0).deviations != []


def test_logprobs_reference_example_conforms_and_bad_values_are_caught() -> None:
    document = copy.deepcopy(CHAT_COMPLETION)
    document["choices"][0]["logprobs"] = copy.deepcopy(CHAT_LOGPROBS)
    assert chat_outcome(document, logprobs=True, top_logprobs=2).deviations == []
    assert {d.rule for d in chat_outcome(document, logprobs=True, top_logprobs=1).deviations} == {"logprobs.top-count"}
    # fewer than asked at every position: not the "rare case" the API allows
    assert {d.rule for d in chat_outcome(document, logprobs=True, top_logprobs=3).deviations} == {"logprobs.top-count"}
    document["choices"][0]["logprobs"]["content"][1]["logprob"] = 0.5
    assert ("logprobs.positive", "choices[*].logprobs.content[*].logprob") in rules(
        chat_outcome(document, logprobs=True, top_logprobs=2).deviations)


def test_fewer_top_logprobs_at_a_minority_of_positions_is_allowed() -> None:
    document = copy.deepcopy(CHAT_COMPLETION)
    logprobs = copy.deepcopy(CHAT_LOGPROBS)
    logprobs["content"].append(copy.deepcopy(logprobs["content"][0]))
    logprobs["content"][2]["top_logprobs"] = logprobs["content"][2]["top_logprobs"][:1]
    document["choices"][0]["logprobs"] = logprobs
    assert chat_outcome(document, logprobs=True, top_logprobs=2).deviations == []


def test_requested_logprobs_missing_is_caught() -> None:
    assert {d.rule for d in chat_outcome(CHAT_COMPLETION, logprobs=True).deviations} == {"logprobs.missing"}
    assert chat_outcome(CHAT_COMPLETION, logprobs=False).deviations == []


def test_required_token_logprob_fields() -> None:
    document = copy.deepcopy(CHAT_COMPLETION)
    document["choices"][0]["logprobs"] = copy.deepcopy(CHAT_LOGPROBS)
    del document["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    assert ("schema.missing", "choices[*].logprobs.content[*].top_logprobs") in rules(
        chat_outcome(document, logprobs=True).deviations)


@pytest.mark.parametrize("text", ['{"id": NaN}', '{"id": "x",', "<html>oops</html>"])
def test_a_body_that_is_not_strict_json_is_caught(text: str) -> None:
    assert {d.rule for d in check_response(exchange(text=text), CHAT, {}).deviations} == {"json.invalid"}


def test_content_type_and_status_are_checked() -> None:
    wrong_type = exchange(CHAT_COMPLETION, content_type="text/plain")
    assert {d.rule for d in check_response(wrong_type, CHAT, {}).deviations} == {"http.content-type"}
    assert {d.rule for d in check_response(exchange(ERROR, status=400), CHAT, {}).deviations} == {"http.status"}


# -- completions ---------------------------------------------------------------------------------------
def completion_outcome(document: Any, **asked: Any):
    return check_response(exchange(document), COMPLETIONS, {"prompt": "Say this is a test", **asked})


def test_openai_reference_completion_conforms() -> None:
    assert completion_outcome(COMPLETION).deviations == []


def test_completion_finish_reason_allowed_values() -> None:
    document = copy.deepcopy(COMPLETION)
    document["choices"][0]["finish_reason"] = "tool_calls"  # allowed for chat, not for completions
    assert ("schema.enum", "choices[*].finish_reason") in rules(completion_outcome(document).deviations)


def legacy_logprobs(first_logprob: float | None) -> dict[str, Any]:
    return {"tokens": ["Say", " this"], "token_logprobs": [first_logprob, -0.5], "text_offset": [0, 3],
            "top_logprobs": [None if first_logprob is None else {"Say": first_logprob}, {" this": -0.5, " that": -2.0}]}


def test_echo_returns_the_prompt_first_and_may_lack_the_first_logprob() -> None:
    document = copy.deepcopy(COMPLETION)
    document["choices"][0]["text"] = "Say this is a test" + document["choices"][0]["text"]
    document["choices"][0]["logprobs"] = legacy_logprobs(None)
    assert completion_outcome(document, echo=True, logprobs=1).deviations == []
    # without echo the null logprob is a deviation, and so is an echo that lacks the prompt
    assert "schema.null" in {d.rule for d in completion_outcome(document, logprobs=1).deviations}
    document["choices"][0]["text"] = "no prompt here"
    assert "echo.prompt" in {d.rule for d in completion_outcome(document, echo=True, logprobs=1).deviations}


def test_legacy_top_logprobs_may_hold_the_sampled_token_on_top() -> None:
    document = copy.deepcopy(COMPLETION)
    document["choices"][0]["logprobs"] = legacy_logprobs(-0.1)
    assert completion_outcome(document, logprobs=1).deviations == []  # 2 entries: k + 1 is allowed
    document["choices"][0]["logprobs"]["top_logprobs"][1][" those"] = -3.0
    assert "logprobs.top-count" in {d.rule for d in completion_outcome(document, logprobs=1).deviations}
    document["choices"][0]["logprobs"]["token_logprobs"][1] = 1.5
    assert "logprobs.positive" in {d.rule for d in completion_outcome(document, logprobs=5).deviations}
    document["choices"][0]["logprobs"]["text_offset"] = [0]
    assert "logprobs.lengths" in {d.rule for d in completion_outcome(document, logprobs=5).deviations}


# -- streams ---------------------------------------------------------------------------------------------
def chat_stream(chunks: list[Any], done: bool = True, **asked: Any):
    body = {"messages": [], "stream": True, **asked}
    return check_response(stream(chunks, done=done, body=body), CHAT, body)


def test_a_reference_stream_conforms_and_reassembles() -> None:
    outcome = chat_stream(GOOD_STREAM)
    assert outcome.deviations == []
    assert outcome.text() == "Hello!" and outcome.finish_reason() == "stop"


def test_include_usage_stream_ends_with_a_usage_only_chunk() -> None:
    outcome = chat_stream([*GOOD_STREAM, usage_chunk()], stream_options={"include_usage": True})
    assert outcome.deviations == [] and outcome.completion_tokens == 2
    missing = chat_stream(GOOD_STREAM, stream_options={"include_usage": True})
    assert {d.rule for d in missing.deviations} == {"stream.usage-chunk"}
    with_choices = usage_chunk(choices=[{"index": 0, "delta": {}, "finish_reason": None}])
    assert "stream.usage-chunk" in {d.rule for d in chat_stream([*GOOD_STREAM, with_choices],
                                                                stream_options={"include_usage": True}).deviations}
    early = [chunk("", role="assistant", usage=USAGE), *GOOD_STREAM[1:], usage_chunk()]
    assert {d.rule for d in chat_stream(early, stream_options={"include_usage": True}).deviations} == {
        "stream.usage-early"}
    wrong_total = usage_chunk({"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 12})
    assert {d.rule for d in chat_stream([*GOOD_STREAM, wrong_total], stream_options={"include_usage": True}
                                        ).deviations} == {"usage.total"}


@pytest.mark.parametrize(("chunks", "rule"), [
    ([chunk("", role="assistant"), chunk("Hi", id="chatcmpl-other"), chunk(finish="stop")], "stream.id-changed"),
    ([chunk("", role="assistant"), chunk("Hi", created=NOW + 1), chunk(finish="stop")], "stream.created-changed"),
    ([chunk("Hi"), chunk(finish="stop")], "stream.role"),
    ([chunk("", role="assistant"), chunk("Hi", finish="stop"), chunk(finish="stop")], "stream.finish-twice"),
    ([chunk("", role="assistant"), chunk("Hi")], "stream.finish-missing"),
    ([chunk("", role="assistant"), chunk(finish="stop"), chunk("late")], "stream.after-finish"),
    ([chunk("", role="assistant"), chunk("Hi", finish="eos")], "schema.enum"),
    ([chunk("", role="assistant"), '{"id": "chatcmpl-123", "choices": [', chunk(finish="stop")], "json.invalid"),
    ([chunk("", role="assistant"), {"error": {"message": "boom", "type": "InternalServerError", "param": None,
                                              "code": None}}], "stream.error"),
    ([{**chunk("", role="assistant"), "object": "chat.completion"}, chunk(finish="stop")], "schema.enum"),
])
def test_each_stream_deviation_is_caught(chunks: list[Any], rule: str) -> None:
    assert rule in {d.rule for d in chat_stream(chunks).deviations}


def test_a_stream_without_done_is_caught() -> None:
    assert {d.rule for d in chat_stream(GOOD_STREAM, done=False).deviations} == {"stream.done"}


def test_n_streamed_choices_each_start_with_a_role_and_finish_once() -> None:
    chunks = [chunk("", role="assistant", index=0), chunk("", role="assistant", index=1), chunk("A", index=0),
              chunk("B", index=1), chunk(finish="stop", index=1), chunk(finish="length", index=0)]
    outcome = chat_stream(chunks, n=2)
    assert outcome.deviations == [] and outcome.texts() == ["A", "B"]
    assert "stream.finish-missing" in {d.rule for d in chat_stream(chunks[:-1], n=2).deviations}
    assert "stream.role" in {d.rule for d in chat_stream(chunks[:1] + chunks[2:], n=2).deviations}


def test_streamed_logprobs_are_checked() -> None:
    token = {"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": [{"token": "Hi", "logprob": -0.1}]}
    with_logprobs = [chunk("", role="assistant"), {**chunk("Hi"), "choices": [
        {"index": 0, "delta": {"content": "Hi"}, "logprobs": {"content": [token]}, "finish_reason": "stop"}]}]
    assert chat_stream(with_logprobs, logprobs=True, top_logprobs=1).deviations == []
    assert {d.rule for d in chat_stream(with_logprobs, logprobs=True, top_logprobs=0).deviations} == {
        "logprobs.top-count"}
    without = [chunk("", role="assistant"), chunk("Hi", finish="stop")]
    assert {d.rule for d in chat_stream(without, logprobs=True).deviations} == {"logprobs.missing"}


def test_a_stop_sequence_split_across_chunks_is_caught() -> None:
    chunks = [chunk("", role="assistant"), chunk("Hel"), chunk("lo"), chunk(finish="stop")]
    assert {d.rule for d in chat_stream(chunks, stop=["ell"]).deviations} == {"stop.in-output"}


def test_completion_stream_chunks_may_have_null_finish_reason() -> None:
    def piece(text: str, finish: str | None) -> dict[str, Any]:
        return {"id": "cmpl-1", "object": "text_completion", "created": NOW, "model": "m",
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}

    body = {"prompt": "x", "stream": True}
    good = check_response(stream([piece("Hel", None), piece("lo", "length")], body=body), COMPLETIONS, body)
    assert good.deviations == [] and good.text() == "Hello"
    bad = check_response(stream([piece("Hel", None), piece("lo", None)], body=body), COMPLETIONS, body)
    assert {d.rule for d in bad.deviations} == {"stream.finish-missing"}


def test_sse_parsing_follows_the_event_stream_format() -> None:
    events = parse_sse(": comment\r\ndata: {\"a\": 1}\r\n\r\nevent: x\ndata: line1\ndata: line2\n\ndata: [DONE]\n\n")
    assert [(e.data, e.event) for e in events] == [('{"a": 1}', None), ("line1\nline2", "x"), ("[DONE]", None)]


# -- errors ------------------------------------------------------------------------------------------------
def test_openai_error_body_conforms() -> None:
    assert check_error(exchange(ERROR, status=400)) == []
    nulls = {"error": {**ERROR["error"], "param": None, "code": None}}
    assert check_rejection(exchange(nulls, status=404)) == []


@pytest.mark.parametrize("field", ["message", "type", "param", "code"])
def test_each_error_field_is_required(field: str) -> None:
    document = copy.deepcopy(ERROR)
    del document["error"][field]
    assert ("schema.missing", f"error.{field}") in rules(check_error(exchange(document, status=400)))


def test_error_status_and_shape_are_checked() -> None:
    assert "http.5xx" in {d.rule for d in check_error(exchange(ERROR, status=500))}
    assert {d.rule for d in check_rejection(exchange(CHAT_COMPLETION, status=200))} == {"error.accepted"}
    assert "error.json" in {d.rule for d in check_error(exchange(text="Bad Request", status=400,
                                                                   content_type="text/plain"))}
    assert ("schema.missing", "error") in rules(check_error(exchange({"detail": "bad"}, status=422)))
    assert ("schema.type", "error") in rules(check_error(exchange({"error": "bad request"}, status=400)))


def test_vllm_error_code_integer_is_a_known_deviation_only() -> None:
    vllm_style = {"error": {"message": "bad", "type": "BadRequestError", "param": None, "code": 400}}
    found = check_error(exchange(vllm_style, status=400))
    assert rules(found) == {("schema.type", "error.code")}
    new, known = split_known(found, KNOWN_VLLM_DEVIATIONS)
    assert new == [] and [k.key for k, _ in known] == ["error-code-integer"]
    # a different deviation at the same place is not excused
    other = check_error(exchange({"error": {"message": "bad", "type": 400, "param": None, "code": None}}, status=400))
    assert split_known(other, KNOWN_VLLM_DEVIATIONS)[0] == other != []


def test_accept_or_reject_takes_either_but_never_a_5xx() -> None:
    assert check_accept_or_reject(exchange(CHAT_COMPLETION), CHAT, {"messages": []})[1] == []
    assert check_accept_or_reject(exchange(ERROR, status=400), CHAT, {})[1] == []
    assert "http.5xx" in {d.rule for d in check_accept_or_reject(exchange(ERROR, status=500), CHAT, {})[1]}


def test_transport_failure_is_a_deviation() -> None:
    broken = exchange(CHAT_COMPLETION)
    broken.transport_error = "RemoteProtocolError: Server disconnected"
    assert {d.rule for d in check_response(broken, CHAT, {}).deviations} == {"http.no-response"}


def test_model_list() -> None:
    listing = {"object": "list", "data": [{"id": "m", "object": "model", "created": NOW, "owned_by": "vllm"}]}
    assert check_model_list(exchange(listing), "m") == []
    assert {d.rule for d in check_model_list(exchange(listing), "other")} == {"models.missing"}
    del listing["data"][0]["owned_by"]
    assert ("schema.missing", "data[*].owned_by") in rules(check_model_list(exchange(listing), "m"))


def forced(text: str, tokens: list[str], finish: str = "length"):
    document = copy.deepcopy(COMPLETION)
    document["choices"][0].update(text=text, finish_reason=finish, logprobs={
        "tokens": tokens, "token_logprobs": [-0.1] * len(tokens), "text_offset": list(range(len(tokens))),
        "top_logprobs": [{t: -0.1} for t in tokens]})
    return completion_outcome(document, logprobs=0)


def test_forced_token_text() -> None:
    assert check_forced_text(forced(" yes yes", [" yes", " yes"]), " yes", 2) == []
    leaked = check_forced_text(forced("ab\ufffd yes yes", [" yes", " yes"]), " yes", 2)
    assert [(d.rule, d.path) for d in leaked] == [("text.not-generated", "choices[0].text")]
    assert split_known(leaked, KNOWN_VLLM_DEVIATIONS)[0] == []
    assert {d.rule for d in check_forced_text(forced(" yes no", [" yes", " no"]), " yes", 2)} == {
        "logit_bias.not-forced", "logit_bias.text"}
    assert {d.rule for d in check_forced_text(forced(" yes", [" yes"], "stop"), " yes", 1)} == {"logit_bias.finish"}
