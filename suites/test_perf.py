"""Performance suite: single-stream latency, throughput at the profile's concurrencies, the effect
of prefix caching, and the compressed server's speedup over the base.

Every measurement is the median of repetitions, each on prompts of its own (metrics as `vllm
bench serve` defines them), gated against the baselines recorded for this host class under
``baselines/<host class>/`` with tolerances from the measured noise. Record them on purpose with
``--update-baselines``. Workload sizes follow the GPU profile: a run must last
seconds, not milliseconds, to be steady, and a 2-core CPU serves ~25 tokens/s where an H100
serves thousands.
"""

from __future__ import annotations

import warnings

import pytest

from pytest_vllm.gpu import GPUProfile
from pytest_vllm.load.workload import LongPrompts, Workload

# Every test of this file serves the perf pair (--vllm-perf-model): on GPU profiles by default an
# 8B-shaped Llama of random weights and its online FP8, which the GPU bounds rather than the host.
pytestmark = pytest.mark.vllm_perf_pair

# Repetitions, each on prompts of its own (profile.repeats): the median is steady against one slow
# repetition (a neighbour's burst on a shared host), and the noise model reads their spread. Five on
# the CPU: between boots of the 2-core host the medians moved 2.5% (sd), within a boot the
# repetitions 1.9% (benchmarks/test_noise_gate.py), so fewer tokens per repetition cost little
# resolution and save the avx2-only host class, where W8A8 serves ~5 tok/s, many minutes. Three on
# GPUs, where an 8B-shaped model's repetitions varied at most 1% within a boot.
OUTPUT_LEN = 32
# GPU profiles: the compressed server must be faster, whatever was recorded. Online FP8 of the
# 8B-shaped model on an H200 served 1.37x the bf16 base at concurrency 64 and 1.41x single stream.
GPU_SPEEDUP_FLOOR = {"output_throughput": ">= 1.2"}
SPEEDUP_MAX_CONCURRENCY = 64
# The step budget of the chunked-prefill server (--max-num-batched-tokens): a long prompt is prefilled
# this many tokens per engine step beside the running decodes. vLLM's defaults (engine/arg_utils.py,
# OpenAI server) are 2048 on CPUs and 8192-16384 on data-centre GPUs: a whole long prompt of this
# file's in one step, which is the stall the test measures on the base server.
CHUNKED_PREFILL_TOKENS = {"cpu": 256, "gpu": 1024}
GPU_LONG_PROMPT_TOKENS = 7680  # below the 8B shape's 8,192-token context and vLLM's GPU step budget of 8,192


def single_stream(profile: GPUProfile) -> Workload:
    return Workload(name="single_stream", num_requests=profile.requests_at(1), input_len=128,
                    output_len=OUTPUT_LEN, concurrency=1, repeats=profile.repeats)


def throughput(profile: GPUProfile, concurrency: int) -> Workload:
    return Workload(name=f"throughput_c{concurrency}", num_requests=profile.requests_at(concurrency),
                    input_len=128, output_len=OUTPUT_LEN, concurrency=concurrency, repeats=profile.repeats)


def shared_prefix(profile: GPUProfile) -> Workload:
    # Long enough that prefill dominates the first token: 1k tokens on a CPU, one at a time; on a GPU
    # 4k tokens, 8 at once, so the prefill that the cache saves is several of the GPU's steps rather
    # than the few milliseconds of one 4k prompt beside the host's ~20 ms per request.
    if profile.is_gpu:
        return Workload(name="shared_prefix", num_requests=64, input_len=4096, shared_prefix_len=4096 - 64,
                        output_len=4, concurrency=8, repeats=profile.repeats)
    return Workload(name="shared_prefix", num_requests=3, input_len=1024, shared_prefix_len=1024 - 64,
                    output_len=4, concurrency=1, repeats=profile.repeats)


