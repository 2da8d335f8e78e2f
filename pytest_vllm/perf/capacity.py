"""Capacity under SLOs: the highest open-loop (Poisson) request rate at which a stated share of the
requests meets every SLO, found by a bracketing search.

Fixed-concurrency throughput does not answer what a serving team quotes: a checkpoint can raise
tokens/s at c64 while its p99 TTFT at the rate users send collapses. The search doubles the rate
until a probe fails, then bisects (geometrically) between the highest passing and the lowest
failing rate until they are within ``precision`` of each other; the capacity is the highest
passing rate. So the capacity it reports lies up to ``precision`` below the true one: two searches
of one server can differ by that much from the bracketing alone, and a gate on it cannot see a
smaller change. A probe the client could not drive (its event loop saturated, or it sent slower
than asked) says nothing about the server: it is *inconclusive*, probed once more, and then caps
the rates the search may try (the capacity is then a lower bound, and said to be).

This module is pure (no I/O): ``CapacitySearch`` decides the next rate from the probes so far;
``load/probing.py`` runs a probe against a server and ``perf/capacity_bench.py`` ties them to
the ``vllm_bench`` fixture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from pytest_vllm.errors import UsageError
from pytest_vllm.load.workload import Workload

Outcome = Literal["pass", "fail", "inconclusive"]
# A probe whose client sent at less than this share of the asked rate did not offer that rate.
MIN_ACHIEVED_SHARE = 0.9
# Seeds of the probes' prompts and arrivals, one per probe: no probe resends another's prompts
# (the prefix cache would serve them) and no two share an arrival pattern.
PROBE_SEED_STRIDE = 1_000_003
# A probe's arrivals span at most this many times probe_seconds to reach min_probe_requests: under
# PYTEST_VLLM_EMULATE_AVX2 the W8A8 server's capacity under the CPU SLOs was ~0.06 req/s, where 8
# requests took over two minutes per probe.
MAX_SPAN_FACTOR = 4
# The first probe's rate over the single-stream rate (start_rate_from).
START_OVER_SINGLE_STREAM = 2.0


@dataclass(frozen=True)
class CapacityWorkload(Workload):
    """What a capacity search sends and what it asks of the server: the probes' shape (lengths,
    endpoint, burstiness, ``slo_ms``) and the search's definition, all part of the baseline key.

    ``request_rate`` is no input: each probe sets its own (the field keeps Workload's open-loop
    validation). ``probe_seconds``: the arrivals of one probe span this long (at least
    ``min_probe_requests`` requests, within MAX_SPAN_FACTOR times as long), long enough to be steady
    at the profile's speed. With few requests ``good_fraction`` 0.99 means all of them."""

    request_rate: float | None = 1.0
    concurrency: int | None = None
    repeats: int = 1
    good_fraction: float = 0.99  # share of a probe's requests that must meet every SLO
    precision: float = 0.10  # the search stops when the bracket's ends are within this of each other
    probe_seconds: float = 10.0
    min_probe_requests: int = 8
    max_probes: int = 10  # per server; a search that has not converged by then says so

    def __post_init__(self) -> None:
        super().__post_init__()
        problems = []
        if not self.slo_ms:
            problems.append("slo_ms is empty: capacity is the highest rate at which the SLOs hold, so give at "
                            "least one of ttft, tpot, e2el (ms), e.g. slo_ms={'ttft': 1000, 'tpot': 100}")
        if not 0 < self.good_fraction <= 1:
            problems.append(f"good_fraction must be in (0, 1], not {self.good_fraction}")
        if not 0 < self.precision < 1:
            problems.append(f"precision must be in (0, 1) (0.10: the bracket ends within 10%), not {self.precision}")
        if self.probe_seconds <= 0 or self.min_probe_requests < 1:
            problems.append("probe_seconds must be positive and min_probe_requests at least 1")
        if self.max_probes < 2:
            problems.append(f"max_probes must be at least 2 (a bracket needs a pass and a fail), not {self.max_probes}")
        if problems:
            raise UsageError(f"capacity workload {self.name!r}: " + "; ".join(problems))

    def probe(self, rate: float, index: int) -> Workload:
        """Probe ``index`` (0-based) at ``rate`` req/s: a plain open-loop workload of one run, on
        prompts and arrivals of its own, without warmup (the calibration warmed the server)."""
        base = {f.name: getattr(self, f.name) for f in fields(Workload)}
        at_least = min(self.min_probe_requests, math.ceil(rate * MAX_SPAN_FACTOR * self.probe_seconds))
        requests = max(2, at_least, math.ceil(rate * self.probe_seconds))
        return Workload(**{**base, "name": f"{self.name}@{rate:.3g}", "request_rate": rate, "num_requests": requests,
                           "repeats": 1, "warmup_requests": 0, "seed": self.seed + PROBE_SEED_STRIDE * (index + 1)})

    def describe(self) -> str:
        slos = ", ".join(f"{name} <= {limit:g} ms" for name, limit in self.slo_ms.items())
        return (f"capacity search: {self.endpoint} {self.input_len} in / {self.output_len} out, Poisson"
                + (f" (burstiness {self.burstiness:g})" if self.burstiness != 1 else "")
                + f", {self.good_fraction:.0%} of requests within {slos}, precision {self.precision:.0%}, "
                f"probes of {self.probe_seconds:g} s (at least {self.min_probe_requests} requests)")


