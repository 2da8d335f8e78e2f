"""RequestRecord[] → BenchResult, with the metric definitions of ``vllm bench serve``.

Pinned definitions (``METRIC_DEFINITIONS`` is written into every result and baseline):

* TTFT: send → first chunk carrying a choice; E2EL: send → last such chunk.
* TPOT: (E2EL − TTFT) / (output_tokens − 1) per request with more than one output token,
  output_tokens from ``usage.completion_tokens``.
* ITL: every gap between consecutive choice chunks, pooled over requests.
* request throughput = completed / wall time; output token throughput = Σ output tokens / wall
  time; wall time runs from the first send to the last response, tail included.
* goodput: requests meeting every SLO (ttft, tpot, e2el in ms) / wall time.
* percentiles: numpy's linear interpolation, as vLLM's.

Beyond vLLM: achieved vs requested rate, send delay (scheduled → actual send), and the client's
own CPU per output token and event-loop lag, which tell a client artefact from a server result.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from pytest_vllm.load.client import RequestRecord
from pytest_vllm.load.runner import RunResult
from pytest_vllm.load.sessions import MAX_TURNS

METRIC_DEFINITIONS = "vllm-bench-serve/1"
PERCENTILES = (50, 90, 95, 99)
STATS = ("mean", "std", "p50", "p90", "p95", "p99")
Direction = Literal["lower", "higher", "none"]
# A client whose event loop wakes this late on average, or that burns this share of a core, skews
# latencies. (The worst single wake-up is no signal: one scheduler hiccup on a shared core.)
SATURATED_MEAN_LAG_S = 0.005
SATURATED_CPU_SHARE = 0.8


@dataclass(frozen=True)
class MetricInfo:
    unit: str
    direction: Direction
    description: str
    # A measured run cannot give 0 (throughput, TTFT, E2EL, wall time): a stored 0 is a broken record,
    # and would switch a gate off (``>= 0 * 0.9`` always holds), so baselines refuse it. The metrics
    # that are 0 legitimately keep False: failed requests, prefix cache hits, preemptions, steal, and
    # TPOT/ITL (0 by vLLM's definition when every output is one token).
    positive: bool = False


def _latency_metrics() -> dict[str, MetricInfo]:
    out = {}
    for base, what in (("ttft", "time to first token"), ("tpot", "time per output token after the first"),
                       ("itl", "inter-token latency (pooled chunk gaps)"), ("e2el", "end-to-end request latency")):
        for stat in STATS:
            out[f"{base}_{stat}"] = MetricInfo("ms", "lower" if stat != "std" else "none", f"{what}, {stat}",
                                               positive=base in ("ttft", "e2el") and stat != "std")
    return out


def _turn_metrics() -> dict[str, MetricInfo]:
    """Multi-turn workloads' metrics (load/sessions.py, perf/turns.py), declared for every turn one may
    have so that budgets on them parse before anything runs."""
    out = {"cached_share": MetricInfo("", "higher", "multi-turn: share of all turns' prompt tokens the prefix "
                                      "cache served (usage.prompt_tokens_details.cached_tokens, else the "
                                      "server's counters)")}
    for turn in range(1, MAX_TURNS + 1):
        out[f"turn{turn}_ttft_p50"] = MetricInfo("ms", "lower", f"multi-turn: TTFT p50 of turn {turn}", positive=True)
        out[f"turn{turn}_cached_share"] = MetricInfo("", "higher", f"multi-turn: share of turn {turn}'s prompt "
                                                     "tokens the prefix cache served")
        out[f"turn{turn}_prompt_tokens"] = MetricInfo("", "none", f"multi-turn: mean prompt tokens of turn {turn} "
                                                      "(its history and its new user turn)")
    return out


MULTI_TURN_METRICS = frozenset(_turn_metrics())
METRICS: dict[str, MetricInfo] = {
    "request_throughput": MetricInfo("req/s", "higher", "completed requests per second of wall time", positive=True),
    "output_throughput": MetricInfo("tok/s", "higher", "output tokens per second of wall time", positive=True),
    "total_token_throughput": MetricInfo("tok/s", "higher", "prompt + output tokens per second of wall time",
                                         positive=True),
    "goodput": MetricInfo("req/s", "higher", "requests meeting every SLO per second of wall time"),
    "slo_attainment": MetricInfo("", "higher", "share of the sent requests that completed meeting every SLO (0-1; "
                                 "only where the workload states SLOs)"),
    "capacity": MetricInfo("req/s", "higher", "highest Poisson request rate at which the stated share of requests "
                           "meets every SLO (a capacity search: vllm_bench.capacity)", positive=True),
    **_latency_metrics(),
    "achieved_rate": MetricInfo("req/s", "none", "requests actually sent per second (open loop)"),
    "send_delay_p99": MetricInfo("ms", "lower", "p99 of actual − scheduled send time (client lateness)"),
    "client_cpu_us_per_token": MetricInfo("us", "lower", "client CPU time per output token"),
    "client_loop_lag_mean": MetricInfo("ms", "lower", "mean event-loop wake-up delay of the client"),
    "client_loop_lag_max": MetricInfo("ms", "none", "worst event-loop wake-up delay of the client"),
    "host_cpu_steal": MetricInfo("%", "lower", "share of the host's CPU time the hypervisor gave to other tenants "
                                 "during the run (steal); budget it to refuse judging on a loaded host"),
    "prefix_cache_hit_rate": MetricInfo("", "higher", "share of the prompt tokens the server's prefix cache served "
                                        "(its vllm:prefix_cache_hits / _queries counters; absent where not exported)"),
    # The server's own view (server/telemetry.py: /metrics sampled during each repetition; absent where
    # the server does not export the metric).
    "kv_cache_usage_peak": MetricInfo("", "lower", "largest sampled share of the KV cache in use (0-1)"),
    "kv_cache_usage_mean": MetricInfo("", "none", "mean sampled share of the KV cache in use (0-1)"),
    "requests_running_peak": MetricInfo("", "none", "most requests the server ran at once (sampled)"),
    "requests_waiting_peak": MetricInfo("", "lower", "most requests queued in the server (sampled): above 0, "
                                        "requests waited for a slot or for KV cache"),
    "num_preemptions": MetricInfo("", "lower", "requests the server preempted during the run (KV cache full)"),
    "spec_decode_acceptance": MetricInfo("", "higher", "accepted / drafted speculative tokens during the run"),
    # Workload.long_prompts: long prefills sent beside the streaming requests (chunked-prefill interference).
    "long_prompt_ttft_p50": MetricInfo("ms", "lower", "time to first token of the long prompts, p50", positive=True),
    "long_prompt_ttft_max": MetricInfo("ms", "lower", "time to first token of the long prompts, worst", positive=True),
    "long_prompt_prefill_throughput": MetricInfo("tok/s", "higher", "prompt tokens of the long prompts per second of "
                                                 "their time to first token (their prefill rate)", positive=True),
    "itl_p99_during_prefill": MetricInfo("ms", "lower", "p99 of the streams' inter-token gaps that overlap a long "
                                         "prompt's prefill (send to first token): the stall it causes"),
    "itl_max_during_prefill": MetricInfo("ms", "lower", "worst inter-token gap overlapping a long prefill"),
    "itl_p99_outside_prefill": MetricInfo("ms", "lower", "p99 of the streams' inter-token gaps clear of long prefills"),
    "prefill_overlapped_gaps": MetricInfo("", "none", "inter-token gaps that overlapped a long prefill (how many "
                                          "samples the during-prefill figures rest on)"),
    "duration": MetricInfo("s", "none", "wall time of the measured run", positive=True),
    "completed": MetricInfo("", "none", "requests that succeeded"),
    "failed": MetricInfo("", "lower", "requests that failed"),
    **_turn_metrics(),
}


@dataclass
class BenchResult:
    """One repetition's metrics (names in METRICS, latencies in ms)."""

    values: dict[str, float]
    errors: list[str] = field(default_factory=list)
    client_saturated: bool = False

    def __getitem__(self, name: str) -> float:
        return self.values[name]


