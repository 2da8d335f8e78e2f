"""Client capacity benchmark: how much streaming load our client sustains, against `vllm bench serve`'s.

    make bench-env && pytest benchmarks/test_client_capacity.py -s

Both clients drive GuideLLM's mock server (from PyPI: it streams tokens without a model, so the
server costs almost nothing per token) at rising concurrency. Reported per level: output tokens/s
and the client's own CPU µs per output token (ours: its event-loop thread; vLLM's: its process,
sampled around the measured run). Target: ours sustains at least vLLM's highest rate at no more
CPU per token. Both clients and the mock server share this machine's cores, so absolute rates
are machine-bound; the ratios measured side by side are the figures.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from pytest_vllm.load.runner import run_workload
from pytest_vllm.load.workload import Workload
from pytest_vllm.models import embedded
from pytest_vllm.perf.metrics import compute

from .vllm_bench import run_vllm_bench

GUIDELLM = Path(os.environ.get("GUIDELLM", ".venv-bench/bin/guidellm"))
LEVELS = (16, 64, 128)
TURNS = 3
OUTPUT_TOKENS = 256
PORT = 8299


@pytest.fixture(scope="module")
def mock_server(tmp_path_factory: pytest.TempPathFactory):
    if not GUIDELLM.exists() and not shutil.which(str(GUIDELLM)):
        pytest.fail(f"{GUIDELLM} not found: run `make bench-env` (installs guidellm into .venv-bench) or set GUIDELLM")
    log = tmp_path_factory.mktemp("mock") / "mock.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(GUIDELLM), "mock-server", "--port", str(PORT), "--model", "mock",
                                 "--ttft-ms", "0", "--itl-ms", "0", "--output-tokens", str(OUTPUT_TOKENS)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{PORT}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.5)
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def test_client_capacity_against_vllm_bench_serve(mock_server: str, tmp_path: Path) -> None:
    dataset = tmp_path / "prompts.jsonl"
    dataset.write_text("\n".join(json.dumps({"prompt": f"request {i}: tell me a story"}) for i in range(64)))
    tokenizer = str(embedded.model_path(embedded.BASE_RECIPE))
    rows = []
    for level in LEVELS:
        n = 4 * level
        ours_tps, ours_cpu, theirs_tps, theirs_cpu = [], [], [], []
        for turn in range(TURNS):
            workload = Workload(name=f"capacity_c{level}", dataset=str(dataset), num_requests=n,
                                output_len=OUTPUT_TOKENS, concurrency=level, repeats=1, seed=turn)
            run = run_workload(mock_server, "mock", workload).runs[0]
            mine = compute(run)
            assert not mine.errors, mine.errors[:3]
            ours_tps.append(mine["output_throughput"])
            ours_cpu.append(mine["client_cpu_us_per_token"])
            theirs = run_vllm_bench(base_url=mock_server, model="mock", tokenizer=tokenizer, input_len=16,
                                    output_len=OUTPUT_TOKENS, num_prompts=n, concurrency=level, warmups=level,
                                    seed=turn, out_dir=tmp_path, label=f"c{level}-{turn}")
            theirs_tps.append(float(theirs["output_throughput"]))
            theirs_cpu.append(theirs["client_cpu_s"] * 1e6 / max(1, theirs["total_output_tokens"]))
        rows.append((level, statistics.median(ours_tps), statistics.median(theirs_tps),
                     statistics.median(ours_cpu), statistics.median(theirs_cpu)))
    lines = [f"client capacity on GuideLLM's mock server ({TURNS} interleaved runs per level, medians):",
             f"{'conc':>5} {'ours tok/s':>11} {'vllm tok/s':>11} {'ratio':>6} {'ours us/tok':>12} {'vllm us/tok':>12}"]
    lines += [f"{c:>5} {a:11.0f} {b:11.0f} {a / b:6.2f} {x:12.1f} {y:12.1f}" for c, a, b, x, y in rows]
    best_ours, best_theirs = max(r[1] for r in rows), max(r[2] for r in rows)
    cpu_ours, cpu_theirs = statistics.median(r[3] for r in rows), statistics.median(r[4] for r in rows)
    lines.append(f"highest sustained: ours {best_ours:.0f} tok/s, vllm {best_theirs:.0f} tok/s "
                 f"({best_ours / best_theirs:.2f}x); CPU per token: ours {cpu_ours:.1f} us, vllm {cpu_theirs:.1f} us "
                 f"({cpu_ours / cpu_theirs:.2f}x)")
    print("\n" + "\n".join(lines))
    report = Path(".pytest_vllm/reports/client_capacity.json")
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps({"rows": rows, "best": [best_ours, best_theirs], "cpu_us": [cpu_ours, cpu_theirs]}))
    assert best_ours >= 0.95 * best_theirs and cpu_ours <= 1.05 * cpu_theirs, "\n".join(lines)
