"""Prompts counted with the served checkpoint's own tokenizer file: the same prompts as through the
server's /tokenize, thousands in about a second, and only where the server agrees with the file."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from pytest_vllm.load.local_tokenizer import LocalTokenizer
from pytest_vllm.load.prompts import WORDS, PromptFactory
from pytest_vllm.load.workload import Workload

tokenizers = pytest.importorskip("tokenizers")  # vLLM's dependency: present wherever vLLM is


def trained_tokenizer(folder: Path, vocab_size: int = 300) -> Path:
    """A small byte-level BPE with a BOS, trained on the prompt words: the shape of SmolLM2's and
    Llama 3's tokenizers (words split into pieces, a special token framing the text)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([" ".join(WORDS)] * 20, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder


def server_double(model_dir: Path, served: LocalTokenizer) -> httpx.AsyncClient:
    """Stands in for a vLLM server's /v1/models and /tokenize (a unit test boots none): its
    tokenizer is ``served``, its model folder ``model_dir``."""
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "m", "root": str(model_dir)}]})
        body = json.loads(request.content)
        return httpx.Response(200, json={"tokens": served.encode(body["prompt"], body["add_special_tokens"])})

    return httpx.AsyncClient(transport=httpx.MockTransport(answer), base_url="http://server")


def test_batched_local_prompts_are_the_one_at_a_time_prompts(tmp_path: Path) -> None:
    local = LocalTokenizer.load(trained_tokenizer(tmp_path / "m"))
    assert local is not None
    for workload in (Workload(name="w", num_requests=40, input_len=64),
                     Workload(name="p", num_requests=8, input_len=300, shared_prefix_len=250)):
        batched = PromptFactory(None, "m")  # type: ignore[arg-type]
        batched.local = local
        one_by_one = PromptFactory(None, "m")  # type: ignore[arg-type]

        async def tokenize(text=None, messages=None, special=True):  # noqa: ANN001, ANN202
            return local.encode(text, special)

        async def detokenize(tokens):  # noqa: ANN001, ANN202
            return local.decode(tokens)

        one_by_one._tokenize, one_by_one._detokenize = tokenize, detokenize  # type: ignore[method-assign]
        fast = asyncio.run(batched.build(workload, workload.num_requests, "run1"))
        slow = asyncio.run(one_by_one.build(workload, workload.num_requests, "run1"))
        assert [p.text for p in fast] == [p.text for p in slow]
        assert all(len(local.encode(p.text or "")) == workload.input_len for p in fast)
        assert len({p.text for p in fast}) == len(fast)


def test_the_local_file_counts_only_where_the_server_agrees(tmp_path: Path) -> None:
    folder = trained_tokenizer(tmp_path / "m")
    same = LocalTokenizer.load(folder)
    other = LocalTokenizer.load(trained_tokenizer(tmp_path / "other", vocab_size=280))
    assert same is not None and other is not None

    async def decide(served: LocalTokenizer) -> bool:
        async with server_double(folder, served) as http:
            return await PromptFactory(http, "m").use_local_tokenizer()

    assert asyncio.run(decide(same)) is True
    assert asyncio.run(decide(other)) is False


def test_a_remote_server_without_a_local_folder_tokenizes_itself(tmp_path: Path) -> None:
    served = LocalTokenizer.load(trained_tokenizer(tmp_path / "m"))
    assert served is not None

    async def decide() -> bool:
        async with server_double(tmp_path / "not-here", served) as http:
            return await PromptFactory(http, "m").use_local_tokenizer()

    assert asyncio.run(decide()) is False
