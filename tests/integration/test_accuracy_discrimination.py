"""The accuracy gates discriminate: the suite fails a deliberately damaged checkpoint.

The test runs the accuracy suite of ``suites/`` in an inner pytest session against real servers
and reads the failure text and results.json. The servers are this session's own (the suites' base
server, and the damaged checkpoint booted beside it), handed to the inner session with
``--vllm-url`` as a platform team would point the suite at servers it runs: nothing boots twice.
The other half, that the same tests pass the embedded W8A8 checkpoint, is the suite's own run in
this session (``suites/test_accuracy.py``: the same tests on the same pair): an inner run of it
here repeated that work (3-5 minutes on the avx2-only host) for no other check.
The damaged checkpoint is the embedded ``smollm2-135m-instruct-w4-damaged`` recipe (every Linear
layer on a 4-bit per-channel grid, made by llm-compressor); ``pytest-vllm models build`` (``make
models``) builds it with the pair.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pytest_vllm.errors import UsageError
from pytest_vllm.models import embedded
from pytest_vllm.server.launcher import IN_PROCESS_WORKER_ENV

pytestmark = pytest.mark.integration

SUITE = Path(__file__).resolve().parents[2] / "suites" / "test_accuracy.py"
# lm-eval and the large corpus run in the suite itself; here the built-in sets and the small
# agreement corpus decide (the large one would add about 3 minutes a run on a fast host).
SELECTED = "test_task_recovery or (test_logprob_agreement and not large_corpus)"
INNER_LIMIT_S = 1200


def run_suite(pytester: pytest.Pytester, *extra: str) -> tuple[pytest.RunResult, dict, float]:
    report_dir = pytester.path / "reports"
    started = time.monotonic()
    result = pytester.runpytest_subprocess(
        str(SUITE), "--gpu", "cpu", "-p", "no:cacheprovider", "-k", SELECTED, "--vllm-report-dir", str(report_dir),
        "--vllm-log-dir", str(pytester.path / "logs"), "-W", "ignore::DeprecationWarning", *extra,
        timeout=INNER_LIMIT_S)
    elapsed = time.monotonic() - started
    results = json.loads((report_dir / "results.json").read_text()) if (report_dir / "results.json").is_file() else {}
    return result, results, elapsed


def by_metric(results: dict) -> dict[str, dict]:
    return {f"{r['set']} {r['metric']}": r for r in results.get("accuracy", {}).get("recovery", [])}


def urls(base, compressed) -> tuple[str, ...]:
    return "--vllm-url", f"base={base.url}", "--vllm-url", f"compressed={compressed.url}"


def test_damaged_checkpoint_fails_the_accuracy_budgets(pytester: pytest.Pytester, base_server,
                                                       vllm_server_factory) -> None:
    try:
        damaged = embedded.require_built(embedded.DAMAGED_RECIPE)
    except UsageError as exc:
        problem = str(exc)  # not built: `make models` (pytest-vllm models build) builds it with the pair
    else:
        problem = ""
    if problem:
        pytest.fail(problem, pytrace=False)
    # Its worker in the engine process: its answers are judged, not its speed (one process fewer to boot).
    damaged_server = vllm_server_factory(model=str(damaged), role="damaged", env=IN_PROCESS_WORKER_ENV)
    result, results, elapsed = run_suite(pytester, *urls(base_server, damaged_server))
    print(f"damaged run: {elapsed:.0f}s")
    output = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, output[-5000:]
    result.assert_outcomes(failed=2)
    # The failure is a readable table: one row per metric, its bounds, budget and verdict.
    result.stdout.fnmatch_lines([
        "*accuracy recovery out of budget (*facts accuracy*",
        "*Metric*n*Base*Compressed*Recovery*Lower bound*Upper bound*Budget*Verdict*",
        "*facts accuracy*>= 0.95*FAIL*",
    ])
    result.stdout.fnmatch_lines(["*logprob agreement out of budget (*", "*kl_mean*<= 0.2*FAIL*"])
    rows = by_metric(results)
    assert {"facts accuracy", "arithmetic accuracy", "choice acc", "choice acc_norm"} <= set(rows)
    for name in ("facts accuracy", "choice acc"):  # significantly below the budget: the whole interval
        assert rows[name]["verdict"] == "FAIL" and rows[name]["upper_bound"] < 0.95, rows[name]
    facts = rows["facts accuracy"]
    assert facts["compressed"]["model"] == damaged.name
    # The damage shows as lost recovery on most metrics, even where too few items make it significant.
    assert sum(row["recovery"] < 0.95 for row in rows.values()) >= 3, rows
    checks = {c["metric"]: c for c in results["accuracy"]["agreement"][0]["checks"]}
    assert not checks["kl_mean"]["passed"] and not checks["top1_agreement"]["passed"], checks
    assert sum(not c["passed"] for c in checks.values()) >= 3, checks
