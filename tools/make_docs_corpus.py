"""Write pytest_vllm/data/evals/docs_corpus.jsonl: the large agreement corpus (issue 20).

Real English text that ships offline: the Python language reference's topics as CPython 3.11
carries them for ``help()`` (``Lib/pydoc_data/topics.py``, PSF License 2.0), cut into passages of
whole paragraphs of at most ``MAX_CHARS`` characters, in the module's sorted topic order, until the
passages hold ``TOKENS`` tokens of the embedded model's tokenizer. Run with the project's venv:

    .venv/bin/python tools/make_docs_corpus.py [--model ~/.cache/pytest-vllm/models/smollm2-135m-instruct]

The file is committed, so the corpus does not change with the Python version a run uses.
"""

from __future__ import annotations

import argparse
import json
import platform
import pydoc_data.topics
from pathlib import Path

from transformers import AutoTokenizer

MAX_CHARS = 1800  # about 450 tokens: well inside the CPU profile's max_model_len of 2048
TOKENS = 52_000  # >= 50,000 scored positions (a passage's first token has no prediction)
OUT = Path(__file__).resolve().parents[1] / "pytest_vllm" / "data" / "evals" / "docs_corpus.jsonl"


def passages(text: str) -> list[str]:
    out, current = [], ""
    for paragraph in (p.strip("\n") for p in text.split("\n\n")):
        if not paragraph.strip():
            continue
        if current and len(current) + len(paragraph) + 2 > MAX_CHARS:
            out.append(current)
            current = ""
        current = f"{current}\n\n{paragraph}" if current else paragraph[:MAX_CHARS]
    if current:
        out.append(current)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(Path("~/.cache/pytest-vllm/models/smollm2-135m-instruct").expanduser()))
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    items, tokens = [], 0
    for topic in sorted(pydoc_data.topics.topics):
        for n, passage in enumerate(passages(pydoc_data.topics.topics[topic])):
            if tokens >= TOKENS:
                break
            items.append({"id": f"{topic}-{n:02d}", "text": passage})
            tokens += len(tokenizer(passage)["input_ids"])
    meta = {"name": "docs_corpus", "kind": "corpus",
            "description": f"{len(items)} passages, {tokens} tokens of the Python language reference (help() topics) "
                           "for large-corpus logprob agreement",
            "source": f"CPython {platform.python_version()} Lib/pydoc_data/topics.py, cut by tools/make_docs_corpus.py",
            "license": "PSF-2.0"}
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(json.dumps({"_meta": meta}) + "\n")
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    print(f"{OUT}: {len(items)} passages, {tokens} tokens")


if __name__ == "__main__":
    main()
