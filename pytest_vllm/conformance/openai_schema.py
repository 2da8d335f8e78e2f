"""Required fields and types of OpenAI responses, derived from openai-python's own response types.

Source of truth: the pydantic models of the installed ``openai`` package (generated from OpenAI's
OpenAPI spec), e.g. ``openai/types/chat/chat_completion.py`` (ChatCompletion),
``openai/types/chat/chat_completion_chunk.py`` (ChatCompletionChunk), ``openai/types/completion.py``
(Completion), ``openai/types/completion_usage.py`` and ``openai/types/shared/error_object.py``.
A field is required exactly when the SDK model has no default; it may be null exactly when its
annotation is ``Optional``. Reading the models instead of copying them keeps the schema in step
with the SDK; ``tests/unit/test_conformance_schema.py`` pins what the derivation must yield.

The SDK itself never validates (``extra="allow"``, responses are built with ``construct``), which is
why the checks live here. Extra (vendor) fields are always allowed, as the SDK allows them.

Documented departures from a literal reading of the SDK types, each in a named patch below:

- streamed ``text_completion`` chunks carry ``finish_reason: null`` until a choice ends. The SDK
  types stream chunks with the non-streamed ``Completion`` model whose ``finish_reason`` is
  required, but OpenAI's own streams send null there (the OpenAPI spec's
  ``CreateCompletionResponse`` is reused for streaming and lists ``finish_reason`` as nullable in
  practice), so null is allowed in chunks only.
- the error object: openai-python gives ``param`` and ``code`` defaults, but OpenAI's OpenAPI spec
  (``components.schemas.Error``) lists ``type, message, param, code`` as required (param and code
  nullable), and the issue contract asks for all four, so their keys must be present.
- ``logprobs.token_logprobs`` / ``top_logprobs`` entries of a completion may be null when the
  request has ``echo``: the first prompt token has no logprob (OpenAI's legacy completions behave
  so); the validators allow it at position 0 only.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any, Union

from pytest_vllm.conformance.deviations import Deviation


# -- schema nodes ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Scalar:
    kind: str  # "str", "int", "float", "bool", "null" or "any"


@dataclass(frozen=True)
class Const:
    values: tuple[Any, ...]


@dataclass(frozen=True)
class ListOf:
    item: Node


@dataclass(frozen=True)
class MapOf:
    value: Node


@dataclass(frozen=True)
class OneOf:
    options: tuple[Node, ...]


@dataclass(frozen=True)
class Nullable:
    inner: Node


@dataclass(frozen=True)
class FieldSpec:
    node: Node
    required: bool


@dataclass(eq=False)
class ObjectNode:
    """An object with named fields; ``source`` says which SDK model (or spec schema) it mirrors."""

    name: str
    source: str
    fields: dict[str, FieldSpec] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"ObjectNode({self.name})"


Node = Scalar | Const | ListOf | MapOf | OneOf | Nullable | ObjectNode

_SCALARS: Mapping[Any, str] = {str: "str", int: "int", float: "float", bool: "bool", type(None): "null",
                               Any: "any", object: "any"}


# -- derivation from openai-python -------------------------------------------------------------
def from_annotation(annotation: Any) -> Node:
    """The schema node of one SDK type annotation (Optional, List, Dict, Literal, Union, models)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return from_annotation(args[0])
    if origin is Union or origin is types.UnionType:
        options = [a for a in args if a is not type(None)]
        inner = from_annotation(options[0]) if len(options) == 1 else OneOf(tuple(from_annotation(a)
                                                                                  for a in options))
        return Nullable(inner) if len(options) < len(args) else inner
    if origin is typing.Literal:
        return Const(tuple(args))
    if origin in (list, typing.List):  # noqa: UP006 - the SDK's own spelling
        return ListOf(from_annotation(args[0]) if args else Scalar("any"))
    if origin in (dict, typing.Dict):  # noqa: UP006
        return MapOf(from_annotation(args[1]) if args else Scalar("any"))
    if annotation in _SCALARS:
        return Scalar(_SCALARS[annotation])
    if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
        return model_node(annotation)
    raise TypeError(f"no schema node for the annotation {annotation!r}")