def _stats(prefix: str, seconds: Sequence[float]) -> dict[str, float]:
    if not seconds:
        return {f"{prefix}_{s}": 0.0 for s in STATS}
    ms = np.asarray(seconds, dtype=float) * 1000.0
    out = {f"{prefix}_mean": float(ms.mean()), f"{prefix}_std": float(ms.std())}
    for p in PERCENTILES:
        out[f"{prefix}_p{p}"] = float(np.percentile(ms, p))
    return out


def compute(run: RunResult, slo_ms: Mapping[str, float] | None = None) -> BenchResult:
    """Metrics of one measured repetition (warmup excluded), with the server's prefix cache hit
    share where its counters were read and its telemetry where it was sampled."""
    result = compute_records(run.records, run.duration, client_cpu_s=run.client_cpu_s,
                             loop_lag_mean_s=run.loop_lag_mean_s, loop_lag_max_s=run.loop_lag_max_s,
                             host_steal=run.host_steal, slo_ms=slo_ms)
    if run.prefix_cache is not None:
        result.values["prefix_cache_hit_rate"] = run.prefix_cache.hit_rate
    if run.telemetry is not None:
        result.values.update(run.telemetry.values())
    if run.long_prompt_records:
        result.values.update(prefill_interference(run.records, run.long_prompt_records))
        result.errors.extend(f"long prompt {r.index}: {r.error}" for r in run.long_prompt_records if r.error)
    return result