def speedup(profile: GPUProfile) -> Workload:
    # At most 64 at once: at c256 an 8B-shaped model's short requests queue on the host's scheduling
    # (TTFT 0.5-0.7 s, up to 70 waiting), and FP8 served 1.19x there against 1.33x at c64 (H200).
    concurrency = min(SPEEDUP_MAX_CONCURRENCY, profile.concurrency_levels[-1])
    return Workload(name="speedup", num_requests=profile.requests_at(concurrency), input_len=128,
                    output_len=OUTPUT_LEN, concurrency=concurrency, repeats=profile.repeats)


def long_prompts_beside_streams(profile: GPUProfile) -> Workload:
    # Streams decoding while long prompts arrive: on the CPU 2 streams (4 requests of 64 tokens, about
    # 10 s per repetition at the 2-core host's pace) and two 1,024-token prompts 1 and 3.5 s in; on
    # GPUs 16 streams and four 7,680-token prompts. Three repetitions: the ratio this test gates is
    # large (see its docstring), so more runs would buy little. The GPU prompts must fit the 8B shape's
    # context (8,192 tokens with their one output token: 8,192-token prompts were refused with HTTP 400 on
    # an H200, 2026-12-02) and the base server's step budget (vLLM 0.24 on an H200 logged "Chunked prefill
    # is enabled with max_num_batched_tokens=8192"), so that the base server prefills each in one step.
    if profile.is_gpu:
        return Workload(name="long_prompt_interference", num_requests=48, input_len=128, output_len=256,
                        concurrency=16, repeats=3,
                        long_prompts=LongPrompts(input_len=GPU_LONG_PROMPT_TOKENS, count=4, first_after_s=1.0,
                                                 every_s=1.5))
    return Workload(name="long_prompt_interference", num_requests=4, input_len=64, output_len=64, concurrency=2,
                    repeats=3, long_prompts=LongPrompts(input_len=1024, count=2, first_after_s=1.0, every_s=2.5))


# Open loop: Poisson arrivals at a rate well below saturation, with the profile's SLOs (gpu.py
# slo_ms, the capacity search's too). CPU: 0.5 req/s of 128 in / 16 out is 8 output tok/s of demand,
# under half of what the slowest server of the pair serves at concurrency 2 on the avx2-only class
# (W8A8 there: ~5 tok/s one at a time, batching roughly doubles it). GPUs: 8 req/s of 512 in / 128
# out, about a fifth of the 8B-shaped bf16 model's c64 throughput on an H200 (5.2k tok/s). The SLOs
# are absolute budgets; the regressions they cannot see are the baseline budgets' to catch.
OPEN_LOOP = {
    "cpu": {"rate": 0.5, "requests": 8, "input_len": 128, "output_len": 16},
    "gpu": {"rate": 8.0, "requests": 160, "input_len": 512, "output_len": 128},
}
# Client lateness (send delay p99) beyond this share of the mean gap between arrivals distorts the
# arrival process the open loop asks for. On the 2-core host, where the client shares the cores with
# both servers, one request of a repetition went out 364 ms late (against 2 s gaps at 0.5 req/s).
OPEN_LOOP_MAX_LATENESS = 0.25


def open_loop(profile: GPUProfile) -> Workload:
    shape = OPEN_LOOP["gpu" if profile.is_gpu else "cpu"]
    return Workload(name="open_loop", num_requests=int(shape["requests"]), input_len=int(shape["input_len"]),
                    output_len=int(shape["output_len"]), concurrency=None, request_rate=shape["rate"],
                    slo_ms=dict(profile.slo_ms), repeats=3)


def test_kv_cache_holds_the_suites_traffic(vllm_server, vllm_bench, vllm_session) -> None:
    """Before any load: the server's KV cache holds every workload of this file at its concurrency
    without preempting, and its size is what the model's shape predicts (bytes per token from
    config.json against vLLM's cache_config_info, and vLLM's own max concurrency at max_model_len).
    On the CPU profile both servers hold 46,592 tokens: 182 requests of 128 + 32 tokens, 40 of the
    shared-prefix prompts, 22.75 at max_model_len 2048."""
    profile = vllm_session.profile
    vllm_bench.kv_cache(vllm_server, [throughput(profile, profile.concurrency_levels[-1]), shared_prefix(profile)])


