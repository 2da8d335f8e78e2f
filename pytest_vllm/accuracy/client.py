"""The requests accuracy makes of a vLLM server, over raw HTTP.

Raw httpx rather than the OpenAI SDK: ``prompt_logprobs`` and ``return_tokens_as_token_ids`` are
vLLM extensions, and scoring needs token ids, not token strings. Every request is greedy
(temperature 0) and seeded. A failed request raises ``EvalRequestError`` naming the server and
the server's answer; accuracy is never computed over a partial run.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from pytest_vllm.errors import VLLMPluginError
from pytest_vllm.server.handle import ServerHandle, http_limits, token_ids, tokenize_request

# A request's total deadline, from the moment it leaves the client's concurrency slot (a resend
# after a dropped connection included). Every request here is non-streaming, so the server says
# nothing until it is done and the deadline bounds the whole answer, not a silent read. The
# heaviest requests are the large corpus's passages (up to 1,800 characters, prompt_logprobs, 16
# in flight): on the real avx2-only host (README, CI time) its 153 passages took 371 s with both
# servers on 2 cores, about 39 s per wave of 16; 600 s is 15x that, so a hung engine fails the
# evaluation in 10 minutes, not one silent read per request.
REQUEST_DEADLINE_S = 600.0
SEED = 1234


class EvalRequestError(VLLMPluginError):
    """A request of an accuracy evaluation failed; accuracy over a partial run is not computed."""


@dataclass(frozen=True)
class PositionLogprobs:
    """What a server said about one token position: the actual token's logprob and the top-k."""

    token: int
    logprob: float
    top: Mapping[int, float]  # token id -> logprob, the top-k (plus the actual token)
    top1: int


@dataclass(frozen=True)
class GreedyOutput:
    tokens: tuple[int, ...]
    top: tuple[Mapping[int, float], ...]  # per generated position, token id -> logprob