@cache
def model_node(model: type) -> ObjectNode:
    """The schema of one openai-python pydantic model (cached; cycles resolve through the cache)."""
    node = ObjectNode(model.__name__, f"{model.__module__}.{model.__qualname__}")
    for name, info in model.model_fields.items():  # type: ignore[attr-defined]
        node.fields[info.alias or name] = FieldSpec(from_annotation(info.annotation), info.is_required())
    return node


def patched(root: ObjectNode, path: str, change: Callable[[FieldSpec], FieldSpec], why: str) -> ObjectNode:
    """A copy of ``root`` with the field at dotted ``path`` (``[]`` steps into lists) changed."""
    head, _, rest = path.partition(".")
    list_step = head.endswith("[]")
    name = head.removesuffix("[]")
    spec = root.fields[name]
    source = root.source if f"({why})" in root.source else f"{root.source} ({why})"
    copy = ObjectNode(root.name, source, dict(root.fields))
    if not rest:
        copy.fields[name] = change(spec)
        return copy
    node = spec.node
    wrappers: list[Callable[[Node], Node]] = []
    while not isinstance(node, ObjectNode):
        if isinstance(node, Nullable):
            wrappers.append(Nullable)
            node = node.inner
        elif isinstance(node, ListOf) and list_step:
            wrappers.append(ListOf)
            node = node.item
        else:
            raise KeyError(f"cannot step through {path!r} at {head!r}")
    inner: Node = patched(node, rest, change, why)
    for wrap in reversed(wrappers):
        inner = wrap(inner)
    copy.fields[name] = replace(spec, node=inner)
    return copy


def nullable(spec: FieldSpec) -> FieldSpec:
    return spec if isinstance(spec.node, Nullable) else replace(spec, node=Nullable(spec.node))


def required(spec: FieldSpec) -> FieldSpec:
    return replace(spec, required=True)


# -- the schemas the validators use ------------------------------------------------------------
@cache
def chat_completion() -> ObjectNode:
    from openai.types.chat import ChatCompletion

    return model_node(ChatCompletion)


@cache
def chat_completion_chunk() -> ObjectNode:
    from openai.types.chat import ChatCompletionChunk

    return model_node(ChatCompletionChunk)


@cache
def completion() -> ObjectNode:
    from openai.types import Completion

    return model_node(Completion)


@cache
def completion_chunk() -> ObjectNode:
    """``Completion`` with ``finish_reason`` nullable: a stream's chunks before the last one."""
    return patched(completion(), "choices[].finish_reason", nullable, "finish_reason null while streaming")


@cache
def completion_with_echo() -> ObjectNode:
    """``Completion`` whose logprob lists may hold null (the echoed first prompt token has none)."""
    node = completion()
    for name in ("token_logprobs", "top_logprobs"):
        node = patched(node, f"choices[].logprobs.{name}",
                       lambda s: replace(s, node=_nullable_items(s.node)), "echo: null first logprob")
    return node


@cache
def completion_chunk_with_echo() -> ObjectNode:
    return patched(completion_with_echo(), "choices[].finish_reason", nullable, "finish_reason null while streaming")


def _nullable_items(node: Node) -> Node:
    if isinstance(node, Nullable):
        return Nullable(_nullable_items(node.inner))
    if isinstance(node, ListOf):
        return ListOf(node.item if isinstance(node.item, Nullable) else Nullable(node.item))
    raise TypeError(f"not a list: {node!r}")


@cache
def error_response() -> ObjectNode:
    """``{"error": ErrorObject}`` with all four keys of OpenAI's Error schema required.

    openai-openapi ``components.schemas.ErrorResponse`` (required: error) and ``Error`` (required:
    type, message, param, code; param and code nullable strings); openai-python ErrorObject.
    """
    from openai.types.shared import ErrorObject

    error = model_node(ErrorObject)
    for name in ("param", "code"):
        error = patched(error, name, required, "OpenAPI Error: param and code are required, nullable")
    return ObjectNode("ErrorResponse", "openai-openapi components.schemas.ErrorResponse",
                      {"error": FieldSpec(error, True)})


