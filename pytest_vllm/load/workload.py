"""Workload: what load to drive, declared as data so results and baselines can be keyed by it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pytest_vllm.errors import UsageError

Endpoint = Literal["completions", "chat"]
# How prompts are drawn, part of every workload key: baselines measured another way judge nothing.
# "independent-sets/1": the warmup and every repetition send prompt sets of their own, seeded by
# the workload's name and seed (before it, repetitions resent the same prompts, which vLLM's
# prefix cache then served: an 8B-shaped model on an H200 ran 5.2k output tok/s cold and 8.6-8.9k
# on the repeated prompts).
PROMPT_SCHEME = "independent-sets/1"


@dataclass(frozen=True)
class LongPrompts:
    """Long prompts sent into a workload's requests while they stream: ``count`` per repetition,
    the first ``first_after_s`` seconds after the repetition starts, then every ``every_s``
    seconds, each on a prompt of its own. What they cost the short streams (the inter-token gaps
    that overlap a long prefill) is what chunked prefill exists to bound."""

    input_len: int = 1536
    output_len: int = 1
    count: int = 3
    first_after_s: float = 2.0
    every_s: float = 3.0

    def problems(self) -> list[str]:
        problems = []
        if self.input_len < 1 or self.output_len < 1 or self.count < 1:
            problems.append("long_prompts: input_len, output_len and count must be at least 1")
        if self.first_after_s < 0 or self.every_s <= 0:
            problems.append("long_prompts: first_after_s must be >= 0 and every_s > 0")
        return problems

    def offsets(self) -> list[float]:
        """Seconds after a repetition's start at which each long prompt is due."""
        return [self.first_after_s + i * self.every_s for i in range(self.count)]


@dataclass(frozen=True)
class Workload:
    """One load pattern. Closed loop when ``request_rate`` is None (``concurrency`` requests in
    flight), open loop otherwise (arrivals at ``request_rate`` per second, Poisson when
    ``burstiness`` is 1, gamma-distributed gaps otherwise, capped at ``concurrency`` if set)."""

    name: str = "default"
    endpoint: Endpoint = "completions"
    num_requests: int = 16
    input_len: int = 128
    output_len: int = 64
    concurrency: int | None = 1
    request_rate: float | None = None
    burstiness: float = 1.0
    warmup_requests: int | None = None  # default: the concurrency (at least 1)
    seed: int = 0
    ignore_eos: bool = True
    shared_prefix_len: int = 0  # tokens every prompt starts with (prefix caching workloads)
    dataset: str | None = None  # JSONL of {"prompt"} or {"messages"} rows instead of synthetic prompts
    repeats: int = 3
    slo_ms: dict[str, float] = field(default_factory=dict)  # goodput SLOs: ttft / tpot / e2el in ms
    # Mixed into the prompts, not into the key (--vllm-prompt-seed): new prompts of the same shape,
    # for a long-running server whose prefix cache still holds the last run's.
    prompt_seed: int = 0
    long_prompts: LongPrompts | None = None  # sent alongside the requests (prefill interference)

    def __post_init__(self) -> None:
        problems = []
        if self.endpoint not in ("completions", "chat"):
            problems.append(f"endpoint must be 'completions' or 'chat', not {self.endpoint!r}")
        if self.num_requests < 1:
            problems.append("num_requests must be at least 1")
        if self.input_len < 1 or self.output_len < 1:
            problems.append("input_len and output_len must be at least 1")
        if self.shared_prefix_len < 0 or self.shared_prefix_len >= self.input_len:
            problems.append("shared_prefix_len must be below input_len")
        if self.concurrency is not None and self.concurrency < 1:
            problems.append("concurrency must be at least 1 (or None for an uncapped open loop)")
        if self.request_rate is None and self.concurrency is None:
            problems.append("give concurrency (closed loop) or request_rate (open loop)")
        if self.request_rate is not None and self.request_rate <= 0:
            problems.append("request_rate must be positive")
        if self.burstiness <= 0:
            problems.append("burstiness must be positive")
        if self.repeats < 1 or self.repeats % 2 == 0:
            problems.append(f"repeats must be odd (the median of an odd count is a real run), not {self.repeats}")
        unknown = set(self.slo_ms) - {"ttft", "tpot", "e2el"}
        if unknown:
            problems.append(f"slo_ms keys must be ttft, tpot or e2el, not {sorted(unknown)}")
        if self.dataset is not None and not Path(self.dataset).is_file():
            problems.append(f"dataset {self.dataset} does not exist")
        if self.long_prompts is not None:
            problems.extend(self.long_prompts.problems())
        if problems:
            raise UsageError(f"workload {self.name!r}: " + "; ".join(problems))

    @property
    def warmup(self) -> int:
        if self.warmup_requests is not None:
            return self.warmup_requests
        return max(1, self.concurrency or 1)

    @property
    def closed_loop(self) -> bool:
        return self.request_rate is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def key(self) -> str:
        """Identity for baselines: everything but the name, the repeat count and the prompt seed."""
        data = {k: v for k, v in self.to_dict().items() if k not in ("name", "repeats", "prompt_seed")}
        if data["long_prompts"] is None:  # keys recorded before the field existed stay valid
            del data["long_prompts"]
        data["prompt_scheme"] = PROMPT_SCHEME
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]

    def describe(self) -> str:
        mode = (f"concurrency {self.concurrency}" if self.closed_loop
                else f"{self.request_rate:g} req/s"
                + (f" (burstiness {self.burstiness:g})" if self.burstiness != 1 else "")
                + (f", max concurrency {self.concurrency}" if self.concurrency else ""))
        prefix = f", shared prefix {self.shared_prefix_len}" if self.shared_prefix_len else ""
        long = self.long_prompts
        beside = (f", {long.count} x {long.input_len}-token prompts beside them every {long.every_s:g} s"
                  if long else "")
        return (f"{self.num_requests} x {self.endpoint} {self.input_len} in / {self.output_len} out, {mode}{prefix}"
                f"{beside}, {self.repeats} runs")

    def long_prompt_workload(self) -> Workload | None:
        """The long prompts as a workload of their own: their prompt sets are built, warmed up
        and drawn per repetition like any other (fresh prompts each time: no prefix cache hits)."""
        long = self.long_prompts
        if long is None:
            return None
        return Workload(name=f"{self.name}-long-prompts", endpoint=self.endpoint, num_requests=long.count,
                        input_len=long.input_len, output_len=long.output_len, concurrency=1, seed=self.seed,
                        ignore_eos=self.ignore_eos, repeats=self.repeats, warmup_requests=1,
                        prompt_seed=self.prompt_seed)

    def with_(self, **changes: Any) -> Workload:
        return replace(self, **changes)