@dataclass(frozen=True)
class Probe:
    """One probe: the rate asked for, what the client achieved, and what the server served."""

    rate: float  # asked, req/s
    achieved_rate: float  # sent per second over the span of the actual sends
    goodput: float  # requests meeting every SLO per second of wall time
    good_share: float  # of the probe's requests (a failed request meets no SLO)
    requests: int
    failed: int
    latencies_ms: dict[str, float]  # ttft/tpot/e2el p50 and p99; empty when no request was answered
    client_saturated: bool
    duration_s: float
    outcome: Outcome
    reason: str = ""
    host_steal_pct: float = 0.0  # the host's CPU time given to other tenants during the probe

    def latency_text(self, metric: str) -> str:
        """``p50/p99`` of ``metric`` (ttft, tpot, e2el) in ms, ``-`` where nothing was answered: a
        probe stopped before its first answer has no latencies, and 0 ms would read as fast."""
        lat = self.latencies_ms
        if f"{metric}_p50" not in lat:
            return "-"
        return f"{lat[f'{metric}_p50']:.0f}/{lat[f'{metric}_p99']:.0f}"

    def describe(self) -> str:
        return (f"{self.rate:.3g} req/s asked, {self.achieved_rate:.3g} sent: {self.good_share:.0%} good, goodput "
                f"{self.goodput:.3g} req/s, TTFT p50/p99 {self.latency_text('ttft')} ms, "
                f"TPOT p50/p99 {self.latency_text('tpot')} ms: {self.outcome.upper()}"
                + (f" ({self.reason})" if self.reason else ""))

    def to_json(self) -> dict[str, Any]:
        return {"rate": self.rate, "achieved_rate": self.achieved_rate, "goodput": self.goodput,
                "good_share": self.good_share, "requests": self.requests, "failed": self.failed,
                "latencies_ms": self.latencies_ms, "client_saturated": self.client_saturated,
                "duration_s": self.duration_s, "outcome": self.outcome, "reason": self.reason,
                "host_steal_pct": self.host_steal_pct}


def outcome_of(rate: float, achieved_rate: float, good_share: float, client_saturated: bool,
               good_fraction: float) -> tuple[Outcome, str]:
    """A probe's outcome: inconclusive when the client could not offer the rate (never the
    server's failure), else pass or fail by the share of requests within the SLOs."""
    if client_saturated:
        return "inconclusive", "the load client was saturated (event-loop lag or CPU)"
    if achieved_rate < MIN_ACHIEVED_SHARE * rate:
        return "inconclusive", (f"the client sent {achieved_rate:.3g} req/s, under {MIN_ACHIEVED_SHARE:.0%} of "
                                f"the {rate:.3g} asked")
    if good_share >= good_fraction:
        return "pass", ""
    return "fail", f"{good_share:.1%} within the SLOs, {good_fraction:.0%} needed"


