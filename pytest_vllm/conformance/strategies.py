"""Hypothesis strategies for ``/v1/chat/completions`` and ``/v1/completions`` request bodies.

Valid requests stay inside what both the OpenAI API reference and vLLM's sampling parameters
allow (ranges from ``CreateChatCompletionRequest`` / ``CreateCompletionRequest`` and vLLM's
``SamplingParams``), so a rejection of one is a deviation. Invalid requests each break exactly one
documented rule, named in ``Invalid.rule``; "hostile" requests put arbitrary JSON into one field
and may be accepted or refused, but never crash the server.

Bodies carry no ``model``: the runner adds the served model name (or, for the unknown-model
case, keeps the one given). Output lengths are kept small: a CPU server decodes ~30 tokens/s.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from pytest_vllm.conformance.extensions import ALL as VLLM_EXTENSIONS

CHAT = "chat"
COMPLETIONS = "completions"

# Prompts a small instruct model answers normally, plus text that stresses tokenizers/detokenizers.
PROMPTS = (
    "What is the capital of France?",
    "Say hello.",
    "Count from one to five.",
    "Name three colors.",
    "Write a haiku about the sea.",
    "Translate 'good morning' into Spanish.",
    "What is 2 + 2?",
    "Reply with just the word OK.",
    "Repeat after me: 😀 naïve café 東京 ½",
    "List the days of the week.",
)
COMPLETION_PROMPTS = (
    "The capital of France is",
    "Once upon a time",
    "1, 2, 3, 4,",
    "def fibonacci(n):",
    "The quick brown fox",
    "Q: What is the largest planet?\nA:",
    "東京は",
    "Emoji: 😀",
)
# Short strings that occur in typical outputs, so that stop sequences really trigger.
COMMON_STOPS = (".", ",", "\n", " the", "The", "!", " is", "Paris", "1", "a", "😀", "?")
# Token ids below 1000 exist in every real vocabulary; the small model pair has 49152.
SAFE_TOKEN_ID = st.integers(min_value=1, max_value=999)

free_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=40)
prompt_text = st.one_of(st.sampled_from(PROMPTS), free_text)
completion_prompt = st.one_of(st.sampled_from(COMPLETION_PROMPTS), free_text)


# -- messages ----------------------------------------------------------------------------------
@st.composite
def message_content(draw: st.DrawFn, text: st.SearchStrategy[str] = prompt_text) -> Any:
    """A string, or a list of text content parts (both forms are in the API)."""
    value = draw(text)
    if draw(st.booleans()):
        return value
    return [{"type": "text", "text": part} for part in ([value] + draw(st.lists(free_text, max_size=1)))]


@st.composite
def messages(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Optional system/developer message, alternating user/assistant turns, ending with a user turn."""
    out: list[dict[str, Any]] = []
    if draw(st.booleans()):
        out.append({"role": draw(st.sampled_from(["system", "developer"])),
                    "content": draw(st.sampled_from(["You are a helpful assistant.", "Be brief."]))})
    for _ in range(draw(st.integers(0, 1))):
        out.append({"role": "user", "content": draw(message_content())})
        out.append({"role": "assistant", "content": draw(st.sampled_from(["Sure.", "Hello!", "OK."]))})
    user: dict[str, Any] = {"role": "user", "content": draw(message_content())}
    if draw(st.integers(0, 4)) == 0:
        user["name"] = "tester"
    out.append(user)
    return out


# -- sampling parameters -------------------------------------------------------------------------
def _floats(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False).map(lambda x: round(x, 3))


temperatures = st.one_of(st.just(0.0), _floats(0.0, 1.5))
top_ps = _floats(0.05, 1.0)
top_ks = st.one_of(st.sampled_from([-1, 0]), st.integers(1, 50))  # vLLM: -1 and 0 disable top-k
min_ps = _floats(0.0, 0.5)
penalties = _floats(-2.0, 2.0)
repetition_penalties = _floats(0.5, 2.0)
seeds = st.integers(0, 2**31 - 1)
stop_strings = st.one_of(st.sampled_from(COMMON_STOPS), st.text(min_size=1, max_size=3))
stops = st.one_of(stop_strings, st.lists(stop_strings, min_size=1, max_size=4, unique=True))
logit_biases = st.dictionaries(SAFE_TOKEN_ID.map(str), st.integers(-100, 100),  # integers: openai-python types it so
                               max_size=3)


