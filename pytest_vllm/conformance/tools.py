"""Tool calling on ``/v1/chat/completions``: request strategies and the checks of the calls.

Tool calling is what quantization tends to break first (a call whose arguments no longer parse, or
no longer fit the schema, while task accuracy still looks fine), so the checks look at every call:

- a named ``tool_choice`` or ``"required"`` yields ``message.tool_calls``: each with a non-empty id,
  unique in the message, ``type: "function"``, the function asked (named) or one declared
  (required), and ``arguments`` that parse as JSON and validate against the declared ``parameters``
  (a function without ``parameters`` takes none: ``{}``); ``finish_reason`` is ``"tool_calls"``, except
  after a named choice, where OpenAI's API answers ``"stop"`` (measured on gpt-4o, streamed or not, in
  vllm-project/vllm#25054, which aligned vLLM with it; the API reference says only "tool_calls if the
  model called a tool");
- ``"none"`` yields no calls (``finish_reason`` ``stop`` or ``length``); ``"auto"`` either calls (then
  as above) or answers in text;
- a streamed call is spread over ``delta.tool_calls`` entries keyed by ``index``: the first one of an
  index carries ``id``, ``type`` and ``function.name``, later ones append ``function.arguments``;
  reassembled, they are the call (checked as above, and compared with the non-streamed one at
  temperature 0 by the suite).

Field types (``ChatCompletionMessageToolCall``, ``ChoiceDeltaToolCall``) are checked by the chat
validators already, from openai-python's models; these checks add what the request asked for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from pytest_vllm.conformance.deviations import Deviation
from pytest_vllm.conformance.probe import StrictJSONError, loads_strict
from pytest_vllm.conformance.validators import Outcome

NONE, AUTO, REQUIRED, NAMED = "none", "auto", "required", "named"
# What a tool call request costs: arguments are short JSON, but guided decoding may spend tokens on
# whitespace; a call cut at this limit is discarded by the properties (never judged), and counted
# as invalid by the valid-call rate (both servers under the same limit).
TOOL_MAX_TOKENS = 96
# vLLM 0.32 refuses every tool_choice but "none" on a server started without a tool parser
# ('tool_choice="required" requires --tool-call-parser to be set'; "auto" also needs
# --enable-auto-tool-choice): a property then has nothing to check, and says which flags it needs.
PARSER_FLAG = "--tool-call-parser"

FUNCTION_NAMES = ("get_weather", "lookup_user", "convert_units", "book_table", "search_docs", "send_email",
                  "add_numbers", "set-alarm")
DESCRIPTIONS = ("Get the current weather of a city.", "Find a user by name.", "Convert a value between units.",
                "Reserve a table at a restaurant.", "Search the documentation.", "Send an email.")
PROPERTY_NAMES = ("city", "name", "count", "unit", "ok", "days", "query", "tags", "when", "level")
ASKS = ("What is the weather in Paris?", "Call the tool for me.", "Book a table for two tonight.",
        "Find the user called Ada.", "Add 2 and 3.", "Please use one of the functions.")

# JSON-schema property shapes, each bounded so that a guided argument stays a few tokens long.
PROPERTY_SCHEMAS: dict[str, dict[str, Any]] = {
    "string": {"type": "string", "maxLength": 8},
    "integer": {"type": "integer", "minimum": 0, "maximum": 99},
    "boolean": {"type": "boolean"},
    "enum": {"type": "string", "enum": ["low", "mid", "high"]},
    "array": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "maxItems": 2},
    "object": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
               "required": ["n"], "additionalProperties": False},
}


@st.composite
def parameter_schemas(draw: st.DrawFn) -> dict[str, Any] | None:
    """A function's ``parameters``: None (no parameters), or an object of 0-3 properties of varied
    shape, some or all required, with or without a description per property."""
    if draw(st.integers(0, 7)) == 0:
        return None
    names = draw(st.lists(st.sampled_from(PROPERTY_NAMES), min_size=0, max_size=3, unique=True))
    properties: dict[str, Any] = {}
    for name in names:
        shape = dict(PROPERTY_SCHEMAS[draw(st.sampled_from(sorted(PROPERTY_SCHEMAS)))])
        if draw(st.booleans()):
            shape["description"] = f"The {name}."
        properties[name] = shape
    required = [n for n in names if draw(st.booleans())] if draw(st.booleans()) else list(names)
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


function_names = st.one_of(st.sampled_from(FUNCTION_NAMES), st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,19}",
                                                                           fullmatch=True))


@st.composite
def function_tools(draw: st.DrawFn, name: str) -> dict[str, Any]:
    """One ``{"type": "function", "function": {...}}`` tool (name, optional description and parameters)."""
    function: dict[str, Any] = {"name": name}
    if draw(st.booleans()):
        function["description"] = draw(st.sampled_from(DESCRIPTIONS))
    parameters = draw(parameter_schemas())
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolRequest:
    """A chat request with tools, and what its ``tool_choice`` asks for."""

    body: dict[str, Any]
    choice: str  # NONE, AUTO, REQUIRED or NAMED
    name: str | None = None  # the function a NAMED choice asks for
    tools: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # name -> parameters (None: none)

    @property
    def forced(self) -> bool:
        return self.choice in (REQUIRED, NAMED)


def tool_choice_value(choice: str, name: str | None) -> Any:
    return {"type": "function", "function": {"name": name}} if choice == NAMED else choice


@st.composite
def tool_requests(draw: st.DrawFn, choices: tuple[str, ...] = (REQUIRED, NAMED), stream: bool | None = None,
                  temperatures: tuple[float, ...] = (0.0, 0.7)) -> ToolRequest:
    """A chat request with 1-3 function tools and one of ``choices`` as its ``tool_choice``."""
    names = draw(st.lists(function_names, min_size=1, max_size=3, unique=True))
    tools = [draw(function_tools(name)) for name in names]
    choice = draw(st.sampled_from(choices))
    name = draw(st.sampled_from(names)) if choice == NAMED else None
    body: dict[str, Any] = {"messages": [{"role": "user", "content": draw(st.sampled_from(ASKS))}], "tools": tools,
                            "tool_choice": tool_choice_value(choice, name), "max_tokens": TOOL_MAX_TOKENS,
                            "temperature": draw(st.sampled_from(temperatures))}
    if choice == REQUIRED and draw(st.booleans()):
        body["parallel_tool_calls"] = False
    if stream if stream is not None else draw(st.booleans()):
        body.update({"stream": True, "stream_options": {"include_usage": True}})
    return ToolRequest(body, choice, name, {t["function"]["name"]: t["function"].get("parameters") for t in tools})


# Invalid JSON Schemas (each fails jsonschema's check_schema; tests/unit pins that): a server must
# refuse a tool whose parameters it cannot hold the model to.
BROKEN_PARAMETERS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("an unknown type", {"type": "objekt"}),
    ("properties not an object", {"type": "object", "properties": 5}),
    ("required not an array", {"type": "object", "properties": {"city": {"type": "string"}}, "required": "city"}),
    ("a property of an unknown type", {"type": "object", "properties": {"a": {"type": "nonsense"}}}),
    ("a non-numeric minimum", {"type": "object", "properties": {"n": {"type": "integer", "minimum": "zero"}}}),
)


def broken_tool_requests() -> list[tuple[str, dict[str, Any]]]:
    """(what is broken, a request forcing a call of a function whose ``parameters`` is no valid schema):
    one per broken schema, named and required choices in turn."""
    requests = []
    for position, (what, parameters) in enumerate(BROKEN_PARAMETERS):
        choice = (REQUIRED, NAMED)[position % 2]
        tool = {"type": "function", "function": {"name": "get_weather", "parameters": parameters}}
        requests.append((what, {"messages": [{"role": "user", "content": "What is the weather in Paris?"}],
                                "tools": [tool], "tool_choice": tool_choice_value(choice, "get_weather"),
                                "max_tokens": 16, "temperature": 0}))
    return requests


# -- what came back ---------------------------------------------------------------------------------------
@dataclass
class ToolCall:
    id: Any
    type: Any
    name: Any
    arguments: str = ""


def tool_calls(outcome: Outcome, out: list[Deviation] | None = None) -> list[ToolCall]:
    """Choice 0's tool calls: from the message, or reassembled from a stream's deltas (reporting a
    malformed delta sequence into ``out``)."""
    out = out if out is not None else []
    if not outcome.asked.stream:
        document = outcome.documents[0] if outcome.documents else {}
        choices = document.get("choices") if isinstance(document, dict) else None
        message = choices[0].get("message") if isinstance(choices, list) and choices and isinstance(
            choices[0], dict) else None
        raw = message.get("tool_calls") if isinstance(message, dict) else None
        return [ToolCall(c.get("id"), c.get("type"), _dict(c.get("function")).get("name"),
                         _str(_dict(c.get("function")).get("arguments"))) for c in raw or [] if isinstance(c, dict)]
    calls: dict[int, ToolCall] = {}
    for i, chunk in enumerate(outcome.documents):
        for k, raw_choice in enumerate(chunk.get("choices") or [] if isinstance(chunk, dict) else []):
            if not isinstance(raw_choice, dict) or raw_choice.get("index") != 0:
                continue
            for j, delta in enumerate(_dict(raw_choice.get("delta")).get("tool_calls") or []):
                if not isinstance(delta, dict):
                    continue
                path = f"chunk[{i}].choices[{k}].delta.tool_calls[{j}]"
                index, function = delta.get("index"), _dict(delta.get("function"))
                if not isinstance(index, int) or isinstance(index, bool):
                    out.append(Deviation("tool.stream-index", f"{path}.index", f"{index!r} is not an integer"))
                    continue
                if index not in calls:
                    if not delta.get("id") or function.get("name") is None:
                        out.append(Deviation("tool.stream-first-delta", path, f"the first delta of tool call {index} "
                                             "must carry its id and function.name"))
                    calls[index] = ToolCall(delta.get("id"), delta.get("type", "function"), function.get("name"))
                else:
                    call = calls[index]
                    for key, seen in (("id", call.id), ("name", call.name)):
                        value = delta.get("id") if key == "id" else function.get("name")
                        if value is not None and seen is not None and value != seen:
                            out.append(Deviation("tool.stream-changed", path, f"tool call {index}'s {key} changes "
                                                 f"from {seen!r} to {value!r}"))
                calls[index].arguments += _str(function.get("arguments"))
    if sorted(calls) != list(range(len(calls))):
        out.append(Deviation("tool.stream-index", "", f"tool call indices {sorted(calls)} are not 0..{len(calls) - 1}"))
    return [calls[i] for i in sorted(calls)]


def check_tool_calls(outcome: Outcome, request: ToolRequest) -> list[Deviation]:
    """Every way choice 0 breaks what ``request``'s tool_choice asks for (see the module docstring)."""
    out: list[Deviation] = []
    calls = tool_calls(outcome, out)
    reason = outcome.finish_reason()
    where = "tool_calls"  # choice 0's, from the message or reassembled from the stream: one path for both
    if request.choice == NONE:
        if calls:
            out.append(Deviation("tool.unexpected", where, f"tool_choice 'none' yet {len(calls)} tool call(s): "
                                                           f"{[c.name for c in calls]}"))
        if reason not in ("stop", "length"):
            out.append(Deviation("tool.finish-reason", "choices[0].finish_reason",
                                 f"{reason!r} with tool_choice 'none' (no call): 'stop' or 'length'"))
        return out
    if not calls:
        if request.forced:
            out.append(Deviation("tool.missing", where, f"tool_choice {request.body['tool_choice']!r} yet no tool call "
                                                        f"(finish_reason {reason!r})"))
        return out
    expected = "stop" if request.choice == NAMED else "tool_calls"
    if reason != expected:
        out.append(Deviation("tool.finish-reason", "choices[0].finish_reason",
                             f"{reason!r} after the calls of tool_choice {request.body['tool_choice']!r}: "
                             f"OpenAI answers {expected!r}"))
    ids = [c.id for c in calls]
    for position, call in enumerate(calls):
        path = f"{where}[{position}]"
        if not isinstance(call.id, str) or not call.id:
            out.append(Deviation("tool.id", f"{path}.id", f"{call.id!r} is not a non-empty id"))
        elif ids.count(call.id) > 1:
            out.append(Deviation("tool.id", f"{path}.id", f"the id {call.id!r} is used by {ids.count(call.id)} calls"))
        if call.type != "function":
            out.append(Deviation("tool.type", f"{path}.type", f"{call.type!r}, not 'function'"))
        if request.choice == NAMED and call.name != request.name:
            out.append(Deviation("tool.name", f"{path}.function.name", f"{call.name!r}, but tool_choice names "
                                                                       f"{request.name!r}"))
            continue
        if call.name not in request.tools:
            out.append(Deviation("tool.name", f"{path}.function.name", f"{call.name!r} is not a declared function "
                                                                       f"({sorted(request.tools)})"))
            continue
        out += check_arguments(call.arguments, request.tools[call.name], f"{path}.function.arguments")
    return out


