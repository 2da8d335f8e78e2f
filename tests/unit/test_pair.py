"""Which model and role flags each server gets, by profile and host."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_vllm.gpu import PROFILES
from pytest_vllm.models import embedded
from pytest_vllm.models.pair import resolve_role


@pytest.fixture(autouse=True)
def built_pair(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The embedded checkpoints as paths (building them is the models command's business)."""
    monkeypatch.setattr(embedded, "require_built", lambda recipe: tmp_path / recipe.name)


def test_the_embedded_w8a8_is_served_in_bfloat16_where_amx_runs_it() -> None:
    cpu = PROFILES["cpu"]
    amx_host = ("amx_bf16", "avx512_bf16", "avx512f", "amx_tile", "amx_int8")
    assert resolve_role("compressed", None, None, cpu, amx_host).flags == {"dtype": "bfloat16"}
    assert resolve_role("compressed", None, None, cpu, ("avx512_bf16", "avx512f")).flags == {}
    assert resolve_role("base", None, None, cpu, amx_host).flags == {}  # the float32 reference
    assert resolve_role("compressed", None, "/my/w8a8", cpu, amx_host).flags == {}  # a user's model: their flags


def test_gpus_quantize_the_base_online() -> None:
    flags = resolve_role("compressed", None, None, PROFILES["h100"], ("amx_tile",)).flags
    assert flags["dtype"] == "bfloat16" and flags["quantization"] == "fp8"
