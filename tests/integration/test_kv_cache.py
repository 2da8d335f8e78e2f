"""The KV cache check on real servers: a server whose cache cannot hold the workload's concurrency
fails, naming the flag to change; the default server passes. Inner pytest sessions reach the
servers through ``--vllm-url`` (no boots of their own), so the check works from vLLM's own
figures alone (no local config.json)."""

from __future__ import annotations

import json

import pytest

from pytest_vllm.server.launcher import IN_PROCESS_WORKER_ENV

pytestmark = pytest.mark.integration

INNER = """
from pytest_vllm.load.workload import Workload

def test_kv(base_server, vllm_bench):
    vllm_bench.kv_cache(base_server, [Workload(name="c4", num_requests=4, input_len=128, output_len=32,
                                               concurrency=4)])
"""


def run_inner(pytester: pytest.Pytester, url: str) -> pytest.RunResult:
    pytester.makepyfile(test_inner=INNER)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--vllm-url", f"base={url}",
                                         "--vllm-report-dir", str(pytester.path / "reports"))


@pytest.fixture
def tiny_server(vllm_server_factory):
    """Five blocks of 128 tokens, one of them vLLM's own: four requests of 128 + 32 tokens do not fit.
    (A fixture, so the server boots before pytester snapshots sys.modules: modules first imported
    inside a pytester test are dropped after it, and httpx's error mapping with them.)"""
    # Eager, its worker in the engine process: what is checked is the cache, not the speed (an avx2-only
    # host booted it compiled in 259 s, the first compile of the session; eager servers boot there in 80 s).
    return vllm_server_factory(role="tiny_kv", max_model_len=512, num_gpu_blocks_override=5, enforce_eager=True,
                               env=IN_PROCESS_WORKER_ENV)


def test_a_cache_too_small_for_the_concurrency_fails_naming_the_flag(tiny_server, pytester: pytest.Pytester) -> None:
    result = run_inner(pytester, tiny_server.url)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*the base server's KV cache: * tokens*c4: * at once (needs 4)*",
                                 "*c4: its KV cache holds * tokens (* blocks of 128): * request(s) of 160 tokens at "
                                 "once, fewer than the concurrency of 4*VLLM_CPU_KVCACHE_SPACE*"])
    check = json.loads((pytester.path / "reports" / "results.json").read_text())["performance"]["kv_caches"][0]
    assert check["tokens"] <= 640 and not check["passed"] and check["workloads"]["c4"]["held"] < 4, check


def test_the_default_server_holds_the_concurrency(base_server, pytester: pytest.Pytester) -> None:
    result = run_inner(pytester, base_server.url)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*the base server's KV cache: 46,592 tokens*22.75 requests at max_model_len 2048 "
                                 "(vLLM: 22.75); c4: 182 at once (needs 4)*"])