def check_arguments(arguments: str, parameters: dict[str, Any] | None, path: str) -> list[Deviation]:
    """``arguments`` parse as strict JSON and validate against ``parameters`` (None: the function takes
    no parameters, so ``{}``)."""
    import jsonschema

    try:
        value = loads_strict(arguments)
    except (StrictJSONError, ValueError) as exc:
        return [Deviation("tool.arguments-json", path, f"{arguments[:200]!r} is not JSON: {exc}")]
    if parameters is None:
        if value != {}:
            return [Deviation("tool.arguments-no-parameters", path, f"{json.dumps(value)[:200]} for a function "
                              "declared without parameters (an empty parameter list: arguments {})")]
        return []
    errors = sorted(jsonschema.Draft202012Validator(parameters).iter_errors(value), key=lambda e: list(e.path))
    return [Deviation("tool.arguments-schema", path, f"{json.dumps(value)[:200]} breaks the declared parameters: "
                                                     f"{error.message}") for error in errors[:3]]


def compare_streamed(whole: list[ToolCall], pieces: list[ToolCall]) -> list[Deviation]:
    """A streamed request's calls against the same request's non-streamed calls at temperature 0: the same
    functions with the same arguments; arguments that are equal JSON in another spelling are named apart
    (``tool.stream-arguments-text``), for a client that compares or caches the raw string sees them differ."""
    names = ([c.name for c in whole], [c.name for c in pieces])
    if names[0] != names[1]:
        return [Deviation("tool.stream-differs", "tool_calls", f"streamed calls of {names[1]} != non-streamed "
                                                               f"{names[0]}")]
    out: list[Deviation] = []
    for position, (one, other) in enumerate(zip(whole, pieces, strict=True)):
        if one.arguments == other.arguments:
            continue
        path = f"tool_calls[{position}].function.arguments"
        if _json_or_none(one.arguments) == _json_or_none(other.arguments) is not None:
            out.append(Deviation("tool.stream-arguments-text", path, f"streamed {other.arguments!r} != non-streamed "
                                                                     f"{one.arguments!r} (equal as JSON)"))
        else:
            out.append(Deviation("tool.stream-differs", path, f"streamed {other.arguments!r} != non-streamed "
                                                              f"{one.arguments!r}"))
    return out


def _json_or_none(text: str) -> Any:
    try:
        return loads_strict(text)
    except ValueError:
        return None


def valid_call(outcome: Outcome, request: ToolRequest) -> bool:
    """Whether a forced call came back whole and valid (the base vs compressed valid-call rate)."""
    return (outcome.ok and outcome.finish_reason() != "length" and bool(tool_calls(outcome))
            and not check_tool_calls(outcome, request))


def probe_request(choice: str) -> dict[str, Any]:
    """One token of ``choice`` on a trivial tool: does the server take this tool_choice at all?"""
    return {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1,
            "tools": [{"type": "function", "function": {"name": "noop"}}], "tool_choice": tool_choice_value(
                choice, "noop")}


def not_configured(status: int, text: str) -> bool:
    """Whether a refusal of a tool_choice says the server was not started for it (no tool parser)."""
    return status == 400 and PARSER_FLAG in text


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""
