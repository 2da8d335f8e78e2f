"""ServerHandle: what a test gets from ``base_server`` / ``compressed_server``.

The same object for a server pytest booted and for one given by ``--vllm-url``, so suites run
unchanged against a cluster deployment. The OpenAI clients it makes have retries off: a retried
request would hide a failure and distort timings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from pytest_vllm.errors import UsageError
from pytest_vllm.server.spec import ServerSpec

if TYPE_CHECKING:
    import openai

DEFAULT_TIMEOUT = 600.0


@dataclass(frozen=True)
class ServerHandle:
    """A ready OpenAI-compatible vLLM server."""

    role: str
    url: str  # http://host:port, without /v1
    model: str  # the served model name to put in requests
    spec: ServerSpec | None = None  # None for a --vllm-url server (its flags are unknown)
    log_path: Path | None = None  # None for a --vllm-url server
    api_key: str = "EMPTY"

    @property
    def api_base(self) -> str:
        return f"{self.url}/v1"

    @property
    def is_remote(self) -> bool:
        return self.spec is None

    def client(self, timeout: float = DEFAULT_TIMEOUT, **kwargs: Any) -> openai.OpenAI:
        import openai

        return openai.OpenAI(base_url=self.api_base, api_key=self.api_key, max_retries=0, timeout=timeout,
                             **kwargs)

    def async_client(self, timeout: float = DEFAULT_TIMEOUT, **kwargs: Any) -> openai.AsyncOpenAI:
        import openai

        return openai.AsyncOpenAI(base_url=self.api_base, api_key=self.api_key, max_retries=0, timeout=timeout,
                                  **kwargs)

    def http(self, timeout: float = DEFAULT_TIMEOUT) -> httpx.Client:
        """A raw HTTP client on the server root, for endpoints the SDK lacks (/health, /tokenize)."""
        headers = {"Authorization": f"Bearer {self.api_key}"}
        return httpx.Client(base_url=self.url, timeout=timeout, headers=headers)

    def is_healthy(self) -> bool:
        try:
            with self.http(timeout=10) as http:
                return http.get("/health").status_code == 200
        except httpx.HTTPError:
            return False

    def describe(self) -> str:
        where = "remote " if self.is_remote else ""
        return f"{where}{self.role} server {self.model} at {self.url}"


def connect_remote(role: str, url: str, api_key: str) -> ServerHandle:
    """A handle on a server someone else runs: check it answers and learn its model name."""
    headers = {"Authorization": f"Bearer {api_key}"}
    try:
        with httpx.Client(base_url=url, timeout=30, headers=headers) as http:
            response = http.get("/v1/models")
            response.raise_for_status()
            models = [m["id"] for m in response.json().get("data", [])]
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        raise UsageError(f"--vllm-url {role}={url}: the server does not answer GET /v1/models ({exc})") from None
    if not models:
        raise UsageError(f"--vllm-url {role}={url}: /v1/models lists no model")
    return ServerHandle(role=role, url=url, model=models[0], api_key=api_key)
