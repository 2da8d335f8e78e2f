"""How many requests a server's KV cache holds: from the model's shape (bytes per token), checked
against what the server says it allocated.

A KV cache too small for the traffic does not fail a request: requests queue and get preempted,
and latency budgets fail later without saying why. So the capacity is computed and stated before
any load:

* bytes per token of KV cache = 2 (K and V) x layers x KV heads x head dim x bytes of the cache's
  dtype (``kv_cache_dtype``; "auto" is the serving dtype), from the checkpoint's ``config.json``;
* what the server allocated: vLLM's ``vllm:cache_config_info`` (labels ``kv_cache_memory_bytes``,
  ``kv_cache_size_tokens``, ``block_size``, ``kv_cache_max_concurrency``, ``cache_dtype``);
* requests held at once = blocks allocated // blocks a request needs (its tokens rounded up to
  whole blocks): a request of 160 tokens takes two 128-token blocks.

On the CPU profile the embedded base (30 layers, 3 KV heads of 64, float32) costs 46,080 bytes a
token; its 2 GiB (``VLLM_CPU_KVCACHE_SPACE=2``) hold 46,592 tokens (364 blocks of 128), which is
vLLM's own 22.75 requests at ``max_model_len`` 2048 and 182 of the suites' 128 + 32 tokens.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_vllm.server.counters import metric_families

CACHE_CONFIG_INFO = "vllm:cache_config_info"
DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2, "fp8": 1, "fp8_e4m3": 1,
               "fp8_e5m2": 1, "fp8_inc": 1, "fp8_ds_mla": 1, "int8": 1}


@dataclass(frozen=True)
class AllocatedCache:
    """The KV cache a server reports having allocated (``vllm:cache_config_info``)."""

    block_size: int
    size_tokens: int | None
    memory_bytes: int | None
    max_concurrency: float | None  # vLLM's figure: tokens / max_model_len
    cache_dtype: str

    @property
    def blocks(self) -> int | None:
        return None if self.size_tokens is None else self.size_tokens // self.block_size


def _number(labels: dict[str, str], key: str) -> float | None:
    try:
        return float(labels[key])
    except (KeyError, ValueError):
        return None


def read_allocated(metrics_text: str) -> AllocatedCache | None:
    """The server's cache configuration from its /metrics text (None: not exported)."""
    for family in metric_families(metrics_text, [CACHE_CONFIG_INFO]):
        for sample in family.samples:
            labels = sample.labels
            block = _number(labels, "block_size")
            if block is None:
                continue
            tokens, memory = _number(labels, "kv_cache_size_tokens"), _number(labels, "kv_cache_memory_bytes")
            return AllocatedCache(int(block), None if tokens is None else int(tokens),
                                  None if memory is None else int(memory), _number(labels, "kv_cache_max_concurrency"),
                                  labels.get("cache_dtype", "auto"))
    return None


@dataclass(frozen=True)
class KVShape:
    """What one token of KV cache is made of, from the checkpoint's config."""

    layers: int
    kv_heads: int
    head_dim: int
    dtype: str

    @property
    def bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * DTYPE_BYTES[self.dtype]

    def describe(self) -> str:
        return (f"2 x {self.layers} layers x {self.kv_heads} KV heads x {self.head_dim} x {DTYPE_BYTES[self.dtype]} B "
                f"({self.dtype}) = {self.bytes_per_token:,} B per token")


