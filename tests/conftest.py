"""Shared setup of pytest-vllm's own tests."""

from __future__ import annotations

import os
from pathlib import Path

from pytest_vllm.paths import cache_dir

pytest_plugins = ["pytester"]

# pytester gives inner pytest runs a temporary HOME; keep them on this machine's caches (the
# built embedded models, vLLM's compile cache) so inner servers boot warm.
os.environ.setdefault("PYTEST_VLLM_CACHE", str(cache_dir()))
os.environ.setdefault("VLLM_CACHE_ROOT", str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vllm"))
# pytester's inner runs import pytest_vllm through PYTHONPATH first: this checkout, not the one the
# editable install points at (another worktree's code would be tested otherwise).
_CHECKOUT = str(Path(__file__).resolve().parents[1])
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_CHECKOUT, os.environ.get("PYTHONPATH")]))