@st.composite
def sampling(draw: st.DrawFn, endpoint: str, max_tokens: int = 8, n_max: int = 3,
             extensions: frozenset[str] = VLLM_EXTENSIONS) -> dict[str, Any]:
    """Sampling parameters of one request; each one present or absent (vLLM's extensions only
    those in ``extensions``)."""
    # Always seeded: a sampled output then replays exactly, so a failure reproduces (curl included).
    body: dict[str, Any] = {"seed": draw(seeds)}
    limit = draw(st.integers(1, max_tokens))
    key = "max_tokens" if endpoint == COMPLETIONS or draw(st.booleans()) else "max_completion_tokens"
    body[key] = limit
    optional = {
        "temperature": temperatures,
        "top_p": top_ps,
        "top_k": top_ks,
        "min_p": min_ps,
        "min_tokens": st.integers(0, limit),
        "stop": stops,
        "stop_token_ids": st.lists(SAFE_TOKEN_ID, max_size=2),
        "n": st.integers(1, n_max),
        "presence_penalty": penalties,
        "frequency_penalty": penalties,
        "repetition_penalty": repetition_penalties,
        "logit_bias": logit_biases,
        "ignore_eos": st.booleans(),
    }
    for name, strategy in optional.items():
        if name in VLLM_EXTENSIONS and name not in extensions:
            continue
        if draw(st.integers(0, 2)) == 0:
            body[name] = draw(strategy)
    if body.get("n", 1) > 1 and body.get("temperature") == 0:
        # vLLM refuses n > 1 at temperature 0 (a known deviation with its own test): sample instead
        body["temperature"] = draw(_floats(0.1, 1.5))
    if endpoint == CHAT:
        if draw(st.integers(0, 2)) == 0:
            body["logprobs"] = True
            if draw(st.booleans()):
                body["top_logprobs"] = draw(st.integers(0, 5))
    else:
        if draw(st.integers(0, 2)) == 0:
            body["logprobs"] = draw(st.integers(0, 5))
        if draw(st.integers(0, 3)) == 0:
            body["echo"] = True
    return body


@st.composite
def json_schemas(draw: st.DrawFn) -> dict[str, Any]:
    """A small object schema: 1-2 required properties (short string, integer, boolean or enum)."""
    kinds = {
        "string": {"type": "string", "maxLength": 8},
        "integer": {"type": "integer", "minimum": 0, "maximum": 99},
        "boolean": {"type": "boolean"},
        "enum": {"type": "string", "enum": ["red", "green", "blue"]},
    }
    names = draw(st.lists(st.sampled_from(["name", "age", "ok", "color", "city"]), min_size=1, max_size=2,
                          unique=True))
    properties = {name: kinds[draw(st.sampled_from(sorted(kinds)))] for name in names}
    return {"type": "object", "properties": properties, "required": names, "additionalProperties": False}


def json_schema_format(schema: dict[str, Any], name: str = "answer") -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


response_formats = st.one_of(
    st.just({"type": "text"}),
    st.just({"type": "json_object"}),
    json_schemas().map(json_schema_format),
)


@st.composite
def streaming(draw: st.DrawFn, stream: bool | None = None) -> dict[str, Any]:
    """``stream`` (drawn unless given) and, when streaming, maybe ``stream_options``."""
    on = draw(st.booleans()) if stream is None else stream
    if not on:
        return {}
    body: dict[str, Any] = {"stream": True}
    if draw(st.booleans()):
        body["stream_options"] = {"include_usage": draw(st.booleans())}
    return body


# -- whole requests ------------------------------------------------------------------------------
@st.composite
def chat_requests(draw: st.DrawFn, stream: bool | None = None, max_tokens: int = 8,
                  extensions: frozenset[str] = VLLM_EXTENSIONS) -> dict[str, Any]:
    """A valid chat completion request (any documented parameter may appear)."""
    body: dict[str, Any] = {"messages": draw(messages())}
    body.update(draw(sampling(CHAT, max_tokens=max_tokens, extensions=extensions)))
    if draw(st.integers(0, 3)) == 0:
        body["response_format"] = draw(response_formats)
    body.update(draw(streaming(stream)))
    return body