class EvalClient:
    """Greedy, seeded requests on one server, at most ``concurrency`` at a time."""

    def __init__(self, server: ServerHandle, concurrency: int = 16, seed: int = SEED,
                 deadline_s: float = REQUEST_DEADLINE_S) -> None:
        self.server = server
        self.seed = seed
        self._limit = asyncio.Semaphore(concurrency)
        self.dropped_connections = 0  # requests sent again after the server dropped the connection
        self.deadline_s = deadline_s
        self._http = httpx.AsyncClient(base_url=server.url, timeout=httpx.Timeout(deadline_s, connect=30.0),
                                       limits=http_limits(), headers={"Authorization": f"Bearer {server.api_key}"})

    async def __aenter__(self) -> EvalClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()
        if self.dropped_connections:
            warnings.warn(f"{self.server.describe()} dropped {self.dropped_connections} connection(s) without an "
                          "answer; each of those requests was sent once more and answered", stacklevel=2)

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self._limit:
            try:
                async with asyncio.timeout(self.deadline_s):
                    try:
                        response = await self._http.post(path, json=body)
                    except (httpx.RemoteProtocolError, httpx.ReadError):
                        # The server dropped a pooled connection without a response (CI: one
                        # ReadError on /tokenize in ~10,000 requests, the server healthy after it).
                        # Every request here is greedy and seeded, so sending it once more on a new
                        # connection is safe; a second drop is an error.
                        self.dropped_connections += 1
                        response = await self._http.post(path, json=body)
            except (TimeoutError, httpx.TimeoutException):
                raise EvalRequestError(f"{self.server.describe()}: POST {path} got no answer within its total "
                                       f"deadline of {self.deadline_s:g} s: the server hangs (its log: "
                                       f"{self.server.log_path or 'not kept'})") from None
            except httpx.HTTPError as exc:
                raise EvalRequestError(f"{self.server.describe()}: POST {path} failed: "
                                       f"{type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            raise EvalRequestError(f"{self.server.describe()}: POST {path} answered {response.status_code}: "
                                   f"{response.text[:500]}")
        try:
            return response.json()
        except ValueError:
            raise EvalRequestError(f"{self.server.describe()}: POST {path} answered no JSON: "
                                   f"{response.text[:200]}") from None

    async def chat(self, messages: Sequence[Mapping[str, str]], max_tokens: int) -> str:
        body = {"model": self.server.model, "messages": list(messages), "temperature": 0.0, "max_tokens": max_tokens,
                "seed": self.seed}
        data = await self._post("/v1/chat/completions", body)
        return str(data["choices"][0]["message"].get("content") or "")

    async def complete(self, prompt: str, max_tokens: int, stop: Sequence[str] | None = None) -> str:
        body: dict[str, Any] = {"model": self.server.model, "prompt": prompt, "temperature": 0.0,
                                "max_tokens": max_tokens, "seed": self.seed}
        if stop:
            body["stop"] = list(stop)
        data = await self._post("/v1/completions", body)
        return str(data["choices"][0]["text"])

    async def tokenize(self, text: str, special: bool) -> list[int]:
        data = await self._post("/tokenize", tokenize_request(self.server.model, text, special=special))
        ids = token_ids(data)
        if ids is None:
            raise EvalRequestError(f"{self.server.describe()}: /tokenize answered no token ids: {str(data)[:200]}")
        return ids

    async def prompt_logprobs(self, prompts: Sequence[Sequence[int]],
                              top_k: int) -> list[list[PositionLogprobs | None]]:
        """For each token-id prompt, every position's logprobs (position 0 has none: None)."""
        body = {"model": self.server.model, "prompt": [list(p) for p in prompts], "max_tokens": 1, "temperature": 0.0,
                "seed": self.seed, "prompt_logprobs": top_k}
        data = await self._post("/v1/completions", body)
        choices = sorted(data["choices"], key=lambda c: c["index"])
        if len(choices) != len(prompts):
            raise EvalRequestError(f"{self.server.describe()}: asked {len(prompts)} prompts, "
                                   f"got {len(choices)} choices")
        return [_positions(prompt, choice.get("prompt_logprobs"), top_k, self.server)
                for prompt, choice in zip(prompts, choices)]

    async def greedy(self, prompt: str, max_tokens: int, top_k: int) -> GreedyOutput:
        body = {"model": self.server.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
                "seed": self.seed, "logprobs": top_k, "return_tokens_as_token_ids": True}
        data = await self._post("/v1/completions", body)
        logprobs = data["choices"][0].get("logprobs") or {}
        tokens = tuple(_token_id(t) for t in logprobs.get("tokens") or [])
        top = tuple({_token_id(t): float(v) for t, v in (entry or {}).items()}
                    for entry in logprobs.get("top_logprobs") or [])
        return GreedyOutput(tokens, top)


def _token_id(text: str) -> int:
    """``token_id:123`` (vLLM's return_tokens_as_token_ids) -> 123."""
    return int(str(text).rpartition(":")[2])


def _positions(prompt: Sequence[int], entries: list[Any] | None, top_k: int,
               server: ServerHandle) -> list[PositionLogprobs | None]:
    if entries is None or len(entries) != len(prompt):
        raise EvalRequestError(f"{server.describe()}: prompt_logprobs missing or of the wrong length "
                               "(is this a vLLM server?)")
    positions: list[PositionLogprobs | None] = [None]
    for token, entry in zip(prompt[1:], entries[1:]):
        ranked = {int(t): (float(v["logprob"]), int(v.get("rank") or 0)) for t, v in entry.items()}
        if token not in ranked:
            raise EvalRequestError(f"{server.describe()}: prompt_logprobs lack the prompt token {token}")
        top = {t: lp for t, (lp, rank) in ranked.items() if rank <= top_k or t == token}
        top1 = min(ranked, key=lambda t: (ranked[t][1] if ranked[t][1] > 0 else 10**9, -ranked[t][0]))
        positions.append(PositionLogprobs(token, ranked[token][0], top, top1))
    return positions
