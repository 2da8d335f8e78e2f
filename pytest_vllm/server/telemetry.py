"""What the server itself says during a measurement: vLLM's Prometheus ``/metrics``, sampled in a
thread of its own while a repetition runs, so the load client's event loop never waits on it.

Client timings alone cannot tell a slow server from a queueing or preempting one; these can:

* ``kv_cache_usage_peak`` / ``kv_cache_usage_mean``: ``vllm:kv_cache_usage_perc`` (0-1; named
  ``vllm:gpu_cache_usage_perc`` by older versions), the largest and the mean sample;
* ``requests_running_peak`` / ``requests_waiting_peak``: ``vllm:num_requests_running`` /
  ``_waiting``, the largest sample (waiting above 0: requests queued for a free slot or cache);
* ``num_preemptions``: the ``vllm:num_preemptions`` counter, end of the repetition minus start;
* ``spec_decode_acceptance``: accepted / drafted speculative tokens over the repetition.

A metric the server does not export is absent, never 0. Peaks are of the samples: a spike
shorter than the interval can fall between two of them. A role of several replicas is sampled on
every replica at each tick and read as one server (``combine``): counts summed, KV usage the
fullest replica's, as one server's engines are.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from pytest_vllm.server.counters import metric_families

KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
PREEMPTIONS = "vllm:num_preemptions"
SPEC_ACCEPTED = "vllm:spec_decode_num_accepted_tokens"
SPEC_DRAFTED = "vllm:spec_decode_num_draft_tokens"
WANTED = (*KV_USAGE, RUNNING, WAITING, PREEMPTIONS, SPEC_ACCEPTED, SPEC_DRAFTED)


@dataclass(frozen=True)
class Sample:
    """One read of ``/metrics``: the values this module uses (None: not exported)."""

    kv_usage: float | None = None
    running: float | None = None
    waiting: float | None = None
    preemptions: float | None = None
    spec_accepted: float | None = None
    spec_drafted: float | None = None

    @property
    def in_flight(self) -> int | None:
        """Requests running or waiting (None when the server exports neither)."""
        if self.running is None and self.waiting is None:
            return None
        return int((self.running or 0) + (self.waiting or 0))


def parse_sample(metrics_text: str) -> Sample:
    """The wanted samples of a ``/metrics`` text, summed over engines (KV usage: the fullest)."""
    found: dict[str, list[float]] = {}
    for family in metric_families(metrics_text, WANTED):
        if family.name.removesuffix("_total") not in WANTED and family.name not in WANTED:
            continue
        for sample in family.samples:
            name = sample.name.removesuffix("_total")
            if name in WANTED:
                found.setdefault(name, []).append(sample.value)
    kv = next((max(found[n]) for n in KV_USAGE if n in found), None)

    def total(name: str) -> float | None:
        return sum(found[name]) if name in found else None

    return Sample(kv, total(RUNNING), total(WAITING), total(PREEMPTIONS), total(SPEC_ACCEPTED), total(SPEC_DRAFTED))


def combine(samples: Sequence[Sample]) -> Sample:
    """One tick of a role of several replicas as one server: counts summed, KV usage the fullest
    replica's (a cache that fills up on one replica queues its requests whatever the others hold).
    A figure is absent when any replica lacks it: a sum over some replicas would read as a drop."""
    if len(samples) == 1:
        return samples[0]

    def every(field: str) -> list[float] | None:
        values = [getattr(s, field) for s in samples]
        return None if any(v is None for v in values) else values

    kv = every("kv_usage")
    summed = {f: (sum(v) if (v := every(f)) is not None else None)
              for f in ("running", "waiting", "preemptions", "spec_accepted", "spec_drafted")}
    return Sample(kv_usage=max(kv) if kv is not None else None, **summed)


@dataclass(frozen=True)
class ServerTelemetry:
    """One repetition's server-side figures (None: not exported by this server)."""

    samples: int
    kv_cache_usage_peak: float | None = None
    kv_cache_usage_mean: float | None = None
    requests_running_peak: float | None = None
    requests_waiting_peak: float | None = None
    num_preemptions: float | None = None
    spec_decode_acceptance: float | None = None

    def values(self) -> dict[str, float]:
        """The exported figures by metric name (perf/metrics.py), absent ones left out."""
        names = ("kv_cache_usage_peak", "kv_cache_usage_mean", "requests_running_peak", "requests_waiting_peak",
                 "num_preemptions", "spec_decode_acceptance")
        return {n: float(v) for n in names if (v := getattr(self, n)) is not None}


def summarize(samples: Sequence[Sample]) -> ServerTelemetry | None:
    """Peaks, means and counter deltas over a repetition's samples, first to last (None: no sample)."""
    if not samples:
        return None

    def seen(field: str) -> list[float]:
        return [v for s in samples if (v := getattr(s, field)) is not None]

    def delta(field: str) -> float | None:
        values = seen(field)
        return max(0.0, values[-1] - values[0]) if values else None

    kv, running, waiting = seen("kv_usage"), seen("running"), seen("waiting")
    accepted, drafted = delta("spec_accepted"), delta("spec_drafted")
    return ServerTelemetry(
        samples=len(samples),
        kv_cache_usage_peak=max(kv) if kv else None,
        kv_cache_usage_mean=sum(kv) / len(kv) if kv else None,
        requests_running_peak=max(running) if running else None,
        requests_waiting_peak=max(waiting) if waiting else None,
        num_preemptions=delta("preemptions"),
        spec_decode_acceptance=accepted / drafted if accepted is not None and drafted else None,
    )


def read_sample(http: httpx.Client) -> Sample | None:
    """One sample now (None: /metrics unreachable or not Prometheus text)."""
    try:
        response = http.get("/metrics")
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    try:
        return parse_sample(response.text)
    except ValueError:
        return None


class TelemetrySampler:
    """Samples a server's ``/metrics`` (every replica's, for a role of several) every ``interval``
    seconds, in a daemon thread with its own HTTP clients, from ``start()`` to ``stop()`` (a sample
    at each end, so counters have a delta). A tick at which a replica could not be read is
    dropped whole: the counters' deltas then stay within one set of replicas. After ``stop()``,
    ``by_replica`` holds each replica's own figures over the same ticks (empty for one server), so
    a replica that queued or preempted shows by name, not only inside the role's combined figures."""

    def __init__(self, urls: Sequence[str], api_key: str = "EMPTY", interval: float = 0.5) -> None:
        self._urls = tuple(urls)
        self._https = [httpx.Client(base_url=url, timeout=10, headers={"Authorization": f"Bearer {api_key}"})
                       for url in urls]
        self._interval = interval
        self._ticks: list[tuple[Sample, ...]] = []  # every replica's sample of each complete tick
        self.by_replica: dict[str, ServerTelemetry] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vllm-telemetry", daemon=True)

    def start(self) -> TelemetrySampler:
        self._thread.start()
        return self

    def stop(self) -> ServerTelemetry | None:
        """Stop sampling: this repetition's telemetry (None when no sample could be read)."""
        self._stop.set()
        self._thread.join()
        self._take()
        for http in self._https:
            http.close()
        if len(self._urls) > 1:
            self.by_replica = {url: figures for i, url in enumerate(self._urls)
                               if (figures := summarize([tick[i] for tick in self._ticks])) is not None}
        return summarize([combine(tick) for tick in self._ticks])

    def _take(self) -> None:
        samples = [read_sample(http) for http in self._https]
        if all(sample is not None for sample in samples):
            self._ticks.append(tuple(s for s in samples if s is not None))

    def _run(self) -> None:
        while True:
            self._take()
            if self._stop.wait(self._interval):
                return
