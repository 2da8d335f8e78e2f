"""Where pytest-vllm keeps what outlives a run: built models, the vLLM option cache."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$PYTEST_VLLM_CACHE``, else ``$XDG_CACHE_HOME/pytest-vllm``, else ``~/.cache/pytest-vllm``."""
    explicit = os.environ.get("PYTEST_VLLM_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "pytest-vllm"