@dataclass
class CapacitySearch:
    """The bracketing search as a state machine: ``next_rate()`` says what to probe (None: done),
    ``record(probe)`` takes the outcome. Pure, so that two servers' searches can interleave."""

    start_rate: float
    precision: float = 0.10
    max_probes: int = 8
    min_rate: float = 1e-3  # below this no rate passes, and the search gives up
    probes: list[Probe] = field(default_factory=list)
    passed_at: float | None = None  # the highest rate that passed
    failed_at: float | None = None  # the lowest rate that failed
    ceiling: float | None = None  # the lowest rate the client could not offer (twice)
    _reprobe: float | None = None

    def __post_init__(self) -> None:
        if not self.start_rate > 0:
            raise UsageError(f"a capacity search starts at a positive rate, not {self.start_rate}: measure the "
                             "server's single-stream latency first or give start_rate")

    @property
    def upper(self) -> float | None:
        """The lowest rate the search may not reach: failed, or beyond the client."""
        ends = [r for r in (self.failed_at, self.ceiling) if r is not None]
        return min(ends) if ends else None

    @property
    def converged(self) -> bool:
        upper = self.upper
        return self.passed_at is not None and upper is not None and upper <= self.passed_at * (1 + self.precision)

    @property
    def client_bound(self) -> bool:
        """The bracket's upper end is the client's limit, not a failure of the server's."""
        return self.ceiling is not None and (self.failed_at is None or self.ceiling < self.failed_at)

    @property
    def capacity(self) -> float | None:
        return self.passed_at

    def next_rate(self) -> float | None:
        if len(self.probes) >= self.max_probes or self.converged:
            return None
        if self._reprobe is not None:
            return self._reprobe
        if not self.probes:
            return self.start_rate
        upper = self.upper
        if self.passed_at is None:
            assert upper is not None
            lower = upper / 2
            return lower if lower >= self.min_rate else None
        if upper is None:
            return self.passed_at * 2
        return math.sqrt(self.passed_at * upper)

    def record(self, probe: Probe) -> None:
        self.probes.append(probe)
        rate = probe.rate
        if probe.outcome == "pass":
            self.passed_at = max(rate, self.passed_at or 0.0)
        elif probe.outcome == "fail":
            self.failed_at = min(rate, self.failed_at if self.failed_at is not None else math.inf)
        elif self._reprobe == rate:  # inconclusive twice: the client cannot offer this rate
            self.ceiling = min(rate, self.ceiling if self.ceiling is not None else math.inf)
        else:
            self._reprobe = rate
            return
        self._reprobe = None

    def verdict(self) -> str:
        """One line on what the search found and how far to trust it."""
        passed, upper = self.passed_at, self.upper
        if passed is None:
            lowest = min((p.rate for p in self.probes), default=self.start_rate)
            return f"no probed rate met the SLOs (lowest probed {lowest:.3g} req/s)"
        tail = (f"capacity {passed:.3g} req/s, bracket [{passed:.3g}, "
                + (f"{upper:.3g}" if upper is not None else "-") + "] req/s")
        if self.client_bound:
            return (tail + f": a lower bound, the client could not offer {self.ceiling:.3g} req/s (the server's "
                    "capacity was not reached)")
        if not self.converged:
            return tail + f": not converged to {self.precision:.0%} in {self.max_probes} probes"
        return tail + f", converged to {self.precision:.0%}"


def start_rate_from(e2el_s: float) -> float:
    """The first probe's rate from the single-stream end-to-end latency: one request at a time
    sustains 1 / e2el, and a batching server more (on the 2-core CPU host the float32 base's
    capacity under the CPU SLOs was 3-4x that, the W8A8 server's 10-14x), so the search starts at
    twice it (a failing start halves). A host class 10x slower starts 10x lower, and its probes
    send as few requests, so each lasts about as long."""
    if not e2el_s > 0:
        raise UsageError(f"the single-stream calibration measured an end-to-end latency of {e2el_s} s: the server "
                         "answered no request; check that it serves completions")
    return START_OVER_SINGLE_STREAM / e2el_s


def tolerance_problem(precision: float, factor: float, lower_is_better: bool) -> str | None:
    """Why a relative capacity budget cannot be judged at ``precision`` (None: it can): a search
    to 10% reports up to ~9% below the true capacity, so it cannot see a 5% regression."""
    allowed = (1 - factor) if not lower_is_better else (factor - 1)
    rounding = 1 - 1 / (1 + precision)
    if allowed >= rounding:
        return None
    return (f"a capacity budget of factor {factor:g} allows {allowed:.0%}, less than the {rounding:.0%} that a search "
            f"to precision {precision:.0%} loses to its bracketing alone: every healthy run could fail. Widen the "
            f"budget (at most baseline * {1 - rounding:.2f}) or give the CapacityWorkload a finer precision")