@st.composite
def completion_requests(draw: st.DrawFn, stream: bool | None = None, max_tokens: int = 8,
                        extensions: frozenset[str] = VLLM_EXTENSIONS) -> dict[str, Any]:
    """A valid legacy completion request (a text prompt, or a list of token ids)."""
    prompt: Any = draw(completion_prompt) if draw(st.integers(0, 5)) else draw(
        st.lists(st.integers(100, 999), min_size=1, max_size=8))
    body: dict[str, Any] = {"prompt": prompt}
    body.update(draw(sampling(COMPLETIONS, max_tokens=max_tokens, extensions=extensions)))
    body.update(draw(streaming(stream)))
    return body


@st.composite
def prompts(draw: st.DrawFn, endpoint: str | None = None) -> tuple[str, dict[str, Any]]:
    """(endpoint, the prompt part of a body) for behaviour properties."""
    chosen = endpoint or draw(st.sampled_from([CHAT, COMPLETIONS]))
    if chosen == CHAT:
        return chosen, {"messages": [{"role": "user", "content": draw(prompt_text)}]}
    return chosen, {"prompt": draw(completion_prompt)}


def limit_key(endpoint: str) -> str:
    return "max_tokens" if endpoint == COMPLETIONS else "max_completion_tokens"


@st.composite
def greedy_requests(draw: st.DrawFn, endpoint: str | None = None, max_tokens: int = 8,
                    extensions: frozenset[str] = VLLM_EXTENSIONS, with_penalties: bool = True
                    ) -> tuple[str, dict[str, Any]]:
    """(endpoint, body) at temperature 0, with parameters that keep decoding deterministic
    (``with_penalties=False``: no penalties, so the logprobs are those the sampler ranks by)."""
    endpoint, body = draw(prompts(endpoint))
    body[limit_key(endpoint)] = draw(st.integers(1, max_tokens))
    body["temperature"] = 0
    optional: dict[str, Any] = {"presence_penalty": penalties, "frequency_penalty": penalties,
                                "repetition_penalty": repetition_penalties} if with_penalties else {}
    for name, strategy in {**optional, "stop": stops}.items():
        if name in VLLM_EXTENSIONS and name not in extensions:
            continue
        if draw(st.integers(0, 3)) == 0:
            body[name] = draw(strategy)
    return endpoint, body


@st.composite
def seeded_requests(draw: st.DrawFn, max_tokens: int = 8,
                    extensions: frozenset[str] = VLLM_EXTENSIONS) -> tuple[str, dict[str, Any]]:
    """(endpoint, body) that samples (temperature 0.5-1.5) with a seed, maybe with n = 2."""
    endpoint, body = draw(prompts())
    body[limit_key(endpoint)] = draw(st.integers(2, max_tokens))
    body["temperature"] = draw(_floats(0.5, 1.5))
    body["seed"] = draw(seeds)
    for name, strategy in {"top_p": top_ps, "top_k": top_ks, "min_p": min_ps, "n": st.integers(1, 2)}.items():
        if name in VLLM_EXTENSIONS and name not in extensions:
            continue
        if draw(st.integers(0, 2)) == 0:
            body[name] = draw(strategy)
    return endpoint, body


# -- invalid requests ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Invalid:
    """A request that breaks one documented rule and must be refused with a 4xx."""

    endpoint: str
    rule: str  # what it breaks, for the failure message
    param: str = ""  # the request field at fault ("" for the body as a whole)
    body: Any = None  # a JSON document, or None when ``payload`` is set
    payload: bytes | None = None  # raw bytes (not JSON, or not an object)
    content_type: str = "application/json"


def _base(endpoint: str) -> dict[str, Any]:
    if endpoint == CHAT:
        return {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 4}
    return {"prompt": "Hello", "max_tokens": 4}


not_a_number = st.one_of(st.text(st.characters(categories=["L"]), min_size=1, max_size=5), st.lists(
    st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=1))
not_an_int = st.one_of(not_a_number, st.floats(0.1, 10).filter(lambda x: not x.is_integer()))


