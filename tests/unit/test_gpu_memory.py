"""Fixing the KV cache size of servers that share a GPU, so they may boot in parallel."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_vllm.config import RunConfig
from pytest_vllm.gpu import BootOrder, DeviceInfo
from pytest_vllm.server.memory import GIB, MIB, pinned_kv_cache_bytes
from pytest_vllm.server.pool import boots_in_parallel
from pytest_vllm.server.process import LaunchPlan
from pytest_vllm.server.spec import MarkerFlags, ServerSpec
from pytest_vllm.session import VLLMSession

H100_BYTES = 81559 * MIB


def checkpoint(tmp_path: Path, weight_bytes: int, name: str = "model.safetensors") -> str:
    (tmp_path / "config.json").write_text("{}")
    with open(tmp_path / name, "wb") as f:
        f.truncate(weight_bytes)  # sparse: the size is what counts
    return str(tmp_path)


def test_small_model_gets_most_of_its_share_as_kv_cache(tmp_path: Path) -> None:
    model = checkpoint(tmp_path, 540 * MIB)  # SmolLM2-135M's checkpoint
    kv = pinned_kv_cache_bytes(model, {"gpu_memory_utilization": 0.42}, H100_BYTES)
    assert kv is not None and kv % MIB == 0
    share = 0.42 * H100_BYTES
    # vLLM's own profiling gave this server 32.45 GiB of its 33.45 GiB share; the estimate stays below.
    assert 29 * GIB < kv < share - 540 * MIB - 2 * GIB


def test_kv_cache_shrinks_with_the_weights(tmp_path: Path) -> None:
    sizes = {}
    for gib in (1, 16):
        folder = tmp_path / f"{gib}gib"
        folder.mkdir()
        sizes[gib] = pinned_kv_cache_bytes(checkpoint(folder, gib * GIB), {"gpu_memory_utilization": 0.42},
                                           H100_BYTES)
    assert sizes[1] is not None and sizes[16] is not None
    # Each GiB of weights costs its own size and a quarter more for activations.
    assert abs((sizes[1] - sizes[16]) - 15 * GIB * 1.25) <= 2 * MIB


def test_weights_that_leave_too_little_room_are_not_estimated(tmp_path: Path) -> None:
    # An 8B bf16 checkpoint in a 0.40 share of an L40S: the server must size its KV cache itself.
    model = checkpoint(tmp_path, 16 * GIB)
    assert pinned_kv_cache_bytes(model, {"gpu_memory_utilization": 0.40}, 46068 * MIB) is None


def test_sharded_bin_checkpoints_count_every_shard(tmp_path: Path) -> None:
    for i in range(3):
        checkpoint(tmp_path, 2 * GIB, name=f"pytorch_model-0000{i}.bin")
    one_shard = tmp_path / "one"
    one_shard.mkdir()
    three = pinned_kv_cache_bytes(str(tmp_path), {"gpu_memory_utilization": 0.42}, H100_BYTES)
    one = pinned_kv_cache_bytes(checkpoint(one_shard, 2 * GIB, name="pytorch_model.bin"),
                                {"gpu_memory_utilization": 0.42}, H100_BYTES)
    assert three is not None and one is not None and one - three >= 4 * GIB


@pytest.mark.parametrize("flags", [
    {},                                                            # no share: vLLM's default placement
    {"gpu_memory_utilization": 0.42, "tensor_parallel_size": 2},   # weights split over GPUs
    {"gpu_memory_utilization": 0.42, "pipeline_parallel_size": 2},
    {"gpu_memory_utilization": 0.42, "load_format": "dummy"},      # random weights, nothing to size
])
def test_no_estimate_where_the_checkpoint_does_not_say_the_memory(tmp_path: Path, flags: dict) -> None:
    assert pinned_kv_cache_bytes(checkpoint(tmp_path, GIB), flags, H100_BYTES) is None


def test_hub_ids_and_weightless_folders_are_not_estimated(tmp_path: Path) -> None:
    assert pinned_kv_cache_bytes("meta-llama/Llama-3.1-8B-Instruct", {"gpu_memory_utilization": 0.42},
                                 H100_BYTES) is None
    (tmp_path / "config.json").write_text("{}")
    assert pinned_kv_cache_bytes(str(tmp_path), {"gpu_memory_utilization": 0.42}, H100_BYTES) is None


def plan(beside_others: bool) -> LaunchPlan:
    return LaunchPlan(argv=["vllm"], env={}, boots_beside_others=beside_others)


def test_serial_profiles_boot_in_parallel_only_when_every_memory_is_fixed() -> None:
    assert boots_in_parallel(BootOrder.SERIAL, [plan(True), plan(True)])
    assert not boots_in_parallel(BootOrder.SERIAL, [plan(True), plan(False)])
    assert not boots_in_parallel(BootOrder.SERIAL, [plan(False)])
    assert boots_in_parallel(BootOrder.PARALLEL, [plan(False), plan(False)])


def gpu_session(tmp_path: Path, weight_bytes: int) -> tuple[VLLMSession, ServerSpec]:
    """A session on the h100 profile that plans launches only (nothing boots here); the
    argument schema is the installed vLLM's own."""
    session = VLLMSession(RunConfig(rootdir=tmp_path, gpu="h100", gpu_force=True))
    session.__dict__["device"] = DeviceInfo(name="NVIDIA H100 80GB HBM3", count=1, memory_mib=81559)
    model = tmp_path / "model"
    model.mkdir()
    spec = session.spec_for("base", [], model=checkpoint(model, weight_bytes))
    return session, spec


def test_gpu_launch_fixes_the_kv_cache_outside_the_spec(tmp_path: Path) -> None:
    session, spec = gpu_session(tmp_path, 540 * MIB)
    launch = session.launcher.plan(spec, port=8000, slot=0, slots=2)
    assert launch.boots_beside_others and "KV cache fixed at" in launch.note
    kv = int(launch.argv[launch.argv.index("--kv-cache-memory-bytes") + 1])
    assert kv == pinned_kv_cache_bytes(spec.model, spec.flag_dict, 81559 * MIB)
    assert "--gpu-memory-utilization" in launch.argv
    assert "kv_cache_memory_bytes" not in spec.flag_dict, "the spec and its baseline key stay as they were"


def test_gpu_launch_without_an_estimate_profiles_and_boots_alone(tmp_path: Path) -> None:
    session, spec = gpu_session(tmp_path, 30 * GIB)  # more than its 0.42 share leaves room for
    launch = session.launcher.plan(spec, port=8000, slot=0, slots=2)
    assert not launch.boots_beside_others and "--kv-cache-memory-bytes" not in launch.argv


def test_gpu_launch_keeps_a_kv_cache_size_the_marker_gives(tmp_path: Path) -> None:
    session, _ = gpu_session(tmp_path, 540 * MIB)
    spec = session.spec_for("base", [MarkerFlags(flags={"kv_cache_memory_bytes": 3 * GIB})], model="any/hub-model")
    launch = session.launcher.plan(spec, port=8000, slot=0, slots=2)
    assert launch.boots_beside_others and launch.note == ""
    assert launch.argv[launch.argv.index("--kv-cache-memory-bytes") + 1] == str(3 * GIB)
