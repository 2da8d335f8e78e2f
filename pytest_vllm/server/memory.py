"""GPU memory of servers that share one device: a fixed KV cache size, so they can boot together.

vLLM sizes its KV cache by profiling: it snapshots the device's free memory, loads and runs the
model, and counts everything the device lost meanwhile as its own. When two servers boot side by
side, one server's KV cache allocation lands in the other's profiling window and is counted
against it (on an H100 with vLLM 0.24 the FP8 server got "Available KV cache memory: 0.0 GiB" and
died). With ``--kv-cache-memory-bytes`` vLLM skips that profiling, so servers whose KV cache size
is fixed from their memory share can boot in parallel, halving a GPU run's boot time.
"""

from __future__ import annotations

from typing import Any

from pytest_vllm.models.weights import checkpoint_bytes, served_weight_bytes

GIB = 1 << 30
MIB = 1 << 20
# Room left in a server's share besides weights and KV cache: activations of a prefill batch,
# CUDA graphs, the CUDA context and library workspaces. A SmolLM2-135M server on an H100 used
# 0.8 GiB besides its KV cache; 8B-class models use 2-4 GiB.
FIXED_RESERVE_BYTES = 2 * GIB
RESERVE_SHARE_OF_WEIGHTS = 0.25
# Below this share of its memory for the KV cache the estimate is too tight to trust; the server
# then sizes its own KV cache (and boots alone).
MIN_KV_SHARE = 0.25
PARALLEL_FLAGS = ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size")


def pinned_kv_cache_bytes(model: str, flags: dict[str, Any], device_memory_bytes: int) -> int | None:
    """The KV cache size that keeps a server inside its ``gpu_memory_utilization`` share of the
    device, or None where it cannot be estimated safely (the server then profiles for itself).

    The estimate takes the checkpoint's size on disk as its weights, which overstates weights that
    quantize when loaded (online FP8): the KV cache comes out smaller, never larger. Random weights
    (``load_format="dummy"``) have no files: their size follows from config.json, unquantized.
    """
    share = flags.get("gpu_memory_utilization")
    if not share or device_memory_bytes <= 0:
        return None
    if any(int(flags.get(name) or 1) > 1 for name in PARALLEL_FLAGS):
        return None  # weights split over devices: the per-device share is not the checkpoint's size
    if flags.get("load_format") == "dummy":
        weights = served_weight_bytes(model, {k: v for k, v in flags.items() if k != "quantization"})
    else:
        weights = checkpoint_bytes(model)
    if weights is None:
        return None
    budget = float(share) * device_memory_bytes
    kv_bytes = budget - weights - FIXED_RESERVE_BYTES - RESERVE_SHARE_OF_WEIGHTS * weights
    if kv_bytes < MIN_KV_SHARE * budget:
        return None
    return int(kv_bytes) // MIB * MIB
