"""Exit codes of processes pytest did not start: vLLM's engine core processes.

An engine core is the API server's child, so only the API server can ``waitpid`` it, and it reaps
the dead engine within milliseconds: polling from pytest every half second finds the process gone
and its status with it (the pool then reported "an unknown exit code"). A pidfd (Linux 5.3+) turns
readable the moment a process exits, for any process, while the dead one is still a zombie whose
status ``/proc/PID/stat`` shows; ``EngineExits`` waits on those pidfds in one thread and keeps the
status it reads at that moment. Where pidfds are missing, or the reap wins, the code stays unknown.
"""

from __future__ import annotations

import os
import select
import signal
import threading
from pathlib import Path


def describe_exit(code: int | None) -> str:
    if code is None:
        return "an unknown exit code (vLLM's API server reaped it before pytest could read it)"
    if code < 0:
        try:
            return f"exit code {code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"exit code {code}"
    return f"exit code {code}"


def zombie_exit_code(pid: int) -> int | None:
    """The exit status of a process that died but is not reaped yet, from /proc/PID/stat (Linux
    only; None while it runs or once its parent has reaped it). Negative: the killing signal."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    if len(fields) < 50 or fields[0] != "Z":
        return None
    status = int(fields[49])  # field 52 of proc(5): the status as waitpid(2) reports it
    return -(status & 0x7F) if status & 0x7F else (status >> 8) & 0xFF


class EngineExits:
    """Watches a server's engine processes through pidfds and keeps each one's exit code."""

    def __init__(self, pids: list[int]) -> None:
        self._codes: dict[int, int | None] = {}
        self._fds: dict[int, int] = {}
        for pid in pids:
            try:
                self._fds[os.pidfd_open(pid)] = pid
            except (AttributeError, OSError):  # no pidfd support, or the process is gone already
                continue
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._watch, name="pytest-vllm-engine-exits", daemon=True)
        self._thread.start()

    def code(self, pid: int) -> int | None:
        """The exit code read when ``pid`` exited (None: unknown, or it has not exited)."""
        code = self._codes.get(pid)
        return code if code is not None else zombie_exit_code(pid)

    def close(self) -> None:
        try:
            os.write(self._stop_w, b"x")
        except OSError:
            pass
        self._thread.join(timeout=2)
        for fd in (*self._fds, self._stop_r, self._stop_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()

    def _watch(self) -> None:
        poller = select.poll()
        poller.register(self._stop_r, select.POLLIN)
        for fd in self._fds:
            poller.register(fd, select.POLLIN)
        open_fds = set(self._fds)
        while open_fds:
            for fd, _ in poller.poll():
                if fd == self._stop_r:
                    return
                pid = self._fds[fd]
                self._codes[pid] = zombie_exit_code(pid)
                poller.unregister(fd)
                open_fds.discard(fd)