def test_compressed_kv_cache_against_the_base(server_pair, vllm_bench) -> None:
    """Before any load: the compressed server's KV cache against the base's. Its tokens must grow at
    least as its cost per token shrinks (an fp8 cache, kv_cache_dtype="fp8", halves it; so does a
    bfloat16 server against a float32 one), or its cache got less memory. On the CPU profile the
    W8A8 server runs in bfloat16 beside the float32 base, both with 2 GiB: 93,184 against 46,592
    tokens, 2.00x, as the costs (23,040 and 46,080 B per token) say."""
    vllm_bench.kv_cache_pair(*server_pair)


def test_single_stream_latency(vllm_server, vllm_bench, vllm_session, benchmark) -> None:
    """One request at a time; the end-to-end latencies also land in pytest-benchmark's storage."""
    vllm_bench.single_stream(vllm_server, single_stream(vllm_session.profile), benchmark)


def test_throughput_at_concurrency(vllm_server, vllm_bench, vllm_session, concurrency: int) -> None:
    """Closed-loop throughput at each concurrency level of the GPU profile."""
    vllm_bench.run(vllm_server, throughput(vllm_session.profile, concurrency))


def test_open_loop_latency_under_slos(vllm_server, vllm_bench, vllm_session) -> None:
    """Requests at a steady Poisson rate below saturation, as users send them (not a closed loop's
    always-full batch): TTFT and TPOT p99 within the profile's SLOs (gpu.py slo_ms) and every request
    meeting them (slo_attainment), TTFT and TPOT p50 and goodput against this host class's
    baselines. Output throughput follows the arrival rate here, so it is not gated; the achieved
    rate and the client's send delay are in the results (with 8 requests a repetition the achieved
    rate is itself Poisson-noisy on the CPU), and a client late on its schedule fails the test as
    the client's fault, not the server's."""
    workload = open_loop(vllm_session.profile)
    slo = workload.slo_ms
    # goodput 0.90 is DEFAULT_BUDGETS' throughput factor; not yet judged on a CPU class (no baselines of
    # this test there) and on the H200 against one machine's recording. Below saturation goodput
    # follows the arrival rate (seeded arrivals, the same every run), so it moves only when requests
    # miss the SLOs: it catches a server that started missing them, not a 10% slower one (the p50
    # budgets are for that). No slowdown trial was run on this test.
    budgets = {"output_throughput": "off", "goodput": ">= baseline * 0.90", "slo_attainment": ">= 1.0",
               "ttft_p99": f"<= {slo['ttft']:g} ms", "tpot_p99": f"<= {slo['tpot']:g} ms"}
    measurement = vllm_bench.run(vllm_server, workload, budgets=budgets)
    late = max(measurement.runs_of("send_delay_p99"))
    gap_ms = 1000.0 / (workload.request_rate or 1.0)
    assert late <= OPEN_LOOP_MAX_LATENESS * gap_ms, (
        f"the load client sent requests up to {late:.0f} ms after their scheduled time (p99), more than "
        f"{OPEN_LOOP_MAX_LATENESS:.0%} of the {gap_ms:.0f} ms between arrivals: it, not the server, set the pace of "
        "this open loop")


