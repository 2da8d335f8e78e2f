"""How many bytes of weights a server holds: what its KV cache share must leave room for, and what
every decoding step reads (the memory-bandwidth floor of the roofline).

From the checkpoint's weight files where they are what is served; from config.json's dimensions
where there are none (``load_format="dummy"``) or where the server quantizes them when loading
(online FP8: the linear layers take one byte per parameter, embeddings and norms stay 16-bit).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth")
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}
# Online quantization schemes and the bytes per parameter of the linear layers they make.
ONLINE_QUANT_BYTES = {"fp8": 1}
# Config keys that mark a mixture of experts: a step reads only the routed experts, and the dense
# count below would overstate it; such models take their files' sizes.
MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")


@dataclass(frozen=True)
class DenseParams:
    """Parameters of a dense decoder by kind: linear layers (quantizable) and the rest."""

    linear: int
    other: int  # embeddings, untied lm_head, norms

    @property
    def total(self) -> int:
        return self.linear + self.other


def checkpoint_bytes(model: str) -> int | None:
    """Bytes of a local checkpoint's weight files (the first kind found), None when not local."""
    path = Path(model).expanduser()
    if not path.is_dir():
        return None
    for pattern in WEIGHT_PATTERNS:
        files = [f for f in path.glob(pattern) if f.is_file()]
        if files:
            return sum(f.stat().st_size for f in files)
    return None


def read_config(model: str) -> dict[str, Any] | None:
    path = Path(model).expanduser() / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def dense_params(config: dict[str, Any]) -> DenseParams | None:
    """Parameter counts of a dense Llama-like decoder from its config, None where the config lacks
    a dimension or describes a mixture of experts."""
    config = config.get("text_config", config) if isinstance(config.get("text_config"), dict) else config
    if any(config.get(key) for key in MOE_KEYS):
        return None
    try:
        hidden, layers = int(config["hidden_size"]), int(config["num_hidden_layers"])
        inter, vocab = int(config["intermediate_size"]), int(config["vocab_size"])
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or hidden // heads)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2  # q, o; k, v
    mlp = 3 * hidden * inter  # gate, up, down
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings") else 2)
    norms = (2 * layers + 1) * hidden
    return DenseParams(linear=layers * (attention + mlp), other=embeddings + norms)


def served_weight_bytes(model: str, flags: dict[str, Any]) -> int | None:
    """Bytes of weights the server holds on its device (one device: no tensor parallelism), or None
    where neither the files nor the config tell."""
    quantization = flags.get("quantization")
    dummy = flags.get("load_format") == "dummy"
    if not dummy and not quantization:
        on_disk = checkpoint_bytes(model)
        if on_disk is not None:
            return on_disk
    config = read_config(model)
    params = dense_params(config) if config else None
    if params is None:
        return None if dummy else checkpoint_bytes(model)
    if quantization and str(quantization) not in ONLINE_QUANT_BYTES:
        return None if dummy else checkpoint_bytes(model)
    dtype = str(flags.get("dtype") or config.get("torch_dtype") or config.get("dtype") or "bfloat16")  # type: ignore[union-attr]
    other_bytes = DTYPE_BYTES.get(dtype, 2)  # "auto" serves a float32 checkpoint in 16 bits on GPUs
    linear_bytes = ONLINE_QUANT_BYTES[str(quantization)] if quantization else other_bytes
    return params.linear * linear_bytes + params.other * other_bytes
