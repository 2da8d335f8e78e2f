"""Task accuracy: every item of an eval set answered by a server and scored.

``evaluate_pair`` runs the base and the compressed server at the same time (each with its own
bounded concurrency), so the pair costs the wall time of the slower one. Generation is greedy and
seeded; ``generate`` sets use the chat template unless the set says ``chat: false``; ``choice``
sets compare the log-likelihoods of the choices after the context, tokenized as lm-eval does
(context with the tokenizer's special tokens, each choice without, the ids concatenated).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_vllm.accuracy.client import EvalClient
from pytest_vllm.accuracy.evalsets import EvalSet
from pytest_vllm.accuracy.scoring import pick_choice
from pytest_vllm.server.handle import ServerHandle


@dataclass(frozen=True)
class ItemResult:
    id: str
    correct: Mapping[str, bool]  # metric -> right or wrong
    answer: str  # the generated text, or the picked choice


@dataclass
class SetResult:
    """One eval set scored on one server."""

    eval_set: EvalSet
    role: str
    model: str
    items: list[ItemResult] = field(default_factory=list)
    seconds: float = 0.0

    def correct(self, metric: str) -> list[bool]:
        return [bool(item.correct[metric]) for item in self.items]


async def score_item(client: EvalClient, eval_set: EvalSet, item: Mapping[str, Any]) -> ItemResult:
    if eval_set.kind == "generate":
        if eval_set.chat:
            answer = await client.chat(eval_set.prompt_messages(item), eval_set.max_tokens)
        else:
            answer = await client.complete(eval_set.prompt_text(item), eval_set.max_tokens, stop=["\n\n"])
        right = eval_set.scorer.score(answer, [str(a) for a in item["answers"]])
        return ItemResult(str(item["id"]), {"accuracy": right}, answer)
    if eval_set.kind == "choice":
        context = await client.tokenize(str(item["context"]), special=True)
        endings = [eval_set.continuation_template.format(choice=choice) for choice in item["choices"]]
        continuations = await asyncio.gather(*(client.tokenize(text, special=False) for text in endings))
        positions = await client.prompt_logprobs([context + cont for cont in continuations], top_k=1)
        logprobs = [sum(p.logprob for p in scored[len(context):] if p is not None)
                    for scored in positions]
        picked = pick_choice(logprobs)
        picked_norm = pick_choice(logprobs, [len(text) for text in endings])
        gold = int(item["gold"])
        return ItemResult(str(item["id"]), {"acc": picked == gold, "acc_norm": picked_norm == gold},
                          str(item["choices"][picked]))
    raise ValueError(f"eval set {eval_set.name} is a {eval_set.kind} set: it has no task accuracy")


async def evaluate_server(client: EvalClient, eval_sets: Sequence[EvalSet]) -> list[SetResult]:
    async def one_set(eval_set: EvalSet) -> SetResult:
        started = time.perf_counter()
        items = await asyncio.gather(*(score_item(client, eval_set, item) for item in eval_set.items))
        return SetResult(eval_set, client.server.role, client.server.model, list(items),
                         time.perf_counter() - started)

    return list(await asyncio.gather(*(one_set(s) for s in eval_sets)))


async def evaluate_servers(servers: Sequence[ServerHandle], eval_sets: Sequence[EvalSet], concurrency: int,
                           seed: int) -> list[list[SetResult]]:
    """Every set on every server, all servers at once; results in the order of ``servers``."""

    async def one_server(server: ServerHandle) -> list[SetResult]:
        async with EvalClient(server, concurrency=concurrency, seed=seed) as client:
            return await evaluate_server(client, eval_sets)

    return list(await asyncio.gather(*(one_server(s) for s in servers)))


def run(coro: Any) -> Any:
    """Run a coroutine from synchronous test code (also inside a running event loop's thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
