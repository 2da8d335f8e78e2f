"""What the performance gate measured and decided, as data: the gate, its judge and its report
all read these, and none of them imports another to get at them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_vllm import baselines
from pytest_vllm.gpu import GPUProfile
from pytest_vllm.load.balancer import ROUND_ROBIN
from pytest_vllm.load.client import RequestRecord
from pytest_vllm.load.workload import Workload
from pytest_vllm.perf.budgets import Budget, Check, GatePolicy
from pytest_vllm.perf.metrics import METRIC_DEFINITIONS, BenchResult, RepeatedResult
from pytest_vllm.perf.replicas import ReplicaShare, replica_shares
from pytest_vllm.perf.roofline import Roofline
from pytest_vllm.server.kv_capacity import Capacity, KVCapacityRatio
from pytest_vllm.server.telemetry import ServerTelemetry

if TYPE_CHECKING:
    from pytest_vllm.perf.capacity_bench import CapacityMeasurement

# Ratios a pair comparison records and shows (its budgets may name others).
PAIR_METRICS = ("output_throughput", "request_throughput", "ttft_p50", "tpot_p50", "e2el_p50")


def make_entry(result: RepeatedResult, server: Mapping[str, Any], workload: Mapping[str, Any],
               environment: Mapping[str, Any], test_id: str, role: str) -> dict[str, Any]:
    """A baseline entry of one run: every metric's median, repetitions and spread."""
    metrics = {
        name: {"median": result.median(name), "runs": result.values(name), "spread": result.spread(name)}
        for name in result.names
    }
    return {"metric_definitions": METRIC_DEFINITIONS, "test_id": test_id, "role": role, "server": dict(server),
            "workload": dict(workload), "environment": dict(environment), "metrics": metrics}


@dataclass
class Measurement:
    """One workload measured on one server, with its verdict."""

    nodeid: str
    role: str
    model: str
    workload: Workload
    result: RepeatedResult
    server_key: str
    server_flags: dict[str, Any]
    checks: list[Check] = field(default_factory=list)
    baseline: baselines.Baseline | None = None
    baseline_note: str = ""
    prompt_tokens: int = 0
    records: list[list[RequestRecord]] = field(default_factory=list)
    replica_telemetry: list[dict[str, ServerTelemetry]] = field(default_factory=list)  # per repetition, by replica
    judged: bool = True  # False: no baseline for this host class, relative budgets not judged
    first_attempt: Measurement | None = None  # out of budget, and measured again (gate.Bench._confirmed)
    roofline: Roofline | None = None  # single stream on a GPU: TPOT against the bandwidth floor

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def all_passed(self) -> bool:
        return self.passed

    @property
    def all_checks(self) -> list[Check]:
        return list(self.checks)

    @property
    def model_of_record(self) -> str:
        """The model its baselines are filed under."""
        return self.model

    @property
    def compared_flags(self) -> dict[str, Any]:
        return self.server_flags

    def value(self, metric: str) -> float:
        return self.result.median(metric)

    def runs_of(self, metric: str) -> list[float]:
        return self.result.values(metric)

    @property
    def replica_shares(self) -> list[ReplicaShare]:
        """Per replica of a role of several (empty for one server): its requests and throughput."""
        return replica_shares(self.records, self.runs_of("duration") if self.result.has("duration") else [],
                              self.replica_telemetry)

    def server_summary(self) -> str:
        """What the server's /metrics said over the repetitions (server/telemetry.py): the fullest KV
        cache, the most requests running and waiting, the preemptions in all ("" if not sampled)."""
        def most(name: str) -> float | None:
            return max(self.runs_of(name)) if self.result.has(name) else None

        parts = []
        if (kv := most("kv_cache_usage_peak")) is not None:
            parts.append(f"KV cache <= {kv:.1%}")
        if (running := most("requests_running_peak")) is not None:
            parts.append(f"running <= {running:.0f}")
        if (waiting := most("requests_waiting_peak")) is not None:
            parts.append(f"waiting <= {waiting:.0f}")
        if self.result.has("num_preemptions"):
            parts.append(f"preempted {sum(self.runs_of('num_preemptions')):.0f}")
        if (acceptance := most("spec_decode_acceptance")) is not None:
            parts.append(f"spec accept <= {acceptance:.0%}")
        return ", ".join(parts)

    def baseline_key(self, scope: str) -> baselines.BaselineKey:
        return baselines.BaselineKey(scope, self.model, self.nodeid, self.workload.name, self.role)

    def entry(self, environment: Mapping[str, Any]) -> dict[str, Any]:
        return make_entry(self.result, {"key": self.server_key, "flags": self.server_flags},
                          {**self.workload.to_dict(), "key": self.workload.key}, environment, self.nodeid, self.role)


