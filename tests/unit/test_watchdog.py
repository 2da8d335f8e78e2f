"""The watchdog between pytest and a server: real process trees, no vLLM needed.

The supervised command here is a small Python program that starts a grandchild and sleeps, the
shape of vLLM's API server with its engine process. What is checked is what the watchdog does to
process trees, which a real server cannot show any faster.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pytest_vllm.server.process import find_error_line

TREE = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print("grandchild", child.pid, flush=True)
time.sleep(600)
"""


def start_watchdog(tmp_path: Path, cmd: list[str], grace: float = 2.0) -> tuple[subprocess.Popen[bytes], int, Path]:
    read_end, write_end = os.pipe()
    log = tmp_path / "server.log"
    proc = subprocess.Popen([sys.executable, "-m", "pytest_vllm.server.watchdog", "--lifeline", str(read_end),
                             "--log", str(log), "--grace", str(grace), "--", *cmd],
                            pass_fds=(read_end,), start_new_session=True)
    os.close(read_end)
    return proc, write_end, log


def wait_for_tree(proc: subprocess.Popen[bytes], size: int) -> list[psutil.Process]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        tree = psutil.Process(proc.pid).children(recursive=True)
        if len(tree) >= size:
            return tree
        time.sleep(0.1)
    raise AssertionError("the supervised tree did not start")


def gone(procs: list[psutil.Process], within: float = 10) -> bool:
    _, alive = psutil.wait_procs(procs, timeout=within)
    return not alive


def test_closing_the_lifeline_stops_the_whole_tree(tmp_path: Path) -> None:
    """What happens when pytest dies, however: its end of the pipe closes."""
    proc, lifeline, log = start_watchdog(tmp_path, [sys.executable, "-c", TREE])
    tree = wait_for_tree(proc, 2)
    os.close(lifeline)
    assert proc.wait(timeout=20) == 0
    assert gone(tree), [p.pid for p in tree if p.is_running()]
    assert "stopping the server" in log.read_text()


def test_sigterm_stops_the_tree_and_sigkills_what_ignores_it(tmp_path: Path) -> None:
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    proc, lifeline, _ = start_watchdog(tmp_path, [sys.executable, "-c", stubborn], grace=1.0)
    tree = wait_for_tree(proc, 1)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)
    assert gone(tree)
    assert time.monotonic() - started < 10
    os.close(lifeline)


def test_orphaned_grandchildren_are_swept_too(tmp_path: Path) -> None:
    """A server that dies first leaves its engine behind; the subreaper watchdog still ends it."""
    orphan_maker = ("import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']);"
                    " import time; time.sleep(0.5)")
    proc, lifeline, _ = start_watchdog(tmp_path, [sys.executable, "-c", orphan_maker])
    tree = wait_for_tree(proc, 2)
    assert proc.wait(timeout=20) == 0  # the server exited on its own
    assert gone(tree), "the grandchild must not outlive its parent's watchdog"
    os.close(lifeline)


@pytest.mark.parametrize("code", [0, 3])
def test_exit_code_of_the_server_is_passed_on(tmp_path: Path, code: int) -> None:
    proc, lifeline, log = start_watchdog(tmp_path, [sys.executable, "-c", f"print('bye'); raise SystemExit({code})"])
    assert proc.wait(timeout=20) == code
    assert "bye" in log.read_text()
    os.close(lifeline)


def test_error_line_is_the_last_stated_error() -> None:
    lines = ["INFO starting", "WARNING ulimit is low, OSError may follow", "Traceback (most recent call last):",
             '  File "x.py", line 1', "ValueError: max_model_len 99999 exceeds the model's 8192", ""]
    assert find_error_line(lines) == "ValueError: max_model_len 99999 exceeds the model's 8192"
    assert find_error_line(["INFO all good"]) is None
