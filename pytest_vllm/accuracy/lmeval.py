"""lm-eval backend: lm-eval's ``local-completions`` model run against the servers already up.

Each server gets its own lm-eval subprocess (``lmeval_runner``), both at once, offline
(``HF_HUB_OFFLINE``, ``HF_DATASETS_OFFLINE``), with the task YAMLs shipped in
``pytest_vllm/data/lmeval`` (whose data are the repo's eval files) plus any folder of
``eval_dirs``. Per-document scores come back with the aggregate ones, so recovery is paired and
bounded exactly as for the built-in eval sets.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_vllm import redact
from pytest_vllm.errors import UsageError, VLLMPluginError
from pytest_vllm.server.handle import ServerHandle

INSTALL_HINT = "pip install 'pytest-vllm[lmeval]' (lm-eval >= 0.4.5)"
_TASK_LINE = re.compile(r"^task:\s*['\"]?([A-Za-z0-9_.\-]+)", re.MULTILINE)


class LMEvalError(VLLMPluginError):
    """An lm-eval run failed; the message holds its output tail."""


def tasks_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "data" / "lmeval"


def available() -> bool:
    return importlib.util.find_spec("lm_eval") is not None


def discover_tasks(dirs: Sequence[Path] = ()) -> dict[str, Path]:
    """Task name -> YAML file, for the shipped tasks and ``dirs`` (read without a YAML parser)."""
    found: dict[str, Path] = {}
    for folder in (tasks_dir(), *dirs):
        for path in sorted(Path(folder).glob("*.yaml")):
            match = _TASK_LINE.search(path.read_text(encoding="utf-8"))
            if match:
                found[match.group(1)] = path
    return found


@dataclass
class TaskRun:
    """One server's lm-eval result: per task, per metric, the score and per-document values."""

    role: str
    tasks: dict[str, Any] = field(default_factory=dict)
    lm_eval_version: str = "unknown"
    seconds: float = 0.0


def tokenizer_for(server: ServerHandle, configured: str | None) -> str:
    """A tokenizer lm-eval can load offline: the configured one, else the server's model folder (or
    hub id, loaded from the local HF cache); for a --vllm-url server, the model ``/v1/models`` names."""
    if configured:
        return configured
    if server.spec is not None:
        local = Path(server.spec.model).expanduser()
        return str(local) if local.exists() else server.spec.model
    import httpx

    try:
        with server.http(timeout=10) as http:
            root = next((m.get("root") for m in http.get("/v1/models").json().get("data", [])
                         if m.get("id") == server.model), None)
    except (httpx.HTTPError, ValueError, AttributeError):
        root = None
    if root:
        return str(root)
    raise UsageError(f"lm-eval needs the tokenizer of the {server.role} server {server.model}: set lmeval_tokenizer "
                     "in [tool.pytest_vllm.accuracy] (a local path or a cached hub id)")


def run_pair(servers: Sequence[ServerHandle], tasks: Sequence[str], extra_dirs: Sequence[Path], *,
             tokenizer: str | None, seed: int, concurrency: int, limit: int | None = None,
             timeout: float = 1800.0, python: str | None = None) -> list[TaskRun]:
    """Run ``tasks`` on every server at once (one lm-eval process each); results in server order.

    A task is one of the YAMLs found by ``discover_tasks`` or one of lm-eval's own tasks or groups.
    """
    known = discover_tasks(extra_dirs)
    # Tasks without a YAML here are lm-eval's own (gsm8k, mmlu, ...): lm-eval resolves them, from the
    # local HF datasets cache (offline), and names a missing one in its error.
    includes = sorted({str(known[t].parent) for t in tasks if t in known} | {str(tasks_dir())})
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    # The task loaders import this package; make sure the subprocess finds it.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[2]),
                                                    env.get("PYTHONPATH", "")) if p)
    with tempfile.TemporaryDirectory(prefix="pytest-vllm-lmeval-") as tmp:
        launched = []
        for server in servers:
            out = Path(tmp) / f"{server.role}.json"
            log = Path(tmp) / f"{server.role}.log"
            cmd = [python or sys.executable, "-m", "pytest_vllm.accuracy.lmeval_runner", "--url", server.url,
                   "--model", server.model, "--tokenizer", tokenizer_for(server, tokenizer), "--tasks", ",".join(tasks),
                   "--out", str(out), "--seed", str(seed), "--concurrency", str(concurrency),
                   *[arg for d in includes for arg in ("--include", d)]]
            if limit:
                cmd += ["--limit", str(limit)]
            # The server's key, never one inherited from the developer's shell (lm-eval's local-completions reads
            # OPENAI_API_KEY); through the environment, not the command line, which every user of the host sees.
            server_env = {**env, "OPENAI_API_KEY": server.api_key}
            with open(log, "wb") as log_file:
                proc = subprocess.Popen(cmd, env=server_env, stdout=log_file, stderr=subprocess.STDOUT, cwd=tmp)
            launched.append((server, proc, out, log, time.monotonic()))
        runs = []
        for server, proc, out, log, started in launched:
            try:
                code = proc.wait(timeout=max(1.0, timeout - (time.monotonic() - started)))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise LMEvalError(f"lm-eval on the {server.role} server ran past {timeout:.0f}s:\n"
                                  f"{_tail(log)}") from None
            if code != 0 or not out.is_file():
                for _, other, *_ in launched:
                    if other.poll() is None:
                        other.kill()
                        other.wait()
                raise LMEvalError(f"lm-eval on the {server.role} server failed (exit {code}):\n{_tail(log)}")
            data = json.loads(out.read_text())
            runs.append(TaskRun(server.role, data["tasks"], data.get("lm_eval_version", "unknown"),
                                float(data.get("seconds", 0.0))))
        return runs


def _tail(log: Path, lines: int = 40) -> str:
    try:
        return redact.text("\n".join(log.read_text(errors="replace").splitlines()[-lines:]))
    except OSError:
        return "(no output)"
