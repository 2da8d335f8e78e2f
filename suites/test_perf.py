"""Performance suite: single-stream latency, throughput at the profile's concurrencies, the effect
of prefix caching, and the compressed server's speedup over the base.

Every measurement is the median of repeated runs (metrics as `vllm bench serve` defines them),
gated against the baselines recorded for this GPU profile under ``baselines/<gpu>/``. Record them
on purpose with ``--update-baselines``. Workload sizes follow the GPU profile: a run must last
seconds, not milliseconds, to be steady, and a 2-core CPU serves ~25 tokens/s where an H100
serves thousands.
"""

from __future__ import annotations

import warnings

import pytest

from pytest_vllm.gpu import GPUProfile
from pytest_vllm.load.workload import Workload


def single_stream(profile: GPUProfile) -> Workload:
    return Workload(name="single_stream", num_requests=max(6, profile.requests_per_slot * 3 // 2), input_len=128,
                    output_len=48, concurrency=1)


def throughput(profile: GPUProfile, concurrency: int) -> Workload:
    return Workload(name=f"throughput_c{concurrency}", num_requests=max(8, profile.requests_per_slot * concurrency),
                    input_len=128, output_len=48, concurrency=concurrency)


def shared_prefix(profile: GPUProfile) -> Workload:
    # Long enough that prefill dominates the first token: 1k tokens on a CPU, one at a time; on a GPU
    # 4k tokens, 8 at once, so the prefill that the cache saves is several of the GPU's steps rather
    # than the few milliseconds of one 4k prompt beside the host's ~20 ms per request.
    if profile.is_gpu:
        # 5 runs: each lasts ~1.5 s, and one run's TTFT p50 could be 1.9x another's on the same host.
        return Workload(name="shared_prefix", num_requests=64, input_len=4096, shared_prefix_len=4096 - 64,
                        output_len=4, concurrency=8, repeats=5)
    return Workload(name="shared_prefix", num_requests=12, input_len=1024, shared_prefix_len=1024 - 64,
                    output_len=4, concurrency=1)


# On a GPU the shared-prefix workload is the part of a run that differs most between hosts of one
# machine kind: 4k-token prefills, 8 at once, of 4-token answers (TPOT over 3 gaps, which the other
# prompts' prefills interrupt) take ~1.5 s a run. Over five H100 leases the server without the cache
# measured TTFT p50 73-134 ms and the cached one TPOT p50 6.7-12.8 ms; judged against the other
# four, each lease's worst ratio was 1.30 (TTFT) and 1.95 (TPOT). Its own numbers therefore only
# catch gross regressions; whether the cache works is the pair ratio's and the counters' job, and
# the other perf tests gate TTFT and TPOT at the profile's budgets.
PREFIX_GPU_BUDGETS = {"ttft_p50": "<= baseline * 2.5", "tpot_p50": "<= baseline * 2.5"}


def speedup(profile: GPUProfile) -> Workload:
    concurrency = profile.concurrency_levels[-1]
    return Workload(name="speedup", num_requests=profile.requests_per_slot * concurrency, input_len=128,
                    output_len=48, concurrency=concurrency)


def test_single_stream_latency(vllm_server, vllm_bench, vllm_session, benchmark) -> None:
    """One request at a time; the end-to-end latencies also land in pytest-benchmark's storage."""
    vllm_bench.single_stream(vllm_server, single_stream(vllm_session.profile), benchmark)


def test_throughput_at_concurrency(vllm_server, vllm_bench, vllm_session, concurrency: int) -> None:
    """Closed-loop throughput at each concurrency level of the GPU profile."""
    vllm_bench.run(vllm_server, throughput(vllm_session.profile, concurrency))


@pytest.mark.vllm_pair_budget(ttft_p50="<= 0.90")
def test_prefix_caching_cuts_ttft_of_shared_prefixes(base_server, vllm_server_factory, vllm_bench,
                                                     vllm_session) -> None:
    """Prompts sharing a long prefix: with prefix caching (on by default in vLLM's V1 engine, so the
    base server has it), prefill skips the shared part; the same server without it is the reference.

    The budget catches prefix caching that no longer works (a ratio near 1). Measured: 0.17 on the
    CPU profile. On the lent H100 a 135M model prefills one 4k prompt in a few ms and the rest of
    the first token's 20-30 ms is the host's scheduling and HTTP work: one prompt at a time the
    ratio was 0.77-0.88 on three leases and 0.96 on a fourth, so the GPU workload sends 8 at once
    (0.77 and 0.58 on two leases, 0.47 and 0.82 in two runs on a third, 0.50 on a fourth, 0.55 and
    0.60 in two runs on a fifth). The server's own prefix cache counters then say, whatever the
    host, whether the cache was hit at all.
    """
    assert base_server.spec is None or base_server.spec.flag_dict.get("enable_prefix_caching") is not False
    without = vllm_server_factory(role="no_prefix_cache", enable_prefix_caching=False)
    profile = vllm_session.profile
    budgets = PREFIX_GPU_BUDGETS if profile.is_gpu else None
    before = {server.role: prefix_cache_counts(server) for server in (without, base_server)}
    vllm_bench.compare(without, base_server, shared_prefix(profile), budgets=budgets)
    after = {server.role: prefix_cache_counts(server) for server in (without, base_server)}
    cached_before, cached_after = before[base_server.role], after[base_server.role]
    if cached_before is None or cached_after is None:
        warnings.warn("this vLLM exports no prefix cache counters; the cache hit rate was not checked", stacklevel=1)
        return
    # The deterministic side of the check: the TTFT ratio above is what users feel, but on a host-bound
    # GPU run it moves with the host; the server's own counters say whether the cache was used at all.
    hits, queries = cached_after[0] - cached_before[0], cached_after[1] - cached_before[1]
    assert queries > 0 and hits / queries >= 0.5, (
        f"prefix caching hit {hits:.0f} of {queries:.0f} prompt tokens on the base server; prompts sharing "
        "a long prefix should hit for most of them")
    uncached_hits = [(counts or (0.0, 0.0))[0] for counts in (before[without.role], after[without.role])]
    assert uncached_hits[0] == uncached_hits[1], "the server without prefix caching reported cache hits"


def prefix_cache_counts(server) -> tuple[float, float] | None:
    """(hit, queried) prompt tokens of the server's prefix cache so far; None if not exported."""
    hits, queries = server.counter("vllm:prefix_cache_hits"), server.counter("vllm:prefix_cache_queries")
    return None if hits is None else (hits, queries or 0.0)


@pytest.mark.vllm_pair_budget(output_throughput=">= 0.75", tpot_p50="<= 1.35")
def test_compressed_speedup_over_base(server_pair, vllm_bench, vllm_session) -> None:
    """Base and compressed under the same load, at the profile's highest concurrency, in the same
    run; the ratio is compressed / base.

    The budget guards against a regression of the compressed path (on the CPU profile INT8 W8A8
    runs ~1.3x the float32 base; on an H100 a 135M model is bound by CPU-side scheduling, so FP8
    cannot show its 1.3-1.5x of 8B models) rather than demanding a GPU-sized speedup.
    """
    vllm_bench.compare(*server_pair, speedup(vllm_session.profile))