@dataclass
class PairComparison:
    """The same workload on two servers, repetitions interleaved; ratios are candidate / reference
    per pair of repetitions, and the gate reads their median."""

    nodeid: str
    workload: Workload
    reference: Measurement
    candidate: Measurement
    ratios: RepeatedResult  # one BenchResult of ratios per pair of repetitions
    checks: list[Check] = field(default_factory=list)
    baseline: baselines.Baseline | None = None
    baseline_note: str = ""
    judged: bool = True
    first_attempt: PairComparison | None = None  # out of budget, and measured again (gate.Bench._confirmed)

    @property
    def role(self) -> str:
        return f"{self.candidate.role}_over_{self.reference.role}"

    @property
    def server_key(self) -> str:
        return f"{self.candidate.server_key}/{self.reference.server_key}"

    @property
    def model_of_record(self) -> str:
        return self.candidate.model

    @property
    def compared_flags(self) -> dict[str, Any]:
        return {"candidate": self.candidate.server_flags, "reference": self.reference.server_flags}

    @property
    def passed(self) -> bool:
        """The pair budgets held (the two servers' own budgets: ``all_passed``)."""
        return all(c.passed for c in self.checks)

    @property
    def all_passed(self) -> bool:
        return self.passed and self.reference.passed and self.candidate.passed

    @property
    def all_checks(self) -> list[Check]:
        return [*self.reference.checks, *self.candidate.checks, *self.checks]

    def ratio(self, metric: str) -> float:
        return self.ratios.median(metric) if self.ratios.has(metric) else float("nan")

    def value(self, metric: str) -> float:
        return self.ratio(metric)

    def runs_of(self, metric: str) -> list[float]:
        return self.ratios.values(metric)

    def baseline_key(self, scope: str) -> baselines.BaselineKey:
        return baselines.BaselineKey(scope, self.candidate.model, self.nodeid, self.workload.name, self.role)

    def entry(self, environment: Mapping[str, Any]) -> dict[str, Any]:
        return make_entry(self.ratios, {"key": self.server_key, "flags": self.compared_flags},
                          {**self.workload.to_dict(), "key": self.workload.key}, environment, self.nodeid, self.role)


Judged = Measurement | PairComparison


def pair_ratios(reference: RepeatedResult, candidate: RepeatedResult, metrics: Sequence[str]) -> RepeatedResult:
    """candidate / reference for each pair of repetitions (the same index), metric by metric."""
    runs = []
    for ref, cand in zip(reference.runs, candidate.runs):
        runs.append(BenchResult({m: cand.values[m] / ref.values[m] for m in metrics
                                 if m in ref.values and m in cand.values and ref.values[m]}))
    return RepeatedResult(runs)


@dataclass
class BenchSettings:
    """Session-wide performance settings, resolved from RunConfig and the machine."""

    profile: GPUProfile
    host_class: str  # where this host's baselines are filed (hostclass.py)
    baseline_dir: Path
    record: bool  # record instead of judging (--update-baselines or --add-baselines)
    missing: str  # "auto" | "fail" | "skip"
    policy: GatePolicy
    default_budgets: dict[str, Budget]
    environment: dict[str, Any]
    repeats: int | None = None
    add_recording: bool = False  # --add-baselines: a recording joins the stored ones instead of replacing them
    prompt_seed: int = 0  # --vllm-prompt-seed
    baseline_gate_fails: bool = True  # False: single-server baseline budgets report, they do not fail
    balance: str = ROUND_ROBIN  # --vllm-balance: how a role's replicas share the load

    @property
    def gpu(self) -> str:
        return self.profile.name


@dataclass
class KVCacheCheck:
    """A server's KV cache against the workloads it must hold (``Bench.kv_cache``)."""

    nodeid: str
    role: str
    model: str
    capacity: Capacity
    max_model_len: int | None
    held: dict[str, tuple[int, int]]  # workload name -> (requests its cache holds, the workload's concurrency)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        """One line: the cache, its cost per token and what it holds."""
        capacity, allocated = self.capacity, self.capacity.allocated
        size = f"{allocated.memory_bytes / 2**30:.2f} GiB, " if allocated.memory_bytes else ""
        cost = f"{capacity.shape.bytes_per_token:,} B per token, " if capacity.shape else ""
        at_max = ""
        if self.max_model_len:
            vllm = f" (vLLM: {allocated.max_concurrency:g})" if allocated.max_concurrency is not None else ""
            per_request = capacity.tokens / self.max_model_len
            at_max = f"; {per_request:.2f} requests at max_model_len {self.max_model_len}{vllm}"
        held = "; ".join(f"{name}: {n} at once (needs {need})" for name, (n, need) in self.held.items())
        return (f"the {self.role} server's KV cache: {capacity.tokens:,} tokens ({size}{cost}blocks of "
                f"{allocated.block_size}){at_max}; {held}")


@dataclass
class KVCachePair:
    """A candidate server's KV cache against a reference's (``Bench.kv_cache_pair``)."""

    nodeid: str
    reference_role: str
    candidate_role: str
    capacity: KVCapacityRatio
    floor: float | None = None
    problem: str | None = None

    @property
    def passed(self) -> bool:
        return self.problem is None

    def describe(self) -> str:
        c = self.capacity
        cost = f"; the per-token costs alone give {c.cost_ratio:.2f}x" if c.cost_ratio is not None else ""
        floor = f"; floor {self.floor:g}x" if self.floor is not None else ""
        return (f"{self.candidate_role} / {self.reference_role} KV cache: {c.candidate_tokens:,} / "
                f"{c.reference_tokens:,} tokens = {c.ratio:.2f}x{cost}{floor}")


@dataclass
class BenchState:
    """Everything measured in this session (the reports read it)."""

    settings: BenchSettings
    measurements: list[Measurement] = field(default_factory=list)
    pairs: list[PairComparison] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    said: set[str] = field(default_factory=set)  # once-per-session lines already said
    unjudged_classes: dict[str, list[str]] = field(default_factory=dict)  # model -> classes with baselines
    kv_caches: list[KVCacheCheck] = field(default_factory=list)
    kv_pairs: list[KVCachePair] = field(default_factory=list)
    capacities: list[CapacityMeasurement] = field(default_factory=list)  # capacity searches, one per server
    capacity_pairs: list[PairComparison] = field(default_factory=list)  # their candidate / reference ratios
