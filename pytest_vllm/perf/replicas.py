"""Per-replica figures of a measurement on a role of several replicas.

The measurement's own metrics are the deployment's combined ones (every request, over the run's
wall time). Each request also remembers its replica (``RequestRecord.replica``), so the share each
replica took, and the throughput it delivered, can be shown beside them: an uneven balancer or a
slow replica shows up here, not only as a combined figure that hides which one it was.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pytest_vllm import redact
from pytest_vllm.load.client import RequestRecord


@dataclass(frozen=True)
class ReplicaShare:
    """What one replica served over all repetitions of a measurement."""

    replica: str  # its URL, credentials masked
    requests: int
    completed: int
    output_tokens: int
    output_throughput: float  # tok/s: median over repetitions of its tokens over the repetition's wall time
    request_throughput: float  # req/s, likewise

    def to_json(self) -> dict[str, Any]:
        return {"replica": self.replica, "requests": self.requests, "completed": self.completed,
                "output_tokens": self.output_tokens, "output_throughput": self.output_throughput,
                "request_throughput": self.request_throughput}


def replica_shares(records: Sequence[Sequence[RequestRecord]], durations: Sequence[float]) -> list[ReplicaShare]:
    """Per replica, in the order first used: ``records`` and ``durations`` are per repetition. Empty
    when every request went to one server (nothing to split)."""
    replicas = list(dict.fromkeys(r.replica for run in records for r in run if r.replica))
    if len(replicas) < 2:
        return []
    shares = []
    for replica in replicas:
        mine = [[r for r in run if r.replica == replica] for run in records]
        ok = [[r for r in run if r.ok] for run in mine]
        tokens = [sum(r.output_tokens for r in run) for run in ok]
        walls = [max(d, 1e-9) for d in durations]
        shares.append(ReplicaShare(
            replica=redact.text(replica), requests=sum(len(run) for run in mine), completed=sum(len(run) for run in ok),
            output_tokens=sum(tokens),
            output_throughput=statistics.median(t / w for t, w in zip(tokens, walls)) if walls else 0.0,
            request_throughput=statistics.median(len(run) / w for run, w in zip(ok, walls)) if walls else 0.0))
    return shares
