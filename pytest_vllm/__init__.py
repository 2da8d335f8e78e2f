"""pytest-vllm: pass/fail gates for vLLM serving inside pytest."""

from __future__ import annotations

__version__ = "0.1.0"