@cache
def model_list() -> ObjectNode:
    """``GET /v1/models``: ``{"object": "list", "data": [Model]}`` (openai-openapi ListModelsResponse)."""
    from openai.types import Model

    return ObjectNode("ListModelsResponse", "openai-openapi components.schemas.ListModelsResponse",
                      {"object": FieldSpec(Const(("list",)), True), "data": FieldSpec(ListOf(model_node(Model)), True)})


# -- validation --------------------------------------------------------------------------------
def validate(document: Any, node: Node, path: str = "") -> list[Deviation]:
    """Every way ``document`` (parsed JSON) breaks ``node``; empty when it conforms."""
    out: list[Deviation] = []
    _check(document, node, path, out)
    return out


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _check(value: Any, node: Node, path: str, out: list[Deviation]) -> None:
    if isinstance(node, Nullable):
        if value is not None:
            _check(value, node.inner, path, out)
        return
    if isinstance(node, ObjectNode):
        if not isinstance(value, dict):
            out.append(Deviation("schema.type", path, f"expected an object ({node.name}), got {describe(value)}"))
            return
        for name, spec in node.fields.items():
            if name not in value:
                if spec.required:
                    out.append(Deviation("schema.missing", _join(path, name),
                                         f"required field missing from {node.name} ({node.source})"))
                continue
            if value[name] is None and not isinstance(spec.node, Nullable) and not spec.required:
                # an optional, non-nullable SDK field sent as null: the SDK would store None, which its
                # type does not allow; OpenAI omits such fields instead.
                out.append(Deviation("schema.null", _join(path, name), f"null is not allowed ({node.name})"))
                continue
            _check(value[name], spec.node, _join(path, name), out)
        return
    if isinstance(node, ListOf):
        if not isinstance(value, list):
            out.append(Deviation("schema.type", path, f"expected an array, got {describe(value)}"))
            return
        for i, item in enumerate(value):
            _check(item, node.item, f"{path}[{i}]", out)
        return
    if isinstance(node, MapOf):
        if not isinstance(value, dict):
            out.append(Deviation("schema.type", path, f"expected an object (map), got {describe(value)}"))
            return
        for key, item in value.items():
            _check(item, node.value, f"{path}[{key!r}]", out)
        return
    if isinstance(node, OneOf):
        attempts = [validate(value, option, path) for option in node.options]
        if not all(attempts):
            return
        closest: list[Deviation] = min(attempts, key=len)  # the option the value came closest to
        out.extend(closest)
        return
    if isinstance(node, Const):
        if not any(value == v and type(value) is type(v) for v in node.values):
            allowed = ", ".join(repr(v) for v in node.values)
            out.append(Deviation("schema.enum", path, f"{value!r} is not one of {allowed}"))
        return
    if not _scalar_ok(value, node.kind):
        if value is None:
            out.append(Deviation("schema.null", path, f"null where {_KIND_NAMES[node.kind]} is required"))
        else:
            out.append(Deviation("schema.type", path, f"expected {_KIND_NAMES[node.kind]}, got {describe(value)}"))


_KIND_NAMES = {"str": "a string", "int": "an integer", "float": "a number", "bool": "a boolean", "null": "null",
               "any": "any value"}


def _scalar_ok(value: Any, kind: str) -> bool:
    if kind == "any":
        return True
    if kind == "null":
        return value is None
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind == "int":
        # JSON has one number type: 3.0 is an integer by JSON Schema's rules (and the SDK's pydantic).
        return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value) and value.is_integer())
    return isinstance(value, (int, float)) and math.isfinite(value)  # "float"


def describe(value: Any) -> str:
    """``string 'abc'``, ``integer 5``, ``null``: the JSON type and a short excerpt of a value."""
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object", type(None): "null"}.get(type(value), type(value).__name__)
    if value is None:
        return "null"
    text = repr(value)
    return f"{kind} {text[:60] + '...' if len(text) > 60 else text}"