@st.composite
def invalid_requests(draw: st.DrawFn, model: str, long_prompt_words: int = 4000,
                     extensions: frozenset[str] = VLLM_EXTENSIONS) -> Invalid:
    """One request that must be refused. ``model`` is the served name (an unknown one is made up).
    A bad value of one of vLLM's extensions is only sent if the server takes that extension at all."""
    endpoint = draw(st.sampled_from([CHAT, COMPLETIONS]))
    body = {"model": model, **_base(endpoint)}
    field = "messages" if endpoint == CHAT else "prompt"
    cases: list[tuple[str, str, Callable[[dict[str, Any]], Any]]] = [
        ("the required field is missing", field, lambda b: b.pop(field)),
        ("model names no served model (404)", "model",
         lambda b: b.update(model=f"no-such-model-{draw(st.integers(0, 99))}")),
        ("max_tokens is negative", "max_tokens", lambda b: b.update(max_tokens=draw(st.integers(-10**6, -1)))),
        ("max_tokens is not an integer", "max_tokens", lambda b: b.update(max_tokens=draw(not_an_int))),
        ("max_tokens exceeds the context window", "max_tokens",
         lambda b: b.update(max_tokens=draw(st.integers(10**6, 10**9)))),
        ("n is below 1", "n", lambda b: b.update(n=draw(st.integers(-5, 0)))),
        ("temperature is negative", "temperature", lambda b: b.update(temperature=draw(_floats(-5.0, -0.01)))),
        ("temperature is above 2", "temperature", lambda b: b.update(temperature=draw(_floats(2.01, 100.0)))),
        ("temperature is not a number", "temperature", lambda b: b.update(temperature=draw(not_a_number))),
        ("top_p is above 1", "top_p", lambda b: b.update(top_p=draw(_floats(1.01, 10.0)))),
        ("top_p is negative", "top_p", lambda b: b.update(top_p=draw(_floats(-5.0, -0.01)))),
        ("presence_penalty is outside [-2, 2]", "presence_penalty", lambda b: b.update(
            presence_penalty=draw(st.one_of(_floats(2.01, 50.0), _floats(-50.0, -2.01))))),
        ("frequency_penalty is outside [-2, 2]", "frequency_penalty", lambda b: b.update(
            frequency_penalty=draw(st.one_of(_floats(2.01, 50.0), _floats(-50.0, -2.01))))),
        ("stop has more than 4 sequences", "stop", lambda b: b.update(
            stop=draw(st.lists(st.text(min_size=1, max_size=3), min_size=5, max_size=8, unique=True)))),
        ("stream_options without stream", "stream_options",
         lambda b: b.update(stream_options={"include_usage": True})),
        ("stream is not a boolean", "stream",
         lambda b: b.update(stream=draw(st.sampled_from(["maybe", [True], {"a": 1}])))),
        ("seed is not an integer", "seed", lambda b: b.update(seed=draw(st.sampled_from(["x", [1], 1.5])))),
        ("seed is outside int64", "seed", lambda b: b.update(seed=draw(st.sampled_from([2**64, 2**70, -(2**64)])))),
        ("logit_bias key is not a token id", "logit_bias",
         lambda b: b.update(logit_bias={draw(st.sampled_from(["abc", "-", "1.5x"])): 1})),
        ("logit_bias names a token outside the vocabulary", "logit_bias",
         lambda b: b.update(logit_bias={str(draw(st.integers(10**8, 10**9))): 1})),
        ("the prompt is longer than the context window", field, lambda b: b.update(
            {field: ([{"role": "user", "content": "hello " * long_prompt_words}] if endpoint == CHAT
                     else "hello " * long_prompt_words)})),
        ("top_k is below -1 (vLLM)", "top_k", lambda b: b.update(top_k=draw(st.integers(-100, -2)))),
        ("min_p is outside [0, 1] (vLLM)", "min_p",
         lambda b: b.update(min_p=draw(st.one_of(_floats(1.01, 5.0), _floats(-5.0, -0.01))))),
        ("repetition_penalty is not positive (vLLM)", "repetition_penalty",
         lambda b: b.update(repetition_penalty=draw(_floats(-2.0, 0.0)))),
        ("min_tokens is negative (vLLM)", "min_tokens", lambda b: b.update(min_tokens=draw(st.integers(-100, -1)))),
        ("min_tokens exceeds max_tokens (vLLM)", "min_tokens",
         lambda b: b.update(min_tokens=draw(st.integers(5, 100)))),
        ("stop_token_ids holds a negative id (vLLM)", "stop_token_ids",
         lambda b: b.update(stop_token_ids=[draw(st.integers(-(10**6), -1))])),
    ]
    if endpoint == CHAT:
        cases += [
            ("messages is not an array", "messages",
             lambda b: b.update(messages=draw(st.sampled_from(["hi", {"role": "user"}, 5])))),
            ("a message has no role", "messages", lambda b: b.update(messages=[{"content": "hi"}])),
            ("a message content has the wrong type", "messages", lambda b: b.update(
                messages=[{"role": "user", "content": draw(st.sampled_from([5, True, {"x": 1}]))}])),
            ("top_logprobs is above 20", "top_logprobs",
             lambda b: b.update(logprobs=True, top_logprobs=draw(st.integers(21, 1000)))),
            ("top_logprobs is negative", "top_logprobs",
             lambda b: b.update(logprobs=True, top_logprobs=draw(st.integers(-50, -1)))),
            ("response_format has an unknown type", "response_format",
             lambda b: b.update(response_format={"type": draw(st.sampled_from(["yaml", "xml", ""]))})),
            ("response_format json_schema without json_schema", "response_format",
             lambda b: b.update(response_format={"type": "json_schema"})),
        ]
    else:
        cases += [
            ("logprobs is above 20", "logprobs", lambda b: b.update(logprobs=draw(st.integers(21, 1000)))),
            ("echo is not a boolean", "echo", lambda b: b.update(echo=draw(st.sampled_from(["x", [1], {"a": 1}])))),
            ("the prompt token ids are outside the vocabulary", "prompt",
             lambda b: b.update(prompt=[draw(st.integers(10**8, 10**9))])),
        ]
    cases = [case for case in cases if case[1] not in VLLM_EXTENSIONS or case[1] in extensions]
    rule, param, mutate = draw(st.sampled_from(cases))
    mutate(body)
    return Invalid(endpoint, rule, param, body=body)


