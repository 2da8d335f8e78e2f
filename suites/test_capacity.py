"""Capacity suite: the highest Poisson request rate each server sustains while its requests meet
the GPU profile's latency SLOs, and the compressed server's capacity over the base's.

Capacity is what a serving team quotes and a release manager signs; fixed-concurrency throughput
(suites/test_perf.py) does not answer it. Each server's search doubles the rate until a probe
fails, then bisects to the workload's precision; every probe (rate, achieved rate, goodput,
p50/p99) is in the report, with goodput against rate plotted.
"""

from __future__ import annotations

import pytest

from pytest_vllm.gpu import GPUProfile
from pytest_vllm.perf.capacity import CapacityWorkload

pytestmark = pytest.mark.vllm_perf_pair

# Short requests, as the perf suite's: the 2-core CPU host serves the float32 base ~30 tok/s alone.
INPUT_LEN = 128
OUTPUT_LEN = 32
# GPU profiles serving a GPU-bound pair: the compressed server must sustain 1.2x the base's rate.
GPU_CAPACITY_FLOOR = {"capacity": ">= 1.2"}


def capacity_search(profile: GPUProfile) -> CapacityWorkload:
    return CapacityWorkload(name="capacity", input_len=INPUT_LEN, output_len=OUTPUT_LEN,
                            slo_ms=dict(profile.slo_ms), probe_seconds=profile.capacity_probe_seconds)


# 0.85: the search's 10% precision plus room (capacity_bench.CAPACITY_BUDGET); four runs on one
# host put the ratio at 5.9-8.0 (12% spread): with one recording it resolves ~55%, so it catches a
# compressed server that lost most of its capacity edge. No class has this test's baselines yet.
@pytest.mark.vllm_pair_budget(capacity=">= baseline * 0.85")
def test_capacity_under_slos(server_pair, vllm_bench, vllm_session) -> None:
    """Both servers' capacity under the profile's SLOs, probes interleaved, each gated against its
    baseline (``capacity >= baseline x 0.85``), and compressed / base against the ratio recorded
    for this host class: like the throughput speedup, it is a property of the hardware (W8A8 is
    fast only with AVX-512 VNNI). On GPU profiles serving a GPU-bound pair it must also be at
    least 1.2 (GPU_CAPACITY_FLOOR).

    Measured on a 2-core cpu-intel-f6m167-amx-2c host, four runs: base 1.49 / 2.04 / 1.85 / 1.85
    req/s, W8A8 10.2 / 12.1 / 13.8 / 14.8, ratio 6.89 / 5.93 / 7.44 / 7.98; the call took 121-154 s.
    Run to run a capacity moved ~16% (sd) there, so with one recording the CPU pair gate's
    tolerance is capped at 25% and it resolves ~55%: it catches a collapse, not a 15% loss."""
    profile = vllm_session.profile
    floor = GPU_CAPACITY_FLOOR if profile.is_gpu and vllm_session.perf_model != "embedded" else None
    vllm_bench.compare_capacity(*server_pair, capacity_search(profile), pair_budgets=floor)
