"""The request strategies generate what they claim.

Valid requests must be valid for openai-python's own request types (``CompletionCreateParams`` of
chat and of legacy completions, checked strictly, vLLM's extra sampling fields set aside) and
inside the documented ranges; each invalid request must really break the rule it names; hostile
requests must never ask for long or wide generations.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from typing import Any

import jsonschema
import pydantic
import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

from pytest_vllm.conformance import strategies as S
from pytest_vllm.conformance.probe import StrictJSONError, loads_strict

# vLLM's sampling parameters that the OpenAI request types do not have.
VLLM_EXTRAS = {"top_k", "min_p", "min_tokens", "stop_token_ids", "repetition_penalty", "ignore_eos"}
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# find() without shrinking: only that an example exists matters here.
FIND = settings(max_examples=3000, database=None, phases=[Phase.generate], deadline=None)


def exists(strategy: st.SearchStrategy[Any], condition: Callable[[Any], bool]) -> Any:
    return find(strategy, condition, settings=FIND)


@functools.cache
def request_schema(endpoint: str, stream: bool) -> jsonschema.Draft202012Validator:
    """openai-python's request TypedDict as a JSON Schema (pydantic writes it), unknown keys refused."""
    from openai.types import completion_create_params as completion_params
    from openai.types.chat import completion_create_params as chat_params

    params = chat_params if endpoint == S.CHAT else completion_params
    kind = params.CompletionCreateParamsStreaming if stream else params.CompletionCreateParamsNonStreaming
    schema = {**pydantic.TypeAdapter(kind).json_schema(), "additionalProperties": False}
    return jsonschema.Draft202012Validator(schema)


def sdk_validate(endpoint: str, body: dict[str, Any]) -> None:
    document = {"model": "m", **{k: v for k, v in body.items() if k not in VLLM_EXTRAS}}
    errors = [f"{list(e.absolute_path)}: {e.message[:200]}"
              for e in request_schema(endpoint, bool(body.get("stream"))).iter_errors(document)]
    assert not errors, errors


def test_the_sdk_request_schema_refuses_what_it_must() -> None:
    with pytest.raises(AssertionError, match="temperature"):
        sdk_validate(S.CHAT, {"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"})
    with pytest.raises(AssertionError, match="messages"):
        sdk_validate(S.CHAT, {"messages": [{"role": "wizard", "content": "hi"}]})
    with pytest.raises(AssertionError, match="Additional properties"):
        sdk_validate(S.COMPLETIONS, {"prompt": "hi", "max_token": 3})


def check_common_ranges(body: dict[str, Any]) -> None:
    json.dumps(body, allow_nan=False)  # strict JSON: no NaN/Infinity
    limit = body.get("max_tokens", body.get("max_completion_tokens"))
    assert isinstance(limit, int) and 1 <= limit <= 8
    assert 0 <= body.get("min_tokens", 0) <= limit
    assert 0 <= body.get("temperature", 0) <= 2
    assert 0 < body.get("top_p", 1) <= 1
    assert body.get("top_k", -1) in (-1, 0) or body["top_k"] >= 1
    if body.get("n", 1) > 1:
        assert body.get("temperature") != 0
    assert 0 <= body.get("min_p", 0) <= 1
    assert 1 <= body.get("n", 1) <= 3
    for name in ("presence_penalty", "frequency_penalty"):
        assert -2 <= body.get(name, 0) <= 2
    assert body.get("repetition_penalty", 1) > 0
    for key, bias in body.get("logit_bias", {}).items():
        assert key.isdigit() and -100 <= bias <= 100
    stop = body.get("stop", [])
    assert (isinstance(stop, str) and stop) or (isinstance(stop, list) and len(stop) <= 4 and all(stop))
    if "stream_options" in body:
        assert body.get("stream") is True


