"""Which OpenAI-compatible server answers: its family decides which known deviations apply to it.

A family is told from what the server reports about itself, never from a flag: vLLM answers
``GET /version`` with ``{"version": ...}``; llama-cpp-python's FastAPI app names itself in its
``/openapi.json`` (``info.title`` "🦙 llama.cpp Python API", ``info.version`` its release). A
server of no known family gets no allowance: every deviation it shows is reported as found.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pytest_vllm.conformance.probe import Probe

VLLM = "vllm"
LLAMA_CPP_PYTHON = "llama-cpp-python"


@dataclass(frozen=True)
class ServerFamily:
    """The implementation behind a URL: ``name`` None when no known family matched."""

    name: str | None
    version: str | None = None
    evidence: str = ""  # what the server said that told its family

    def describe(self) -> str:
        if self.name is None:
            return "no known server family"
        return f"{self.name} {self.version or '(version unknown)'}"


def _document(probe: Probe, path: str) -> Any:
    exchange = probe.get(path)
    probe.history.pop()
    try:
        return exchange.json() if exchange.status == 200 else None
    except ValueError:
        return None


def _vllm(probe: Probe) -> ServerFamily | None:
    document = _document(probe, "/version")
    version = document.get("version") if isinstance(document, dict) else None
    if isinstance(version, str):
        return ServerFamily(VLLM, version, f"GET /version answered {{'version': {version!r}}}")
    return None


def _llama_cpp_python(probe: Probe) -> ServerFamily | None:
    document = _document(probe, "/openapi.json")
    info = document.get("info") if isinstance(document, dict) else None
    title = info.get("title") if isinstance(info, dict) else None
    if isinstance(info, dict) and isinstance(title, str) and "llama.cpp Python API" in title:
        version = info.get("version") if isinstance(info.get("version"), str) else None
        return ServerFamily(LLAMA_CPP_PYTHON, version, f"/openapi.json info.title {title!r}")
    return None


# Asked in this order; the first that recognises the server wins.
DETECTORS: tuple[Callable[[Probe], ServerFamily | None], ...] = (_vllm, _llama_cpp_python)

_cache: dict[str, ServerFamily] = {}


def identify(probe: Probe, booted_vllm_version: str | None = None) -> ServerFamily:
    """The server's family: a server this plugin booted is the installed vLLM
    (``booted_vllm_version``); a ``--vllm-url`` server is asked (once per URL and run)."""
    if booted_vllm_version is not None:
        return ServerFamily(VLLM, booted_vllm_version, "booted by pytest-vllm")
    if probe.base_url not in _cache:
        found = (family for detect in DETECTORS if (family := detect(probe)) is not None)
        _cache[probe.base_url] = next(found, ServerFamily(None, evidence="no detector recognised the server"))
    return _cache[probe.base_url]