# The verdict is the ratio's and the counters', not the two servers' own numbers: in a fresh-clone
# run on the 2-core CPU host both servers of this test ran 18-35% slower than their baselines for
# four of the five repetitions (1024-token prefills, one at a time, right after the second server
# booted), the next repetition and every other perf test of the run at the baselines, while the
# per-pair TTFT ratio stayed at 0.16-0.20 (recorded: 0.16-0.17). The base server's own latency and
# throughput are gated by the other tests of this file.
@pytest.mark.vllm_budget(output_throughput="off", ttft_p50="off", tpot_p50="off")
@pytest.mark.vllm_pair_budget(ttft_p50="<= 0.90")
def test_prefix_caching_cuts_ttft_of_shared_prefixes(base_server, vllm_server_factory, vllm_bench,
                                                     vllm_session) -> None:
    """Prompts sharing a long prefix: with prefix caching (on by default in vLLM's V1 engine, so the
    base server has it), prefill skips the shared part; the same server without it is the reference.

    The budget catches prefix caching that no longer works (a ratio near 1). Measured: 0.16-0.20 on
    the CPU profile, where the ratio resolves 17%: a cache that lost most of its effect (0.17 ->
    0.90) fails by far. On the lent H100 a 135M model prefills one 4k prompt in a few ms and the rest of
    the first token's 20-30 ms is the host's scheduling and HTTP work: one prompt at a time the
    ratio was 0.77-0.88 on three leases and 0.96 on a fourth, so the GPU workload sends 8 at once
    (0.77 and 0.58 on two leases, 0.47 and 0.82 in two runs on a third, 0.50 on a fourth, 0.55 and
    0.60 in two runs on a fifth). The server's own prefix cache counters then say, whatever the
    host, whether the cache was hit at all.
    """
    assert base_server.spec is None or base_server.spec.flag_dict.get("enable_prefix_caching") is not False
    without = vllm_server_factory(role="no_prefix_cache", enable_prefix_caching=False)
    comparison = vllm_bench.compare(without, base_server, shared_prefix(vllm_session.profile))
    cached, uncached = comparison.candidate.result, comparison.reference.result
    if not cached.has("prefix_cache_hit_rate"):
        warnings.warn("this vLLM exports no prefix cache counters; the cache hit rate was not checked", stacklevel=1)
        return
    # The deterministic side of the check: the TTFT ratio above is what users feel, but on a host-bound
    # GPU run it moves with the host; the server's own counters say whether the cache was used at all.
    hit_rates = cached.values("prefix_cache_hit_rate")
    assert min(hit_rates) >= 0.5, (
        f"prefix caching hit {min(hit_rates):.0%} of the prompt tokens in a repetition on the base server; prompts "
        "sharing a long prefix should hit for most of them")
    if uncached.has("prefix_cache_hit_rate"):
        assert max(uncached.values("prefix_cache_hit_rate")) == 0, "the server without prefix caching reported hits"


@pytest.mark.vllm_pair_budget(output_throughput=">= baseline * 0.90", tpot_p50="<= baseline * 1.10")
def test_compressed_speedup_over_base(server_pair, vllm_bench, vllm_session) -> None:
    """Base and compressed under the same load, at the profile's highest concurrency, repetitions
    interleaved; the ratio is compressed / base, per pair of repetitions.

    The speedup is a property of the hardware, so it is judged against the ratio recorded for this
    host class, not against a fixed floor: W8A8 INT8 ran 1.6-1.7x the float32 base where AVX-512
    VNNI exists and 0.37-0.62x on an avx2-only host (vLLM's CPU build has no fast INT8 kernels
    there). A fixed floor of your own (``output_throughput=">= 1.2"``) applies on every class.

    The factors are requests: the noise floor of the per-pair ratios decides. On this repo's CPU
    class (three recordings, ratio 1.888) a fresh-clone run measured 1.803 and a later one 1.913,
    with the throughput ratio resolving 30% (tolerance 19%, noise floor) and TPOT 38%: this pair
    catches a compressed server that loses a third of its edge, not a 10% one. No slowdown trial
    was run on the pair itself; the single-server figures are beside DEFAULT_BUDGETS.

    On GPU profiles serving a GPU-bound perf pair (a shape or the user's models, not the embedded
    135M pair, which the host bounds) the compressed server must also serve at least 1.2x the
    base's output throughput (GPU_SPEEDUP_FLOOR), the recorded ratio's relative budget aside.
    """
    profile = vllm_session.profile
    floor = GPU_SPEEDUP_FLOOR if profile.is_gpu and vllm_session.perf_model != "embedded" else None
    vllm_bench.compare(*server_pair, speedup(profile), pair_budgets=floor)


