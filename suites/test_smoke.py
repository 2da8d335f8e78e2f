"""Smoke suite: both servers are up, list their model, and answer simple greedy prompts right.

Runs once per server (``vllm_server`` is parametrized over base and compressed). Greedy output
of a healthy checkpoint answers these; a broken conversion or quantization does not.
"""

from __future__ import annotations

import httpx
import pytest

from pytest_vllm.server.handle import ServerHandle

# (question, a word the answer must contain); a 135M instruct model gets these right greedily, also
# after W8A8 (cpu) or FP8 (GPU) quantization. (Arithmetic drifts under FP8: that is the accuracy
# suite's business, with budgets, not a smoke check's.)
SANITY_PROMPTS = [
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Germany?", "Berlin"),
    ("What is the capital of Japan?", "Tokyo"),
    ("How many days are in a week?", "7"),
]


def test_models_endpoint_lists_the_served_model(vllm_server: ServerHandle) -> None:
    with vllm_server.http() as http:
        assert http.get("/health").status_code == 200
        listing = http.get("/v1/models").json()
    ids = [m["id"] for m in listing["data"]]
    assert vllm_server.model in ids
    assert listing["object"] == "list"


def test_a_request_without_the_api_key_is_refused(vllm_server: ServerHandle) -> None:
    """With an API key (--vllm-api-key or VLLM_API_KEY) every server under test must require it:
    booted servers are started with it; a --vllm-url server is expected to enforce it too."""
    if vllm_server.api_key == "EMPTY":
        pytest.skip("no API key given (--vllm-api-key or VLLM_API_KEY): the servers are open")
    with httpx.Client(base_url=vllm_server.url, timeout=30) as http:
        anonymous = http.get("/v1/models")
        wrong = http.get("/v1/models", headers={"Authorization": "Bearer not-the-key"})
    assert anonymous.status_code == 401, f"{vllm_server.describe()} answered {anonymous.status_code} without a key"
    assert wrong.status_code == 401, f"{vllm_server.describe()} answered {wrong.status_code} to a wrong key"


@pytest.mark.parametrize(("question", "expected"), SANITY_PROMPTS, ids=[e for _, e in SANITY_PROMPTS])
def test_greedy_answers_sanity_prompts(vllm_client, vllm_server: ServerHandle, question: str, expected: str) -> None:
    reply = vllm_client.chat.completions.create(
        model=vllm_server.model, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=40,
    )
    answer = reply.choices[0].message.content or ""
    assert expected in answer, f"{vllm_server.describe()} answered {answer!r} to {question!r}"


def test_chat_non_streaming_shape(vllm_client, vllm_server: ServerHandle) -> None:
    reply = vllm_client.chat.completions.create(
        model=vllm_server.model, messages=[{"role": "user", "content": "Say hello."}], temperature=0, max_tokens=16,
    )
    assert reply.object == "chat.completion"
    assert len(reply.choices) == 1
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage is not None
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert 0 < reply.usage.completion_tokens <= 16


def test_chat_streaming_equals_non_streaming(vllm_client, vllm_server: ServerHandle) -> None:
    request = dict(model=vllm_server.model, messages=[{"role": "user", "content": "What is the capital of France?"}],
                   temperature=0, max_tokens=24)
    whole = vllm_client.chat.completions.create(**request)
    chunks = list(vllm_client.chat.completions.create(**request, stream=True,
                                                      stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert streamed == whole.choices[0].message.content
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completions_non_streaming_and_streaming_agree(vllm_client, vllm_server: ServerHandle) -> None:
    request = dict(model=vllm_server.model, prompt="The capital of France is", temperature=0, max_tokens=12)
    whole = vllm_client.completions.create(**request)
    assert whole.object == "text_completion"
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens <= 12
    streamed = "".join(c.choices[0].text for c in vllm_client.completions.create(**request, stream=True) if c.choices)
    assert streamed == whole.choices[0].text
    assert "Paris" in whole.choices[0].text


@pytest.mark.asyncio
async def test_async_client_chat(vllm_async_client, vllm_server: ServerHandle) -> None:
    reply = await vllm_async_client.chat.completions.create(
        model=vllm_server.model, messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0, max_tokens=16,
    )
    assert "Paris" in (reply.choices[0].message.content or "")


def test_unknown_model_is_a_404_and_server_stays_healthy(vllm_server: ServerHandle) -> None:
    with vllm_server.http() as http:
        response = http.post("/v1/chat/completions", json={
            "model": "no-such-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        assert response.status_code == 404
        assert "error" in response.json()
        assert http.get("/health").status_code == 200