def prefill_interference(records: Sequence[RequestRecord], long_prompts: Sequence[RequestRecord]) -> dict[str, float]:
    """The long prompts' own prefill figures, and the streams' inter-token gaps split by whether they
    overlap a long prompt's prefill window (its send to its first token): the gaps inside are the
    stall a long prefill puts on everyone's decoding, the gaps outside the same streams' normal pace."""
    done = [r for r in long_prompts if r.ok and r.ttft is not None]
    windows = [(r.sent_at, r.sent_at + r.ttft) for r in done if r.ttft is not None]
    during: list[float] = []
    outside: list[float] = []
    for record in records:
        if not record.ok:
            continue
        for a, b in zip(record.chunk_times, record.chunk_times[1:]):
            (during if any(a < end and b > begin for begin, end in windows) else outside).append(b - a)
    values: dict[str, float] = {"prefill_overlapped_gaps": float(len(during))}
    if done:
        ttfts = np.asarray([r.ttft for r in done], dtype=float)
        values["long_prompt_ttft_p50"] = float(np.percentile(ttfts, 50)) * 1000.0
        values["long_prompt_ttft_max"] = float(ttfts.max()) * 1000.0
        values["long_prompt_prefill_throughput"] = sum(r.prompt_tokens for r in done) / max(float(ttfts.sum()), 1e-9)
    if during:
        values["itl_p99_during_prefill"] = float(np.percentile(np.asarray(during) * 1000.0, 99))
        values["itl_max_during_prefill"] = max(during) * 1000.0
    if outside:
        values["itl_p99_outside_prefill"] = float(np.percentile(np.asarray(outside) * 1000.0, 99))
    return values


