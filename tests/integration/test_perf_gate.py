"""The performance gate end to end on real servers: record, pass on the same spec, fail when slowed.

An inner pytest session measures one closed-loop workload on the base server and is run five
times against one baseline folder: once with --update-baselines, once unchanged (must pass; its
results.json is then pooled in with `pytest-vllm baselines add`), once with --add-baselines (a
third recording), once with the server's max_num_seqs cut below the workload's concurrency (a
real server-side slowdown: the throughput gate must fail against the pooled baseline, with the
table and the flag change named), and once re-recording that slowed server (passes: recording
replaces, it does not judge).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

INNER = """
import os
import pytest
from pytest_vllm.load.workload import Workload

MAX_NUM_SEQS = int(os.environ.get("GATE_MAX_NUM_SEQS", "8"))
WORKLOAD = Workload(name="gate", num_requests=12, input_len=64, output_len=32, concurrency=4)

@pytest.mark.vllm_server(enforce_eager=True, max_num_seqs=MAX_NUM_SEQS)
@pytest.mark.vllm_budget(ttft_p50="<= baseline * 100", tpot_p50="<= baseline * 100")
def test_gate(base_server, vllm_bench):
    vllm_bench.run(base_server, WORKLOAD)
"""


def run_inner(pytester: pytest.Pytester, baseline_dir: Path, *extra: str, monkeypatch: pytest.MonkeyPatch,
              max_num_seqs: int = 8) -> pytest.RunResult:
    monkeypatch.setenv("GATE_MAX_NUM_SEQS", str(max_num_seqs))
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--vllm-baseline-dir", str(baseline_dir),
                                         "--vllm-report-dir", str(pytester.path / "reports"), *extra)


def test_gate_records_passes_and_catches_a_slowdown(pytester: pytest.Pytester, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch, vllm_session) -> None:
    pytester.makepyfile(test_inner=INNER)
    baselines = tmp_path / "baselines"

    recorded = run_inner(pytester, baselines, "--update-baselines", monkeypatch=monkeypatch)
    recorded.assert_outcomes(passed=1)
    files = list(baselines.rglob("*.json"))
    assert len(files) == 1 and files[0].parts[-4] == vllm_session.profile.name
    entry = next(iter(json.loads(files[0].read_text())["entries"].values()))
    assert len(entry["metrics"]["output_throughput"]["runs"]) == 3

    again = run_inner(pytester, baselines, monkeypatch=monkeypatch)
    again.assert_outcomes(passed=1)
    again.stdout.fnmatch_lines(["*output_throughput*ok*"])

    # The gate run's results pooled in as a second recording, then a third run added by flag.
    added = subprocess.run([sys.executable, "-m", "pytest_vllm.cli", "baselines", "add", "--dir", str(baselines),
                            str(pytester.path / "reports" / "results.json")], capture_output=True, text=True)
    assert added.returncode == 0 and "2 recordings" in added.stdout, added.stdout + added.stderr
    pooled = run_inner(pytester, baselines, "--add-baselines", monkeypatch=monkeypatch)
    pooled.assert_outcomes(passed=1)
    entry = next(iter(json.loads(files[0].read_text())["entries"].values()))
    assert len(entry["recordings"]) == 3
    assert entry["metrics"]["output_throughput"]["runs"] == [r["metrics"]["output_throughput"]["median"]
                                                             for r in entry["recordings"]]

    stored = files[0].read_text()
    slowed = run_inner(pytester, baselines, monkeypatch=monkeypatch, max_num_seqs=1)
    slowed.assert_outcomes(failed=1)
    slowed.stdout.fnmatch_lines(["*gate on the base server * is out of budget:*",
                                 "*output_throughput*FAIL*",
                                 "*note: the server differs from the baseline's (max_num_seqs: 8 → 1)*"])
    assert files[0].read_text() == stored, "a gated run must never touch the stored baseline"
    summary = (pytester.path / "reports" / "summary.md").read_text()
    assert "| output_throughput |" in summary and "FAIL" in summary

    # Re-recording on purpose replaces the baseline and is not judged against the one it replaces.
    rerecorded = run_inner(pytester, baselines, "--update-baselines", monkeypatch=monkeypatch, max_num_seqs=1)
    rerecorded.assert_outcomes(passed=1)
    assert files[0].read_text() != stored

