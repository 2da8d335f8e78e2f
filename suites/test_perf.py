"""Performance suite: single-stream latency, throughput at the profile's concurrencies, the effect
of prefix caching, and the compressed server's speedup over the base.

Every measurement is the median of repeated runs (metrics as `vllm bench serve` defines them),
gated against the baselines recorded for this GPU profile under ``baselines/<gpu>/``. Record them
on purpose with ``--update-baselines``.
"""

from __future__ import annotations

import pytest

from pytest_vllm.load.workload import Workload

# Small enough for a 2-core CPU run, large enough to be steady: ~10-20 s per repetition on CPU.
SINGLE_STREAM = Workload(name="single_stream", num_requests=6, input_len=128, output_len=48, concurrency=1)
THROUGHPUT = Workload(name="throughput", num_requests=16, input_len=128, output_len=48)
PREFIX_SHARED = Workload(name="shared_prefix", num_requests=12, input_len=1024, shared_prefix_len=960,
                         output_len=4, concurrency=1)
SPEEDUP = Workload(name="speedup", num_requests=16, input_len=128, output_len=48, concurrency=4)


def test_single_stream_latency(vllm_server, vllm_bench, benchmark) -> None:
    """One request at a time; the end-to-end latencies also land in pytest-benchmark's storage."""
    vllm_bench.single_stream(vllm_server, SINGLE_STREAM, benchmark)


def test_throughput_at_concurrency(vllm_server, vllm_bench, concurrency: int) -> None:
    """Closed-loop throughput at each concurrency level of the GPU profile."""
    vllm_bench.run(vllm_server, THROUGHPUT.with_(name=f"throughput_c{concurrency}", concurrency=concurrency,
                                                 num_requests=max(THROUGHPUT.num_requests, 4 * concurrency)))


@pytest.mark.vllm_pair_budget(ttft_p50="<= 0.7")
def test_prefix_caching_cuts_ttft_of_shared_prefixes(base_server, vllm_server_factory, vllm_bench) -> None:
    """Prompts sharing a long prefix: with prefix caching (on by default in vLLM's V1 engine, so the
    base server has it), prefill skips the shared part; the same server without it is the reference."""
    assert base_server.spec is None or base_server.spec.flag_dict.get("enable_prefix_caching") is not False
    without = vllm_server_factory(role="no_prefix_cache", enable_prefix_caching=False)
    vllm_bench.compare(without, base_server, PREFIX_SHARED)


@pytest.mark.vllm_pair_budget(output_throughput=">= 0.75", tpot_p50="<= 1.35")
def test_compressed_speedup_over_base(server_pair, vllm_bench) -> None:
    """Base and compressed under the same load in the same run; the ratio is compressed / base.

    On the CPU profile the INT8 W8A8 kernels run against float32 weights; the budget guards
    against a regression of the compressed path rather than demanding a GPU-sized speedup.
    """
    vllm_bench.compare(*server_pair, SPEEDUP)
