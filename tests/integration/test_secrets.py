"""Secrets on a real server: an API key secures the booted server, and no planted secret reaches
anything pytest-vllm prints or writes.

One inner session boots the base server with ``VLLM_API_KEY`` set, a secret vLLM flag
(``hf_token``) and a secret variable (``HF_TOKEN``) from its marker; it sends requests with the
key, checks that a request without it is refused, records a small performance baseline, and
fails one test on purpose (a failing assert shows the server handle and the server's log tail).
Then every output is searched for the three planted values: the terminal, the server's log (our
command line and vLLM's own lines), results.json, summary.md, report.html and the baseline file.
"""

from __future__ import annotations

import secrets

import pytest

from pytest_vllm.hostclass import EMULATE_AVX2_ENV

pytestmark = pytest.mark.integration

INNER = """
import httpx
import pytest
from pytest_vllm.load.workload import Workload
from pytest_vllm.server.launcher import IN_PROCESS_WORKER_ENV

pytestmark = pytest.mark.vllm_server(hf_token="{flag_secret}",
                                     env={{**IN_PROCESS_WORKER_ENV, "HF_TOKEN": "{env_secret}"}},
                                     enforce_eager=True, max_model_len=512)

def test_served_with_the_key(base_server):
    with base_server.client() as client:
        client.completions.create(model=base_server.model, prompt="Hello", max_tokens=2)
    assert httpx.get(base_server.url + "/v1/models", timeout=30).status_code == 401

@pytest.mark.vllm_budget(output_throughput=">= 0.1")
def test_measured(base_server, vllm_bench):
    vllm_bench.run(base_server, Workload(name="tiny", num_requests=4, input_len=16, output_len=4, concurrency=2,
                                         repeats=1))

def test_fails_showing_the_handle(base_server):
    assert base_server is None
"""


def test_no_planted_secret_is_printed_or_written(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    planted = {name: f"{name}-{secrets.token_hex(8)}" for name in ("apikey", "flagsecret", "envsecret")}
    pytester.makepyfile(test_inner=INNER.format(flag_secret=planted["flagsecret"], env_secret=planted["envsecret"]))
    monkeypatch.setenv("VLLM_API_KEY", planted["apikey"])
    monkeypatch.delenv(EMULATE_AVX2_ENV, raising=False)  # it refuses the recording that is searched for secrets
    reports, logs, baselines = (pytester.path / name for name in ("reports", "logs", "baselines"))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-l", "--vllm-report-dir", str(reports),
                                           "--vllm-log-dir", str(logs), "--vllm-baseline-dir", str(baselines),
                                           "--update-baselines", timeout=900)
    result.assert_outcomes(passed=2, failed=1)
    terminal = "\n".join(result.outlines + result.errlines)
    assert "server log (last" in terminal, "the failure report carries the server's log tail"
    outputs = {"terminal": terminal}
    (log,) = logs.glob("*.log")
    outputs["server log"] = log.read_text()  # our command line, and vLLM's own lines (it masks hf_token itself)
    for path in [*reports.glob("*.*"), *baselines.rglob("*.json")]:
        if path.suffix in (".json", ".md", ".html"):
            outputs[str(path.relative_to(pytester.path))] = path.read_text()
    assert {"reports/results.json", "reports/summary.md", "reports/report.html"} <= set(outputs)
    assert any(name.startswith("baselines/") for name in outputs), "the measurement was recorded"
    command_line = "\n".join(outputs["server log"].splitlines()[:2])
    assert "hf_token" in command_line and "HF_TOKEN=" in command_line and "VLLM_API_KEY=" in command_line
    leaks = [f"{what} in {where}" for where, text in outputs.items() for what, value in planted.items()
             if value in text]
    assert not leaks, f"planted secrets found: {leaks}"