# The per-server factors are DEFAULT_BUDGETS' (throughput 0.90, latency 1.15), whose support is the
# noise-gate benchmark on the emeraldrapids class (a -22.5% throughput slowdown failed 6/6); for these
# metrics no slowdown trial was run and no class has their baselines, so they are judged nowhere yet
# (the noise model will widen them to what recordings show; a p99 of ~10 gaps is noisier than a
# median). The verdict today is the pair budget: 0.60 against 0.21-0.29 measured with chunking and
# 1.00 without (resolves 3-17%): it catches chunking that is lost, not a 10% worse chunk.
@pytest.mark.vllm_budget(output_throughput="off", ttft_p50="off",
                         long_prompt_prefill_throughput=">= baseline * 0.90", long_prompt_ttft_p50="<= baseline * 1.15",
                         itl_p99_during_prefill="<= baseline * 1.15")
@pytest.mark.vllm_pair_budget(itl_p99_during_prefill="<= 0.60")
def test_chunked_prefill_bounds_the_stall_of_long_prompts(base_server, vllm_server_factory, vllm_bench,
                                                          vllm_session) -> None:
    """Long prompts arrive while other requests stream: prefilled in one engine step (the base
    server: vLLM's default step budget holds the whole prompt), every stream stalls for the whole
    prefill; chunked into small steps (--max-num-batched-tokens CHUNKED_PREFILL_TOKENS), the streams
    keep their pace at the cost of a slower first token for the long prompt. vLLM's V1 engine always
    has chunked prefill on, so the step budget is the switch the test compares.

    The verdict is the ratio of the streams' inter-token gap p99 during long prefills, chunked / whole
    (itl_p99_during_prefill); the results also show the same streams' gaps clear of any prefill, and
    the long prompts' TTFT and prefill rate, gated against this host class's baselines. Measured on
    the 2-core CPU host (busy with other work): with 1,536-token prompts, gaps clear of prefills p99
    70-75 ms on both servers, during a prefill 3,230 ms whole and 679 ms in 256-token steps (ratio
    0.21, resolving 17%), the long prompts' TTFT 3.45 s whole and 4.57 s chunked (what chunking costs
    them); with this file's 1,024-token prompts 122-140 ms outside, 2,054 ms whole and 599 ms chunked
    during (0.29), TTFT 2.10 and 2.27 s; 133 s with the second server's boot. A budget of 0.60 fails a
    server that no longer chunks by far: given the whole-prompt step budget (2048) in place of 256,
    the candidate stalled the streams 1,864 ms against the base's 1,855 (ratio 1.00), FAIL, confirmed
    on fresh prompts.
    """
    profile = vllm_session.profile
    workload = long_prompts_beside_streams(profile)
    assert workload.long_prompts is not None
    own_budget = (base_server.spec.flag_dict.get("max_num_batched_tokens") if base_server.spec else None)
    if own_budget is not None and int(own_budget) < workload.long_prompts.input_len:
        pytest.skip(f"the base server sets max_num_batched_tokens={own_budget}, below the long prompts' "
                    f"{workload.long_prompts.input_len} tokens: it chunks them itself, so there is no unchunked "
                    "reference to compare with")
    chunked = vllm_server_factory(role="chunked_prefill",
                                  max_num_batched_tokens=CHUNKED_PREFILL_TOKENS["gpu" if profile.is_gpu else "cpu"])
    comparison = vllm_bench.compare(base_server, chunked, workload)
    for side in (comparison.reference, comparison.candidate):
        assert min(side.runs_of("prefill_overlapped_gaps")) > 0, (
            f"no inter-token gap of the streams overlapped a long prefill on the {side.role} server: the long "
            "prompts came after the streams ended, so the run measured no interference")
