"""``pytest -n 2`` on real servers: each worker boots only its own files' server, and nothing collides.

The inner session has two test files, each with its own server (``max_num_seqs`` 2 and 4 from a
module marker), a request and a small performance measurement recorded as a baseline. Under two
xdist workers each file runs on a worker of its own: every server boots once, on its own cores,
with its own log; each worker writes its own report folder; the controller prints both
summaries; both baselines are written.
"""

from __future__ import annotations

import json
import re

import pytest

from pytest_vllm.hostclass import EMULATE_AVX2_ENV

pytestmark = pytest.mark.integration
pytest.importorskip("xdist")

INNER = """
import pytest
from pytest_vllm.load.workload import Workload

pytestmark = pytest.mark.vllm_server(max_num_seqs={seqs}, enforce_eager=True, max_model_len=512)

def test_answers(base_server):
    with base_server.client() as client:
        assert client.completions.create(model=base_server.model, prompt="Hi", max_tokens=2).choices

@pytest.mark.vllm_budget(output_throughput=">= 0.1")
def test_measured(base_server, vllm_bench):
    vllm_bench.run(base_server, Workload(name="tiny", num_requests=4, input_len=16, output_len=4, concurrency=2,
                                         repeats=1))
"""


def test_two_workers_each_boot_their_own_files_server(pytester: pytest.Pytester,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_two=INNER.format(seqs=2), test_four=INNER.format(seqs=4))
    monkeypatch.delenv(EMULATE_AVX2_ENV, raising=False)  # it refuses the recordings whose merge is checked
    reports, logs, baselines = (pytester.path / name for name in ("reports", "logs", "baselines"))
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider", "--vllm-report-dir", str(reports),
                                           "--vllm-log-dir", str(logs), "--vllm-baseline-dir", str(baselines),
                                           "--update-baselines", timeout=900)
    result.assert_outcomes(passed=4)
    # Found anywhere in the shared stderr, not per line: a line written by another process (a
    # server's own output, say) may still run into one of ours.
    booted = re.findall(r"\[vllm (gw\d)\] booting ", "\n".join(result.errlines))
    assert sorted(booted) == ["gw0", "gw1"], f"each server boots once, on one worker: {booted}"

    log_files = sorted(logs.glob("*.log"))
    # Sorted by worker, not by file name: the name starts with the server's key, a hash.
    assert sorted(re.sub(r"^base-[0-9a-f]+-", "", p.name) for p in log_files) == ["gw0.log", "gw1.log"]
    bindings = {re.search(r"VLLM_CPU_OMP_THREADS_BIND=(\S+)", p.read_text()).group(1) for p in log_files}
    assert len(bindings) == 2, f"the two workers' servers share cores: {bindings}"

    assert sorted(p.parent.name for p in reports.glob("*/results.json")) == ["gw0", "gw1"]
    result.stdout.fnmatch_lines(["*vllm summary (xdist worker gw0)*"])
    result.stdout.fnmatch_lines(["*vllm summary (xdist worker gw1)*"])

    recorded = sorted(p.parent.name for p in baselines.rglob("test_measured.json"))
    assert recorded == ["test_four", "test_two"]
    for path in baselines.rglob("test_measured.json"):
        assert list(json.loads(path.read_text())["entries"]) == ["base/tiny"]
