"""Telemetry overhead benchmark: what sampling the server's /metrics during a run costs the run.

    pytest benchmarks/test_telemetry_overhead.py --gpu cpu -s

The suites' c4 workload on the base server, repetitions with the sampler off and on (at the CPU
profile's interval and at the GPU profiles' 0.25 s) in rotating order, each on prompts of its
own. Printed per interval: the median of the per-round ratios sampled / unsampled for throughput,
TTFT p50 and TPOT p50, and their range. On a 2-core host the sampler competes with the server
for CPU (vLLM renders /metrics in its API server process), so this is where it would show.
"""

from __future__ import annotations

import os
import statistics

from pytest_vllm.load.runner import run_workload
from pytest_vllm.load.workload import Workload
from pytest_vllm.perf.metrics import compute

ROUNDS = int(os.environ.get("TELEMETRY_ROUNDS", "7"))
METRICS = ("output_throughput", "ttft_p50", "tpot_p50")


def test_telemetry_overhead(base_server, vllm_session) -> None:
    intervals: list[float | None] = [None, vllm_session.profile.telemetry_interval_s, 0.25]
    intervals = list(dict.fromkeys(intervals))
    workload = Workload(name="telemetry_overhead", num_requests=12, input_len=128, output_len=32, concurrency=4,
                        repeats=1)
    rows: dict[float | None, list[dict[str, float]]] = {i: [] for i in intervals}
    for r in range(ROUNDS):
        order = intervals[r % len(intervals):] + intervals[:r % len(intervals)]
        for interval in order:
            seed = 1 + r * len(intervals) + intervals.index(interval)
            runs = run_workload(base_server.url, base_server.model, workload.with_(prompt_seed=seed),
                                telemetry_interval=interval)
            values = compute(runs.runs[0]).values
            rows[interval].append({m: values[m] for m in METRICS})
    print(f"\ntelemetry overhead: {ROUNDS} rounds of {workload.describe()} on the base server "
          "(ratio sampled / unsampled per round)")
    for interval in intervals[1:]:
        parts = []
        for metric in METRICS:
            ratios = [on[metric] / off[metric] for on, off in zip(rows[interval], rows[None])]
            parts.append(f"{metric} {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})")
        print(f"  every {interval:g}s: " + ", ".join(parts))
    assert all(len(v) == ROUNDS for v in rows.values())
