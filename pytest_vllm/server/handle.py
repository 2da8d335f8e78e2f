"""ServerHandle: what a test gets from ``base_server`` / ``compressed_server``.

The same object for a server pytest booted and for one given by ``--vllm-url``, so suites run
unchanged against a cluster deployment. The OpenAI clients it makes have retries off: a retried
request would hide a failure and distort timings.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import httpx

from pytest_vllm.errors import UsageError
from pytest_vllm.server.counters import counter_value
from pytest_vllm.server.spec import ServerSpec

if TYPE_CHECKING:
    import openai

DEFAULT_TIMEOUT = 600.0
# vLLM's API server (uvicorn) closes a keep-alive connection after 5 s idle. A client that keeps
# it longer can send on a socket the server is closing and get a ReadError (seen in CI with
# retries off), so every pooled client drops idle connections well before that.
IDLE_CONNECTION_EXPIRY_S = 2.0


def http_limits(max_connections: int | None = 1000, library: Any = httpx) -> Any:
    """Connection-pool limits for httpx clients of a vLLM server (see IDLE_CONNECTION_EXPIRY_S);
    ``library``: another httpx-compatible module (the openai SDK's own)."""
    return library.Limits(max_connections=max_connections, max_keepalive_connections=100,
                          keepalive_expiry=IDLE_CONNECTION_EXPIRY_S)


def _sdk_http_limits(sdk_client_type: type) -> Any:
    """http_limits() in the HTTP library the installed openai SDK is built on (httpx, or httpx2 in 3.x)."""
    return http_limits(library=importlib.import_module(sdk_client_type.__mro__[1].__module__.split(".")[0]))


@dataclass(frozen=True)
class ServerHandle:
    """A ready OpenAI-compatible vLLM server."""

    role: str
    url: str  # http://host:port, without /v1
    model: str  # the served model name to put in requests
    spec: ServerSpec | None = None  # None for a --vllm-url server (its flags are unknown)
    log_path: Path | None = None  # None for a --vllm-url server
    api_key: str = field(default="EMPTY", repr=False)  # never shown: a failing assert prints the handle
    # A role of several replicas (server/replicas.py): every replica's handle, this one's fields being
    # the first's, so single-server code paths talk to replica 1 unchanged; () for a single server.
    replicas: tuple[ServerHandle, ...] = field(default=(), repr=False, compare=False)

    @property
    def members(self) -> tuple[ServerHandle, ...]:
        """The role's replicas, each a single-server handle (just this one for a single server)."""
        return self.replicas or (self,)

    @property
    def replica_urls(self) -> tuple[str, ...]:
        return tuple(member.url for member in self.members)

    @property
    def api_base(self) -> str:
        return f"{self.url}/v1"

    @property
    def is_remote(self) -> bool:
        return self.spec is None

    def client(self, timeout: float = DEFAULT_TIMEOUT, **kwargs: Any) -> openai.OpenAI:
        import openai

        kwargs.setdefault("http_client", openai.DefaultHttpxClient(limits=_sdk_http_limits(openai.DefaultHttpxClient)))
        return openai.OpenAI(base_url=self.api_base, api_key=self.api_key, max_retries=0, timeout=timeout,
                             **kwargs)

    def async_client(self, timeout: float = DEFAULT_TIMEOUT, **kwargs: Any) -> openai.AsyncOpenAI:
        import openai

        kwargs.setdefault("http_client",
                          openai.DefaultAsyncHttpxClient(limits=_sdk_http_limits(openai.DefaultAsyncHttpxClient)))
        return openai.AsyncOpenAI(base_url=self.api_base, api_key=self.api_key, max_retries=0, timeout=timeout,
                                  **kwargs)

    def counter(self, name: str, **labels: str) -> float | None:
        """A Prometheus counter of the server's /metrics (e.g. ``vllm:prefix_cache_hits``), summed
        over the samples carrying ``labels``; None when this vLLM does not export it."""
        with self.http(timeout=30) as http:
            return counter_value(http.get("/metrics").text, name, **labels)

    def tokenize(self, text: str | None = None, messages: list[dict[str, str]] | None = None,
                 special: bool = True) -> list[int]:
        """The served model's token ids of ``text`` (or of a chat's ``messages`` with the generation
        prompt), through vLLM's ``/tokenize``; UsageError when the server has none."""
        with self.http(timeout=60) as http:
            response = http.post("/tokenize", json=tokenize_request(self.model, text, messages, special))
        ids = token_ids(response.json()) if response.status_code == 200 else None
        if ids is None:
            raise UsageError(f"{self.describe()}: /tokenize answered {response.status_code}: {response.text[:300]}")
        return ids

    def http(self, timeout: float = DEFAULT_TIMEOUT) -> httpx.Client:
        """A raw HTTP client on the server root, for endpoints the SDK lacks (/health, /tokenize)."""
        headers = {"Authorization": f"Bearer {self.api_key}"}
        return httpx.Client(base_url=self.url, timeout=timeout, headers=headers, limits=http_limits())

    def is_healthy(self) -> bool:
        try:
            with self.http(timeout=10) as http:
                return http.get("/health").status_code == 200
        except httpx.HTTPError:
            return False

    def describe(self) -> str:
        where = "remote " if self.is_remote else ""
        if len(self.members) > 1:
            urls = ", ".join(self.replica_urls)
            return f"{where}{self.role} server {self.model} at {len(self.members)} replicas ({urls})"
        return f"{where}{self.role} server {self.model} at {self.url}"


def tokenize_request(model: str, text: str | None = None, messages: list[dict[str, str]] | None = None,
                     special: bool = True) -> dict[str, Any]:
    """The body of a ``POST /tokenize`` (vLLM's extension; every client of it builds it here)."""
    if messages is not None:
        return {"model": model, "messages": messages, "add_generation_prompt": True}
    return {"model": model, "prompt": text, "add_special_tokens": special}


def token_ids(document: Any) -> list[int] | None:
    """The ids in a ``/tokenize`` answer, or None when it holds none."""
    tokens = document.get("tokens") if isinstance(document, dict) else None
    if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
        return None
    return tokens


class ServerPair(NamedTuple):
    """The base and compressed servers of one configuration (the ``server_pair`` fixture)."""

    base: ServerHandle
    compressed: ServerHandle


def connect_remote(role: str, url: str, api_key: str, model: str | None = None) -> ServerHandle:
    """A handle on a server someone else runs: check it answers and learn its model name.

    ``model`` (the role's ``--base-model``/``--compressed-model`` when given) names the model that
    requests ask for; it must be one the server lists, unless its /v1/models lists none (some
    OpenAI-compatible servers load models on demand and list only what their cache holds)."""
    headers = {"Authorization": f"Bearer {api_key}"}
    try:
        with httpx.Client(base_url=url, timeout=30, headers=headers) as http:
            response = http.get("/v1/models")
            response.raise_for_status()
            models = [m["id"] for m in response.json().get("data", [])]
    except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UsageError(f"--vllm-url {role}={url}: the server does not answer GET /v1/models ({exc})") from None
    flag = f"--{role}-model" if role in ("base", "compressed") else None
    if model:
        if models and model not in models:
            raise UsageError(f"--vllm-url {role}={url} serves {', '.join(map(repr, models))}, not {model!r} "
                             f"(from {flag or 'the run'}): name one of those or leave {flag or 'it'} out")
        return ServerHandle(role=role, url=url, model=model, api_key=api_key)
    if not models:
        hint = f"; name the model its requests ask for with {flag} NAME" if flag else ""
        raise UsageError(f"--vllm-url {role}={url}: /v1/models lists no model{hint}")
    return ServerHandle(role=role, url=url, model=models[0], api_key=api_key)