def kv_shape(config: dict[str, Any], flags: dict[str, Any]) -> KVShape | None:
    """The KV shape of a decoder config under the server's flags (None: not a shape this knows)."""
    text = config.get("text_config", config)  # multimodal checkpoints nest the language model's
    try:
        layers = int(text["num_hidden_layers"])
        heads = int(text["num_attention_heads"])
        kv_heads = int(text.get("num_key_value_heads") or heads)
        head_dim = int(text.get("head_dim") or int(text["hidden_size"]) // heads)
    except (KeyError, TypeError, ValueError):
        return None
    cache_dtype = str(flags.get("kv_cache_dtype") or "auto")
    if cache_dtype == "auto":
        served = str(flags.get("dtype") or "auto")
        cache_dtype = served if served != "auto" else str(text.get("dtype") or text.get("torch_dtype") or "bfloat16")
    return KVShape(layers, kv_heads, head_dim, cache_dtype) if cache_dtype in DTYPE_BYTES else None


def read_config(model: str) -> dict[str, Any] | None:
    """A local checkpoint's config.json (None: a hub id or no config)."""
    path = Path(model).expanduser() / "config.json"
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


@dataclass(frozen=True)
class Capacity:
    """A server's KV cache: what it allocated and, where the model's shape is known, what it costs."""

    allocated: AllocatedCache
    shape: KVShape | None

    @property
    def tokens(self) -> int:
        """Tokens the cache holds: the server's figure, else the computed one (``capacity_of``
        makes a Capacity only where one of them exists)."""
        if self.allocated.size_tokens is not None:
            return self.allocated.size_tokens
        return self.computed_tokens() or 0

    def requests_held(self, tokens_per_request: int) -> int:
        """Requests of this many tokens (prompt + output) the cache holds at once."""
        block = self.allocated.block_size
        return (self.tokens // block) // max(1, math.ceil(tokens_per_request / block))

    def computed_tokens(self) -> int | None:
        """The tokens the allocated bytes hold at the computed cost per token (None: not computable)."""
        if self.shape is None or self.allocated.memory_bytes is None:
            return None
        block = self.allocated.block_size
        return self.allocated.memory_bytes // self.shape.bytes_per_token // block * block

    def disagreement(self) -> str | None:
        """Why the computed cost does not explain what the server allocated (None: it does, to a block)."""
        computed = self.computed_tokens()
        if computed is None or self.allocated.size_tokens is None:
            return None
        if abs(computed - self.allocated.size_tokens) <= self.allocated.block_size:
            return None
        assert self.shape is not None
        return (f"the server allocated {self.allocated.size_tokens:,} tokens in {self.allocated.memory_bytes:,} bytes, "
                f"but {self.shape.describe()} gives {computed:,}")


def capacity_of(metrics_text: str, model: str, flags: dict[str, Any]) -> Capacity | None:
    """A server's capacity from its /metrics text, its model path and flags (None: the server does
    not say what it allocated, and its size cannot be computed)."""
    allocated = read_allocated(metrics_text)
    if allocated is None:
        return None
    config = read_config(model)
    capacity = Capacity(allocated, kv_shape(config, flags) if config is not None else None)
    return capacity if allocated.size_tokens is not None or capacity.computed_tokens() is not None else None


def shortfall(capacity: Capacity, concurrency: int, tokens_per_request: int, gpu: bool) -> str | None:
    """Why the cache cannot hold ``concurrency`` requests of ``tokens_per_request`` tokens without
    preempting, with the flags that change it (None: it can)."""
    held = capacity.requests_held(tokens_per_request)
    if held >= concurrency:
        return None
    more = ("raise --gpu-memory-utilization or --kv-cache-memory-bytes, lower --max-model-len or --max-num-seqs, "
            "or store the cache in fp8 (kv_cache_dtype=\"fp8\")" if gpu else
            "raise VLLM_CPU_KVCACHE_SPACE (GiB of KV cache, a vllm_server marker's env), lower --max-num-seqs, "
            "or drop --num-gpu-blocks-override")
    return (f"its KV cache holds {capacity.tokens:,} tokens ({capacity.tokens // capacity.allocated.block_size} "
            f"blocks of {capacity.allocated.block_size}): {held} request(s) of {tokens_per_request} tokens at once, "
            f"fewer than the concurrency of {concurrency}, so requests would queue and be preempted; {more}")


# A cache whose tokens grow less than its per-token cost shrinks (fp8 KV, a smaller serving dtype) lost
# memory somewhere; one block of rounding per side is not a loss.
CAPACITY_RATIO_SLACK = 0.98


@dataclass(frozen=True)
class KVCapacityRatio:
    """A candidate server's KV cache against a reference's: the tokens each holds, and what the
    per-token costs alone would make of the same memory (None where a shape is unknown)."""

    reference_tokens: int
    candidate_tokens: int
    cost_ratio: float | None  # reference bytes per token / candidate's: 2.0 for an fp8 cache against bf16

    @property
    def ratio(self) -> float:
        return self.candidate_tokens / max(self.reference_tokens, 1)

    def shortfall(self, floor: float | None = None) -> str | None:
        """Why the candidate holds too few tokens (None: it holds enough): below the per-token cost
        ratio (its cache got less memory than the reference's), or below an asked floor."""
        problems = []
        if self.cost_ratio is not None and self.ratio < self.cost_ratio * CAPACITY_RATIO_SLACK:
            problems.append(f"its per-token cost is 1/{self.cost_ratio:.2f} of the reference's, so the same memory "
                            f"would hold {self.cost_ratio:.2f}x the tokens; it holds {self.ratio:.2f}x: its KV cache "
                            "got less memory (check --gpu-memory-utilization / --kv-cache-memory-bytes, or "
                            "VLLM_CPU_KVCACHE_SPACE on the CPU)")
        if floor is not None and self.ratio < floor:
            problems.append(f"it holds {self.ratio:.2f}x the reference's tokens, below the floor of {floor:g}x "
                            "(an fp8 KV cache, kv_cache_dtype=\"fp8\", halves the cost per token)")
        return "; ".join(problems) or None


def kv_capacity_ratio(reference: Capacity, candidate: Capacity) -> KVCapacityRatio:
    cost = (reference.shape.bytes_per_token / candidate.shape.bytes_per_token
            if reference.shape is not None and candidate.shape is not None else None)
    return KVCapacityRatio(reference.tokens, candidate.tokens, cost)