@FAST
@given(S.chat_requests())
def test_chat_requests_are_valid_for_the_sdk_and_in_range(body: dict[str, Any]) -> None:
    sdk_validate(S.CHAT, body)
    check_common_ranges(body)
    if "top_logprobs" in body:
        assert body["logprobs"] is True and 0 <= body["top_logprobs"] <= 20
    assert body["messages"][-1]["role"] == "user"
    if "response_format" in body and body["response_format"]["type"] == "json_schema":
        jsonschema.Draft202012Validator.check_schema(body["response_format"]["json_schema"]["schema"])


@FAST
@given(S.completion_requests())
def test_completion_requests_are_valid_for_the_sdk_and_in_range(body: dict[str, Any]) -> None:
    sdk_validate(S.COMPLETIONS, body)
    check_common_ranges(body)
    assert 0 <= body.get("logprobs", 0) <= 5


@pytest.mark.parametrize("want", [True, False])
def test_stream_can_be_forced(want: bool) -> None:
    body = exists(S.chat_requests(stream=want), lambda b: True)
    assert body.get("stream", False) is want


def test_every_parameter_of_the_issue_is_generated() -> None:
    """Each sampling parameter the issue lists shows up in some generated request."""
    for name in ("temperature", "top_p", "top_k", "min_p", "max_completion_tokens", "min_tokens", "stop",
                 "stop_token_ids", "n", "seed", "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty",
                 "repetition_penalty", "logit_bias", "ignore_eos", "response_format", "stream", "stream_options"):
        exists(S.chat_requests(), lambda b, name=name: name in b)
    for name in ("echo", "max_tokens", "logprobs"):
        exists(S.completion_requests(), lambda b, name=name: name in b)
    exists(S.chat_requests(), lambda b: b.get("response_format", {}).get("type") == "json_schema")
    exists(S.chat_requests(), lambda b: b.get("response_format", {}).get("type") == "json_object")
    exists(S.chat_requests(), lambda b: b.get("stream_options", {}).get("include_usage") is True)
    exists(S.chat_requests(), lambda b: isinstance(b["messages"][-1]["content"], list))


# -- invalid requests: each breaks the rule it names --------------------------------------------------
def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


BREAKS = {
    "the required field is missing": lambda b: "messages" not in b and "prompt" not in b,
    "model names no served model (404)": lambda b: b["model"].startswith("no-such-model"),
    "max_tokens is negative": lambda b: b["max_tokens"] < 0,
    "max_tokens is not an integer": lambda b: not (isinstance(b["max_tokens"], int)
                                                   and not isinstance(b["max_tokens"], bool)),
    "max_tokens exceeds the context window": lambda b: b["max_tokens"] >= 10**6,
    "n is below 1": lambda b: b["n"] < 1,
    "temperature is negative": lambda b: b["temperature"] < 0,
    "temperature is not a number": lambda b: not _number(b["temperature"]),
    "top_p is above 1": lambda b: b["top_p"] > 1,
    "top_p is negative": lambda b: b["top_p"] < 0,
    "presence_penalty is outside [-2, 2]": lambda b: abs(b["presence_penalty"]) > 2,
    "frequency_penalty is outside [-2, 2]": lambda b: abs(b["frequency_penalty"]) > 2,
    "stream_options without stream": lambda b: "stream_options" in b and not b.get("stream"),
    "stream is not a boolean": lambda b: not isinstance(b["stream"], bool),
    "seed is not an integer": lambda b: not isinstance(b["seed"], int),
    "seed is outside int64": lambda b: not -(2**63) <= b["seed"] < 2**63,
    "logit_bias key is not a token id": lambda b: not all(k.isdigit() for k in b["logit_bias"]),
    "logit_bias names a token outside the vocabulary": lambda b: all(int(k) >= 10**8 for k in b["logit_bias"]),
    "the prompt is longer than the context window": lambda b: len(json.dumps(b)) > 20_000,
    "top_k is below -1 (vLLM)": lambda b: b["top_k"] < -1,
    "min_p is outside [0, 1] (vLLM)": lambda b: not 0 <= b["min_p"] <= 1,
    "repetition_penalty is not positive (vLLM)": lambda b: b["repetition_penalty"] <= 0,
    "min_tokens is negative (vLLM)": lambda b: b["min_tokens"] < 0,
    "min_tokens exceeds max_tokens (vLLM)": lambda b: b["min_tokens"] > b["max_tokens"],
    "temperature is above 2": lambda b: b["temperature"] > 2,
    "stop has more than 4 sequences": lambda b: len(b["stop"]) > 4,
    "stop_token_ids holds a negative id (vLLM)": lambda b: min(b["stop_token_ids"]) < 0,
    "messages is not an array": lambda b: not isinstance(b["messages"], list),
    "a message has no role": lambda b: any("role" not in m for m in b["messages"]),
    "a message content has the wrong type": lambda b: not all(isinstance(m["content"], (str, list))
                                                              for m in b["messages"]),
    "top_logprobs is above 20": lambda b: b["top_logprobs"] > 20,
    "top_logprobs is negative": lambda b: b["top_logprobs"] < 0,
    "response_format has an unknown type": lambda b: b["response_format"]["type"] not in (
        "text", "json_object", "json_schema"),
    "response_format json_schema without json_schema": lambda b: "json_schema" not in b["response_format"],
    "logprobs is above 20": lambda b: b["logprobs"] > 20,
    "echo is not a boolean": lambda b: not isinstance(b["echo"], bool),
    "the prompt token ids are outside the vocabulary": lambda b: all(t >= 10**8 for t in b["prompt"]),
}