def compute_records(records: Sequence[RequestRecord], duration: float, *, client_cpu_s: float = 0.0,
                    loop_lag_mean_s: float = 0.0, loop_lag_max_s: float = 0.0, host_steal: float = 0.0,
                    slo_ms: Mapping[str, float] | None = None) -> BenchResult:
    """The metrics arithmetic on a run's records (warmup records must already be excluded)."""
    ok = [r for r in records if r.ok]
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    e2els = [r.e2el for r in ok if r.e2el is not None]
    tpots: list[float] = []
    all_tpots: list[float] = []
    itls: list[float] = []
    for r in ok:
        tpot = 0.0
        if r.output_tokens > 1 and r.e2el is not None and r.ttft is not None:
            tpot = (r.e2el - r.ttft) / (r.output_tokens - 1)
            tpots.append(tpot)
        all_tpots.append(tpot)  # vLLM: output of one token counts as tpot 0 for goodput
        itls.extend(b - a for a, b in zip(r.chunk_times, r.chunk_times[1:]))
    output_tokens = sum(r.output_tokens for r in ok)
    prompt_tokens = sum(r.prompt_tokens for r in ok)
    wall = max(duration, 1e-9)
    good = _good_requests(ok, all_tpots, slo_ms or {})
    delays = [max(0.0, r.send_delay) for r in records]
    values = {
        "request_throughput": len(ok) / wall,
        "output_throughput": output_tokens / wall,
        "total_token_throughput": (output_tokens + prompt_tokens) / wall,
        "goodput": good / wall,
        **_stats("ttft", ttfts), **_stats("tpot", tpots), **_stats("itl", itls), **_stats("e2el", e2els),
        "achieved_rate": len(records) / wall,
        "send_delay_p99": float(np.percentile(np.asarray(delays) * 1000.0, 99)) if delays else 0.0,
        "client_cpu_us_per_token": client_cpu_s * 1e6 / max(output_tokens, 1),
        "client_loop_lag_mean": loop_lag_mean_s * 1000.0,
        "client_loop_lag_max": loop_lag_max_s * 1000.0,
        "host_cpu_steal": host_steal * 100.0,
        **({"slo_attainment": good / len(records)} if slo_ms and records else {}),
        "duration": duration,
        "completed": float(len(ok)),
        "failed": float(len(records) - len(ok)),
    }
    saturated = loop_lag_mean_s > SATURATED_MEAN_LAG_S or client_cpu_s / wall > SATURATED_CPU_SHARE
    errors = [f"request {r.index}: {r.error}" for r in records if r.error]
    return BenchResult(values=values, errors=errors, client_saturated=saturated)


def _good_requests(ok: Sequence[RequestRecord], all_tpots: Sequence[float], slo_ms: Mapping[str, float]) -> int:
    if not slo_ms:
        return len(ok)
    good = 0
    for record, tpot in zip(ok, all_tpots):
        seconds = {"ttft": record.ttft, "tpot": tpot, "e2el": record.e2el}
        if all((value := seconds[name]) is not None and value * 1000.0 <= limit for name, limit in slo_ms.items()):
            good += 1
    return good


@dataclass
class RepeatedResult:
    """The repetitions of one measurement; gates use the median, noise the spread."""

    runs: list[BenchResult]

    def values(self, name: str) -> list[float]:
        return [run.values[name] for run in self.runs]

    def median(self, name: str) -> float:
        return float(np.median(self.values(name)))

    def has(self, name: str) -> bool:
        return bool(self.runs) and all(name in run.values for run in self.runs)

    @property
    def names(self) -> list[str]:
        """The metrics every repetition has (a server metric one repetition could not read is left out)."""
        return [n for n in self.runs[0].values if self.has(n)] if self.runs else []

    def spread(self, name: str) -> float:
        """(max − min) / |median| over the repetitions: 0 when they agree."""
        values = self.values(name)
        middle = abs(self.median(name))
        return float((max(values) - min(values)) / middle) if middle > 0 else 0.0

    def medians(self, names: Iterable[str] | None = None) -> dict[str, float]:
        return {n: self.median(n) for n in (names or self.names)}

    @property
    def errors(self) -> list[str]:
        return [e for run in self.runs for e in run.errors]

    @property
    def client_saturated(self) -> bool:
        return any(run.client_saturated for run in self.runs)
