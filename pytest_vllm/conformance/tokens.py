"""Token ids for the properties that need them (logit_bias, stop_token_ids), via vLLM's tokenizer API.

``POST /tokenize`` and ``POST /detokenize`` are vLLM extensions (no OpenAI endpoint exposes the
tokenizer). A server without them answers None here, and the property that needs ids says so in
its skip reason instead of guessing ids for a vocabulary it cannot see.
"""

from __future__ import annotations

from typing import Any

from pytest_vllm.conformance.probe import Probe
from pytest_vllm.server.handle import token_ids, tokenize_request


def tokenize(probe: Probe, model: str, text: str) -> list[int] | None:
    """The ids of ``text`` without special tokens, or None when the server has no /tokenize."""
    exchange = probe.post("/tokenize", tokenize_request(model, text, special=False))
    return token_ids(_document(exchange.status, exchange))


def detokenize(probe: Probe, model: str, ids: list[int]) -> str | None:
    """The text of ``ids``, or None when the server has no /detokenize."""
    exchange = probe.post("/detokenize", {"model": model, "tokens": ids})
    document = _document(exchange.status, exchange)
    text = document.get("prompt") if isinstance(document, dict) else None
    return text if isinstance(text, str) else None


def _document(status: int, exchange: Any) -> Any:
    if status != 200:
        return None
    try:
        return exchange.json()
    except ValueError:
        return None