@settings(max_examples=400, deadline=None)
@given(S.invalid_requests("served"))
def test_invalid_requests_break_the_rule_they_name(invalid: S.Invalid) -> None:
    assert invalid.rule in BREAKS, f"no check for the rule {invalid.rule!r}"
    assert BREAKS[invalid.rule](invalid.body), invalid
    assert invalid.param == "" or invalid.param in ("messages", "prompt") or invalid.param in invalid.body
    assert invalid.body.get("model") is not None


@pytest.mark.parametrize("rule", sorted(BREAKS))
def test_every_invalid_rule_is_generated(rule: str) -> None:
    exists(S.invalid_requests("served"), lambda invalid: invalid.rule == rule)


@settings(max_examples=100, deadline=None)
@given(S.malformed_bodies())
def test_malformed_bodies_are_not_json_objects(invalid: S.Invalid) -> None:
    assert invalid.body is None and invalid.payload is not None
    try:
        document = loads_strict(invalid.payload.decode())
    except (StrictJSONError, ValueError):
        return
    assert not isinstance(document, dict)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(S.hostile_requests("served"))
def test_hostile_requests_never_ask_for_long_or_wide_generations(request: tuple[str, dict[str, Any]]) -> None:
    endpoint, body = request
    assert endpoint in (S.CHAT, S.COMPLETIONS) and body["model"] == "served"
    for name, limit in S.COSTLY.items():
        value = body.get(name)
        if _number(value):
            assert value <= limit or (isinstance(value, float) and not math.isfinite(value))
    assert body.get("stream") is not True


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_json_schemas_are_valid_and_satisfiable(data: st.DataObject) -> None:
    schema = data.draw(S.json_schemas())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["required"] == list(schema["properties"]) and schema["additionalProperties"] is False
    sample = {name: {"string": "ab", "integer": 7, "boolean": True}.get(spec["type"], "red")
              if "enum" not in spec else spec["enum"][0] for name, spec in schema["properties"].items()}
    jsonschema.validate(sample, schema)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_refused_vllm_extensions_are_left_out(data: st.DataObject) -> None:
    """For a server that refuses vLLM's own parameters, none of them is generated, valid or not."""
    extensions = data.draw(st.sets(st.sampled_from(sorted(S.VLLM_EXTENSIONS))).map(frozenset))
    refused = S.VLLM_EXTENSIONS - extensions
    for strategy in (S.chat_requests(extensions=extensions), S.completion_requests(extensions=extensions)):
        assert not refused & set(data.draw(strategy))
    for strategy in (S.greedy_requests(extensions=extensions), S.seeded_requests(extensions=extensions)):
        assert not refused & set(data.draw(strategy)[1])
    invalid = data.draw(S.invalid_requests("served", extensions=extensions))
    assert invalid.param not in refused
