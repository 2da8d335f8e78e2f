"""The base model's scores as baselines: recorded on request, compared on every run.

Stored with ``pytest_vllm.baselines`` (same layout, schema, validation and locked atomic writes as
the performance baselines; a score of 0 is valid):
``<baseline dir>/<gpu>/<base model>/<test module>/<test function>.json``, one entry per eval set or
lm-eval task, keyed by the base server's spec and by the set's hash, the scoring version and the
sampling settings (``Scored.key``), never by the vLLM version: a vLLM upgrade is
exactly what a release run gates. Each metric keeps its per-item right/wrong string, so the
comparison with history is paired and bounded like recovery.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pytest_vllm import baselines
from pytest_vllm.accuracy.engine import Scored
from pytest_vllm.accuracy.stats import PairedCounts

DEFINITIONS = "pytest-vllm-accuracy/1"


def baseline_key(gpu: str, nodeid: str, scored: Scored) -> baselines.BaselineKey:
    return baselines.BaselineKey(scope=gpu, model=scored.model, nodeid=nodeid, measurement=scored.name,
                                 role=scored.role)


def make_entry(scored: Scored, server: Mapping[str, Any], environment: Mapping[str, Any],
               nodeid: str) -> dict[str, Any]:
    metrics = {metric: {"median": scored.score(metric), "runs": [scored.score(metric)], "spread": 0.0,
                        "n": scored.n(metric), "correct": sum(scored.metrics[metric]), "items": scored.bits(metric)}
               for metric in scored.metrics}
    return {"metric_definitions": DEFINITIONS, "test_id": nodeid, "role": scored.role, "server": dict(server),
            "workload": {"key": scored.key, **scored.key_material}, "environment": dict(environment),
            "metrics": metrics}


def stored_counts(stored: baselines.Baseline, metric: str, scored: Scored) -> PairedCounts | None:
    """Stored (as the reference) vs current per-item results; None when the items do not line up."""
    found = stored.data["metrics"].get(metric)
    if not found or not isinstance(found.get("items"), str):
        return None
    bits = found["items"]
    current = scored.metrics.get(metric)
    if current is None or len(bits) != len(current):
        return None
    return PairedCounts.from_items([b == "1" for b in bits], list(current))
