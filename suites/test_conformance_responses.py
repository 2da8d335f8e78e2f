"""OpenAI API conformance of the Responses API (POST /v1/responses), where the server offers it.

Bodies are validated against openai-python's ``Response`` and every streamed event against the
``ResponseStreamEvent`` member its ``type`` names (``pytest_vllm.conformance.responses``), plus the
properties that carry over from chat: max_output_tokens respected, temperature 0 deterministic, stream
equals non-stream, invalid requests refused with an OpenAI error object. A server without the
endpoint (404) skips them all, saying so.
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_vllm.conformance import responses as R
from pytest_vllm.conformance.runner import PropertyRun


@pytest.fixture
def responses_run(conformance: PropertyRun) -> PropertyRun:
    """The ``conformance`` run, skipped where the server does not serve /v1/responses."""
    missing = R.offered(conformance)
    if missing:
        pytest.skip(f"{missing}: nothing to check")
    return conformance


def test_responses_bodies_and_events_conform(responses_run: PropertyRun) -> None:
    responses_run.run(lambda body: R.send(responses_run, body), R.responses_requests(), examples=8)


def test_responses_max_output_tokens_is_respected(responses_run: PropertyRun) -> None:
    def check(body: dict[str, Any]) -> None:
        outcome = R.send(responses_run, body)  # the validator checks output_tokens <= max_output_tokens
        limit, tokens = body["max_output_tokens"], outcome.output_tokens
        assert tokens is not None, "the response carries no usage.output_tokens"
        if outcome.status == "incomplete":
            assert (outcome.incomplete_reason, tokens) == ("max_output_tokens", limit), (
                f"status 'incomplete' ({outcome.incomplete_reason!r}) after {tokens} tokens, max_output_tokens={limit}")
        else:
            assert outcome.status == "completed" and tokens <= limit, f"{outcome.status!r} after {tokens} tokens"

    responses_run.run(check, R.responses_requests(max_tokens=6), examples=5)


def test_responses_temperature_zero_is_deterministic(responses_run: PropertyRun) -> None:
    def check(body: dict[str, Any]) -> None:
        first, second = R.send(responses_run, body), R.send(responses_run, body)
        assert (second.text, second.status) == (first.text, first.status), (
            f"greedy outputs differ: {first.text!r} ({first.status}) then {second.text!r} ({second.status})")

    responses_run.run(check, R.responses_requests(stream=False, temperatures=(0.0,)), examples=4)


def test_responses_stream_equals_non_stream_at_temperature_zero(responses_run: PropertyRun) -> None:
    def check(body: dict[str, Any]) -> None:
        whole, pieces = R.send(responses_run, body), R.send(responses_run, {**body, "stream": True})
        assert (pieces.text, pieces.status, pieces.output_tokens) == (whole.text, whole.status, whole.output_tokens), (
            f"streamed {pieces.text!r} ({pieces.status}, {pieces.output_tokens} tokens) != non-streamed "
            f"{whole.text!r} ({whole.status}, {whole.output_tokens} tokens)")

    responses_run.run(check, R.responses_requests(stream=False, temperatures=(0.0,)), examples=4)


def test_invalid_responses_requests_get_a_4xx_error_object(responses_run: PropertyRun) -> None:
    def check() -> None:
        responses_run.canary()
        for what, param, body in R.INVALID_RESPONSES:
            R.reject(responses_run, responses_run.with_model(body), param=param, what=what)
        responses_run.assert_healthy(after="refusing invalid /v1/responses requests")

    responses_run.once(check)
