"""Which of vLLM's sampling extensions (parameters OpenAI's API does not have) a server accepts.

A vLLM server accepts them all. Another OpenAI-compatible server may refuse one with a 4xx, which
is its right: the OpenAI API has no such parameter. Such a parameter is then left out of the
generated requests and the properties about it are skipped with that reason, instead of counting
a refusal of a non-OpenAI parameter as a deviation. A parameter the server accepts is held to
vLLM's meaning of it.
"""

from __future__ import annotations

from pytest_vllm.conformance.probe import Probe

# Each extension with a harmless value to ask whether the server takes it.
VLLM_EXTENSIONS: dict[str, object] = {
    "top_k": 5,
    "min_p": 0.05,
    "repetition_penalty": 1.1,
    "min_tokens": 1,
    "stop_token_ids": [],
    "ignore_eos": False,
}
ALL = frozenset(VLLM_EXTENSIONS)

_cache: dict[str, frozenset[str]] = {}


def supported(probe: Probe, model: str, *, vllm: bool) -> frozenset[str]:
    """The extensions the server accepts (all of them for vLLM; asked once per server otherwise)."""
    if vllm:
        return ALL
    if probe.base_url not in _cache:
        accepted = set()
        for name, value in VLLM_EXTENSIONS.items():
            body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, name: value}
            if probe.post("/v1/chat/completions", body).status == 200:
                accepted.add(name)
        probe.history.clear()
        _cache[probe.base_url] = frozenset(accepted)
    return _cache[probe.base_url]
