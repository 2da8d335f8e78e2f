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


def quantize(base_dir: Path, out_dir: Path, scheme: str, ignore: list[str]) -> None:
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype="auto")
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    recipe = QuantizationModifier(targets="Linear", scheme=scheme, ignore=ignore)
    needs_data = scheme.upper() not in {"W8A8", "FP8_DYNAMIC", "W4A16", "W8A16"}
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
