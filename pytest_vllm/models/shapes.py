"""Production-shaped checkpoints without weights, for the perf suite on GPUs.

A 135M model is bound by the host on an H100 or H200 (one suite ran 1.0x to 0.55x across nine
machines of one kind); an 8B-class model is bound by the GPU and holds still (two H200 machines:
bf16 c64 5,230-5,323 tok/s). vLLM serves random weights from a config alone (``load_format=
"dummy"``), so the perf pair needs no download: a folder holding the embedded tokenizer and a
config of a known shape. Its output is noise (the perf workloads ignore EOS); its speed is the
shape's. Shapes keep the tokenizer's vocabulary, so their embeddings are smaller than the
originals' (Llama-3.1-8B: 49,152 rows here against 128,256).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_vllm.errors import UsageError

# Files of a checkpoint folder that make its tokenizer (and chat template): copied into the shape.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "vocab.json", "merges.txt", "tokenizer.model", "generation_config.json")
# Token ids and limits taken over from the tokenizer's own config when present.
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")
SHAPE_VERSION = 1


@dataclass(frozen=True)
class Shape:
    """The dimensions of a dense Llama-architecture model."""

    name: str
    description: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    tie_word_embeddings: bool = False
    rope_theta: float = 500000.0

    def config(self, tokenizer_config: dict[str, Any]) -> dict[str, Any]:
        """config.json of this shape for the tokenizer whose config.json is ``tokenizer_config``."""
        vocab = tokenizer_config.get("vocab_size")
        if not isinstance(vocab, int) or vocab < 1:
            raise UsageError("the tokenizer's config.json has no vocab_size: the perf shape needs the checkpoint's "
                             "own config.json beside its tokenizer (pass --vllm-perf-model user to serve it as is)")
        config: dict[str, Any] = {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers, "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads, "head_dim": self.head_dim,
            "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": self.rope_theta,
            "vocab_size": vocab, "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": "bfloat16", "dtype": "bfloat16", "hidden_act": "silu",
            "attention_bias": False, "mlp_bias": False,
            "pytest_vllm_shape": {"name": self.name, "version": SHAPE_VERSION},
        }
        config.update({k: tokenizer_config[k] for k in TOKEN_ID_KEYS if k in tokenizer_config})
        return config


SHAPES: dict[str, Shape] = {
    s.name: s
    for s in (
        Shape("llama-8b", "Llama-3.1-8B dimensions", hidden_size=4096, intermediate_size=14336,
              num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128),
        Shape("llama-3b", "Llama-3.2-3B dimensions", hidden_size=3072, intermediate_size=8192,
              num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8, head_dim=128,
              tie_word_embeddings=True),
        Shape("llama-1b", "Llama-3.2-1B dimensions", hidden_size=2048, intermediate_size=8192,
              num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
              tie_word_embeddings=True),
    )
}
DEFAULT_SHAPE = "llama-8b"


def shape_named(name: str) -> Shape:
    if name not in SHAPES:
        raise UsageError(f"unknown perf model shape {name!r}; choose one of {', '.join(SHAPES)}")
    return SHAPES[name]


def shape_folder_name(shape: Shape, tokenizer_dir: Path) -> str:
    """The folder (and served model name): the shape and whose tokenizer it carries."""
    return f"{shape.name}-shape-{tokenizer_dir.name}"


def build_shape(shape: Shape, tokenizer_dir: Path, models_dir: Path) -> Path:
    """The shape's checkpoint folder under ``models_dir`` with the tokenizer of ``tokenizer_dir``:
    kept when its config and tokenizer files are current, else written into a temporary folder and
    renamed into place (a reader never sees half a folder)."""
    source_config_path = tokenizer_dir / "config.json"
    if not (tokenizer_dir / "tokenizer.json").is_file() and not (tokenizer_dir / "tokenizer.model").is_file():
        raise UsageError(f"{tokenizer_dir} holds no tokenizer (tokenizer.json or tokenizer.model): the perf shape "
                         "takes its tokenizer from the base checkout; pass --vllm-perf-model user to serve the "
                         "base model as it is")
    try:
        source_config = json.loads(source_config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{source_config_path}: cannot read the tokenizer's config.json ({exc}); pass "
                         "--vllm-perf-model user to serve the base model as it is") from None
    config = shape.config(source_config)
    files = [name for name in TOKENIZER_FILES if (tokenizer_dir / name).is_file()]
    target = models_dir / shape_folder_name(shape, tokenizer_dir)
    if _current(target, config, tokenizer_dir, files):
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=models_dir))
    try:
        for name in files:
            shutil.copyfile(tokenizer_dir / name, staging / name)
        (staging / "config.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise UsageError(f"could not write the perf shape {target}: {exc}; check that the cache folder "
                         f"{models_dir} is writable (PYTEST_VLLM_CACHE moves it)") from None
    return target


def _current(target: Path, config: dict[str, Any], tokenizer_dir: Path, files: list[str]) -> bool:
    try:
        if json.loads((target / "config.json").read_text(encoding="utf-8")) != config:
            return False
        return all((target / name).read_bytes() == (tokenizer_dir / name).read_bytes() for name in files)
    except (OSError, ValueError):
        return False
