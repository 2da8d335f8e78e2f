"""Counters of a vLLM server's Prometheus ``/metrics``, read with prometheus_client's parser.

A counter a vLLM version does not export is ``None``, never 0: a missing prefix-cache counter
must not read as "no cache hits".
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

PREFIX_CACHE_HITS = "vllm:prefix_cache_hits"
PREFIX_CACHE_QUERIES = "vllm:prefix_cache_queries"


def counter_value(metrics_text: str, name: str, **labels: str) -> float | None:
    """The counter ``name`` summed over the samples carrying ``labels``; None when absent."""
    values = [sample.value for family in text_string_to_metric_families(metrics_text) for sample in family.samples
              if sample.name in (name, f"{name}_total") and labels.items() <= sample.labels.items()]
    return sum(values) if values else None


@dataclass(frozen=True)
class PrefixCacheCounts:
    """Prompt tokens the server's prefix cache was asked for and hit, so far."""

    hits: float
    queries: float

    def since(self, before: PrefixCacheCounts) -> PrefixCacheCounts:
        return PrefixCacheCounts(self.hits - before.hits, self.queries - before.queries)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries > 0 else 0.0


def prefix_cache_counts(metrics_text: str) -> PrefixCacheCounts | None:
    hits = counter_value(metrics_text, PREFIX_CACHE_HITS)
    if hits is None:
        return None
    return PrefixCacheCounts(hits, counter_value(metrics_text, PREFIX_CACHE_QUERIES) or 0.0)


async def read_prefix_cache(http: httpx.AsyncClient) -> PrefixCacheCounts | None:
    """The server's prefix cache counters now (None: not exported, or /metrics unreachable)."""
    try:
        response = await http.get("/metrics")
    except httpx.HTTPError:
        return None
    return prefix_cache_counts(response.text) if response.status_code == 200 else None
