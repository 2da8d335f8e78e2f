"""EngineExits reads the exit code of a process pytest did not start, before its parent reaps it.

Real processes: a parent script starts a grandchild of pytest (as vLLM's API server starts its
engine core), the test SIGKILLs the grandchild, and the parent reaps it a second later, as the
API server does; polling after the reap could not see the status any more.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_vllm.server.exit_status import EngineExits, describe_exit, zombie_exit_code

PARENT = """
import subprocess, sys, time
child = subprocess.Popen(["sleep", "30"])
print(child.pid, flush=True)
sys.stdin.readline()  # the test has killed the child: reap it a little later, like vLLM does
time.sleep(0.5)
child.wait()
print("reaped", flush=True)
time.sleep(30)
"""


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs pidfd_open (Linux 5.3+)")
def test_the_exit_code_of_a_reaped_grandchild_is_kept() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None and parent.stdin is not None
        pid = int(parent.stdout.readline())
        exits = EngineExits([pid])
        assert exits.code(pid) is None  # running
        os.kill(pid, signal.SIGKILL)
        parent.stdin.write("go\n")
        parent.stdin.flush()
        assert parent.stdout.readline().strip() == "reaped"
        assert not Path(f"/proc/{pid}").exists() and zombie_exit_code(pid) is None  # gone, status with it
        deadline = time.monotonic() + 2
        while exits.code(pid) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert exits.code(pid) == -signal.SIGKILL
        assert describe_exit(exits.code(pid)) == "exit code -9 (SIGKILL)"
        exits.close()
    finally:
        parent.kill()
        parent.wait()


def test_an_unknown_exit_code_says_why() -> None:
    assert "reaped" in describe_exit(None)
    assert describe_exit(3) == "exit code 3"


def test_a_refused_connection_stays_an_httpx_error_after_pytester_restores_the_modules() -> None:
    """pytester removes the modules a test imported: httpcore, imported by httpx at its first
    client, then came back with new exception classes, and readiness probes of later boots met a
    raw httpcore.ConnectError (a booting server failed at once). The plugin imports httpcore first."""
    script = """
import sys, httpx
import pytest_vllm.plugin
before = dict(sys.modules)
for _ in range(2):
    try:
        httpx.Client().get("http://127.0.0.1:9/")
    except Exception as exc:
        print(type(exc).__module__)
    for name in [n for n in sys.modules if n not in before]:
        del sys.modules[name]
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["httpx", "httpx"], out.stdout + out.stderr
