"""Per-replica figures of a measurement on a role of several replicas.

The measurement's own metrics are the deployment's combined ones (every request, over the run's
wall time). Each request also remembers its replica (``RequestRecord.replica``), so the share each
replica took, the throughput it delivered and what its own /metrics said (its fullest KV cache,
queue and preemptions) can be shown beside them: an uneven balancer, a slow replica or one that
queued shows up here, not only as a combined figure that hides which one it was.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_vllm import redact
from pytest_vllm.load.client import RequestRecord
from pytest_vllm.server.telemetry import ServerTelemetry


@dataclass(frozen=True)
class ReplicaShare:
    """What one replica served over all repetitions of a measurement, and what its /metrics said
    (None: not sampled, or not exported by that server)."""

    replica: str  # its URL, credentials masked
    requests: int
    completed: int
    output_tokens: int
    output_throughput: float  # tok/s: median over repetitions of its tokens over the repetition's wall time
    request_throughput: float  # req/s, likewise
    kv_cache_usage_peak: float | None = None  # the fullest its KV cache got in any repetition
    requests_waiting_peak: float | None = None  # the most requests it held waiting in any repetition
    num_preemptions: float | None = None  # its preemptions over all repetitions

    def to_json(self) -> dict[str, Any]:
        return {"replica": self.replica, "requests": self.requests, "completed": self.completed,
                "output_tokens": self.output_tokens, "output_throughput": self.output_throughput,
                "request_throughput": self.request_throughput, "kv_cache_usage_peak": self.kv_cache_usage_peak,
                "requests_waiting_peak": self.requests_waiting_peak, "num_preemptions": self.num_preemptions}


def replica_shares(records: Sequence[Sequence[RequestRecord]], durations: Sequence[float],
                   telemetry: Sequence[Mapping[str, ServerTelemetry]] = ()) -> list[ReplicaShare]:
    """Per replica, in the order first used: ``records``, ``durations`` and ``telemetry`` (each
    replica's sampled /metrics by URL) are per repetition. Empty when every request went to one
    server (nothing to split)."""
    replicas = list(dict.fromkeys(r.replica for run in records for r in run if r.replica))
    if len(replicas) < 2:
        return []
    shares = []
    for replica in replicas:
        mine = [[r for r in run if r.replica == replica] for run in records]
        ok = [[r for r in run if r.ok] for run in mine]
        tokens = [sum(r.output_tokens for r in run) for run in ok]
        walls = [max(d, 1e-9) for d in durations]
        sampled = [run[replica] for run in telemetry if replica in run]
        preemptions = [t.num_preemptions for t in sampled if t.num_preemptions is not None]
        shares.append(ReplicaShare(
            replica=redact.text(replica), requests=sum(len(run) for run in mine), completed=sum(len(run) for run in ok),
            output_tokens=sum(tokens),
            output_throughput=statistics.median(t / w for t, w in zip(tokens, walls)) if walls else 0.0,
            request_throughput=statistics.median(len(run) / w for run, w in zip(ok, walls)) if walls else 0.0,
            kv_cache_usage_peak=peak(sampled, "kv_cache_usage_peak"),
            requests_waiting_peak=peak(sampled, "requests_waiting_peak"),
            num_preemptions=sum(preemptions) if preemptions else None))
    return shares


def peak(sampled: Sequence[ServerTelemetry], field: str) -> float | None:
    """The highest of ``field`` over the repetitions that exported it (None: none did)."""
    values = [v for t in sampled if (v := getattr(t, field)) is not None]
    return max(values) if values else None
