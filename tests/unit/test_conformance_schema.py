"""The schema derived from openai-python's types says what the OpenAI API reference says.

The expected sets below are copied by hand from the API reference ("The chat completion object",
"The chat completion chunk object", "The completion object", the Error schema of openai-openapi);
if an openai-python upgrade changes a requirement, these fail and someone decides on purpose.
"""

from __future__ import annotations

import pytest

from pytest_vllm.conformance import openai_schema as schemas
from pytest_vllm.conformance.openai_schema import Const, ListOf, Nullable, ObjectNode, Scalar, validate


def required(node: ObjectNode) -> set[str]:
    return {name for name, spec in node.fields.items() if spec.required}


def child(node: ObjectNode, *path: str) -> ObjectNode:
    for name in path:
        inner = node.fields[name].node
        while not isinstance(inner, ObjectNode):
            inner = inner.inner if isinstance(inner, Nullable) else inner.item  # type: ignore[union-attr]
        node = inner
    return node


def test_chat_completion_required_fields() -> None:
    root = schemas.chat_completion()
    assert required(root) == {"id", "choices", "created", "model", "object"}
    assert root.fields["object"].node == Const(("chat.completion",))
    assert required(child(root, "choices")) == {"finish_reason", "index", "message"}
    assert set(child(root, "choices").fields["finish_reason"].node.values) == {  # type: ignore[union-attr]
        "stop", "length", "tool_calls", "content_filter", "function_call"}
    assert required(child(root, "choices", "message")) == {"role"}
    assert required(child(root, "usage")) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert required(child(root, "choices", "logprobs", "content")) == {"token", "logprob", "top_logprobs"}


def test_chunk_required_fields_and_nullable_finish_reason() -> None:
    root = schemas.chat_completion_chunk()
    assert required(root) == {"id", "choices", "created", "model", "object"}
    choice = child(root, "choices")
    assert required(choice) == {"delta", "index"}
    assert isinstance(choice.fields["finish_reason"].node, Nullable)
    assert isinstance(root.fields["usage"].node, Nullable)


def test_completion_required_fields_and_the_streaming_patch() -> None:
    root = schemas.completion()
    assert required(child(root, "choices")) == {"finish_reason", "index", "text"}
    assert not isinstance(child(root, "choices").fields["finish_reason"].node, Nullable)
    streamed = child(schemas.completion_chunk(), "choices").fields["finish_reason"]
    assert isinstance(streamed.node, Nullable) and streamed.required
    # patching returns copies: the non-streamed schema is untouched
    assert not isinstance(child(schemas.completion(), "choices").fields["finish_reason"].node, Nullable)


def test_echo_patch_allows_null_logprob_entries() -> None:
    logprobs = child(schemas.completion_with_echo(), "choices", "logprobs")
    token_logprobs = logprobs.fields["token_logprobs"].node
    assert isinstance(token_logprobs, Nullable) and token_logprobs.inner == ListOf(Nullable(Scalar("float")))
    plain = child(schemas.completion(), "choices", "logprobs").fields["token_logprobs"].node
    assert plain == Nullable(ListOf(Scalar("float")))


def test_error_object_requires_all_four_fields() -> None:
    error = child(schemas.error_response(), "error")
    assert required(error) == {"message", "type", "param", "code"}
    assert error.fields["code"].node == Nullable(Scalar("str"))
    assert error.fields["param"].node == Nullable(Scalar("str"))


@pytest.mark.parametrize(("value", "ok"), [(3, True), (3.0, True), (3.5, False), (True, False), ("3", False)])
def test_integers_follow_json_rules(value: object, ok: bool) -> None:
    assert (validate(value, Scalar("int")) == []) is ok


def test_unknown_annotations_are_refused() -> None:
    with pytest.raises(TypeError):
        schemas.from_annotation(set[int])