@st.composite
def malformed_bodies(draw: st.DrawFn) -> Invalid:
    """A body that is not a JSON object at all (broken JSON, an array, a string, NaN, empty)."""
    endpoint = draw(st.sampled_from([CHAT, COMPLETIONS]))
    kind = draw(st.sampled_from(["truncated", "array", "string", "nan", "empty", "trailing"]))
    valid = json.dumps(_base(endpoint))
    payload = {
        "truncated": valid[:draw(st.integers(1, len(valid) - 1))],
        "array": "[]",
        "string": json.dumps(draw(free_text)),
        "nan": valid[:-1] + ', "temperature": NaN}',
        "empty": "",
        "trailing": valid + "}",
    }[kind]
    return Invalid(endpoint, f"the body is not a JSON object ({kind})", payload=payload.encode("utf-8"))


# -- hostile requests: arbitrary JSON in one field -------------------------------------------------
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=6,
)
FUZZED_FIELDS = ("messages", "prompt", "temperature", "top_p", "top_k", "min_p", "n", "stop", "stop_token_ids",
                 "seed", "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty", "repetition_penalty",
                 "logit_bias", "ignore_eos", "echo", "response_format", "stream", "stream_options", "max_tokens",
                 "min_tokens", "user", "tools", "tool_choice", "unknown_field")
# A valid value here would let one request decode for a long time (or many sequences): only
# values that are small or invalid are kept for these fields.
COSTLY = {"n": 4, "max_tokens": 16, "min_tokens": 16, "top_logprobs": 20, "logprobs": 20}


def _cheap(name: str, value: Any) -> bool:
    limit = COSTLY.get(name)
    if limit is None or isinstance(value, bool):
        return True
    return not isinstance(value, (int, float)) or value <= limit


@st.composite
def hostile_requests(draw: st.DrawFn, model: str) -> tuple[str, dict[str, Any]]:
    """(endpoint, body): a small valid request with one field replaced by arbitrary JSON."""
    endpoint = draw(st.sampled_from([CHAT, COMPLETIONS]))
    body: dict[str, Any] = {"model": model, **_base(endpoint)}
    name = draw(st.sampled_from(FUZZED_FIELDS))
    body[name] = draw(json_values.filter(lambda v: _cheap(name, v)))
    if name == "stream" and body["stream"] is True:  # exercised by the stream properties
        body["stream"] = False
    return endpoint, body
