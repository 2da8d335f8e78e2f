"""Logprob agreement between the base and the compressed model on the same text.

Two measurements, both servers queried at once:

* the stored corpus is scored with ``prompt_logprobs``: at every position, whether both models
  rank the same token first (top-1 agreement), the KL divergence base -> compressed (top-k
  approximation, see ``divergence``), and each model's perplexity of the actual text;
* each stored prompt is continued greedily by both models; where the outputs first differ, each
  model's token must be among the other's top-k (as vLLM's ``check_logprobs_close`` demands), so
  a flip between two near-tied tokens passes and a real divergence does not.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

from pytest_vllm.accuracy import bootstrap
from pytest_vllm.accuracy.client import EvalClient, EvalRequestError, GreedyOutput, PositionLogprobs
from pytest_vllm.accuracy.divergence import nearest_rank, perplexity, topk_kl
from pytest_vllm.accuracy.evalsets import EvalSet
from pytest_vllm.server.handle import ServerHandle

PROMPT_TOP_K = 20  # vLLM's default --max-logprobs
GREEDY_TOP_K = 5
METRICS = ("top1_agreement", "kl_mean", "kl_p99", "ppl_ratio", "greedy_topk")


@dataclass(frozen=True)
class GreedyComparison:
    id: str
    compared: int  # tokens compared (the shorter output's length)
    mismatch_at: int | None  # index of the first differing token; None: identical
    base_token: int | None = None
    compressed_token: int | None = None
    base_in_compressed_top: bool = True
    compressed_in_base_top: bool = True

    @property
    def ok(self) -> bool:
        return self.base_in_compressed_top and self.compressed_in_base_top


@dataclass
class AgreementResult:
    corpus: EvalSet
    prompts: EvalSet | None  # None: the corpus only (no greedy comparison)
    top_k: int
    greedy_top_k: int
    text_of: list[int] = field(default_factory=list)  # per position: which corpus text it is in
    agree: list[bool] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    base_logprobs: list[float] = field(default_factory=list)
    compressed_logprobs: list[float] = field(default_factory=list)
    greedy: list[GreedyComparison] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def positions(self) -> int:
        return len(self.agree)

    def values(self) -> dict[str, float]:
        ppl_base, ppl_compressed = perplexity(self.base_logprobs), perplexity(self.compressed_logprobs)
        return {
            "top1_agreement": sum(self.agree) / len(self.agree) if self.agree else math.nan,
            "kl_mean": sum(self.kl) / len(self.kl) if self.kl else math.nan,
            "kl_p99": nearest_rank(self.kl, 99),
            "ppl_ratio": ppl_compressed / ppl_base if ppl_base else math.nan,
            "greedy_topk": sum(g.ok for g in self.greedy) / len(self.greedy) if self.greedy else math.nan,
            "ppl_base": ppl_base,
            "ppl_compressed": ppl_compressed,
            "greedy_identical": sum(g.mismatch_at is None for g in self.greedy) / len(self.greedy)
            if self.greedy else math.nan,
        }

    def intervals(self, confidence: float) -> dict[str, bootstrap.Interval]:
        """Each metric's interval: a bootstrap over corpus texts, Wilson over greedy prompts."""
        found = bootstrap.agreement_intervals(self.text_of, self.agree, self.kl, self.base_logprobs,
                                              self.compressed_logprobs, confidence)
        greedy = bootstrap.share_interval(sum(g.ok for g in self.greedy), len(self.greedy), confidence)
        if greedy is not None:
            found["greedy_topk"] = greedy
        return found

    def sample_size(self, metric: str) -> int:
        """What a metric's resolution scales with: prompts for greedy_topk, else token positions."""
        return len(self.greedy) if metric == "greedy_topk" else self.positions

    def to_dict(self) -> dict[str, Any]:
        return {"corpus": {"name": self.corpus.name, "sha256": self.corpus.sha256, "texts": len(self.corpus.items)},
                "prompts": {"name": self.prompts.name, "sha256": self.prompts.sha256} if self.prompts else None,
                "positions": self.positions, "top_k": self.top_k, "greedy_top_k": self.greedy_top_k,
                "values": self.values(), "seconds": round(self.seconds, 2),
                "greedy": [vars(g) | {"ok": g.ok} for g in self.greedy]}


def add_positions(result: AgreementResult, base: list[PositionLogprobs | None],
                  compressed: list[PositionLogprobs | None], text: int = 0) -> None:
    """Fold one text's positions into ``result`` (position 0 has no prediction)."""
    for b, c in zip(base, compressed):
        if b is None or c is None:
            continue
        result.text_of.append(text)
        result.agree.append(b.top1 == c.top1)
        result.kl.append(topk_kl(b.top, c.top))
        result.base_logprobs.append(b.logprob)
        result.compressed_logprobs.append(c.logprob)


def compare_greedy(item_id: str, base: GreedyOutput, compressed: GreedyOutput) -> GreedyComparison:
    compared = min(len(base.tokens), len(compressed.tokens))
    for i in range(compared):
        if base.tokens[i] != compressed.tokens[i]:
            b_tok, c_tok = base.tokens[i], compressed.tokens[i]
            return GreedyComparison(item_id, compared, i, b_tok, c_tok,
                                    base_in_compressed_top=b_tok in compressed.top[i],
                                    compressed_in_base_top=c_tok in base.top[i])
    return GreedyComparison(item_id, compared, None)


async def measure(base: ServerHandle, compressed: ServerHandle, corpus: EvalSet, prompts: EvalSet | None,
                  concurrency: int, seed: int, top_k: int = PROMPT_TOP_K,
                  greedy_top_k: int = GREEDY_TOP_K) -> AgreementResult:
    started = time.perf_counter()
    result = AgreementResult(corpus, prompts, top_k, greedy_top_k)
    async with EvalClient(base, concurrency, seed) as b_client, EvalClient(compressed, concurrency, seed) as c_client:

        async def one_text(item: dict[str, Any]) -> tuple[list, list]:
            b_ids, c_ids = await asyncio.gather(b_client.tokenize(item["text"], special=True),
                                                c_client.tokenize(item["text"], special=True))
            if b_ids != c_ids:
                raise EvalRequestError(f"the two servers tokenize corpus text {item['id']} differently: logprob "
                                       "agreement needs the same tokenizer")
            (b_pos,), (c_pos,) = await asyncio.gather(b_client.prompt_logprobs([b_ids], top_k),
                                                      c_client.prompt_logprobs([c_ids], top_k))
            return b_pos, c_pos

        async def one_prompt(item: dict[str, Any]) -> GreedyComparison:
            assert prompts is not None
            b_out, c_out = await asyncio.gather(b_client.greedy(item["prompt"], prompts.max_tokens, greedy_top_k),
                                                c_client.greedy(item["prompt"], prompts.max_tokens, greedy_top_k))
            return compare_greedy(str(item["id"]), b_out, c_out)

        texts, greedy = await asyncio.gather(asyncio.gather(*(one_text(dict(i)) for i in corpus.items)),
                                             asyncio.gather(*(one_prompt(dict(i)) for i in
                                                              (prompts.items if prompts else ()))))
    for text, (b_pos, c_pos) in enumerate(texts):
        add_positions(result, b_pos, c_pos, text)
    result.greedy = list(greedy)
    result.seconds = time.perf_counter() - started
    return result
