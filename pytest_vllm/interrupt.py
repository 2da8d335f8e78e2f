"""Fail the running test as soon as a server it uses dies, whatever the test is blocked in.

The pool's watcher thread sees the death; only the main thread can fail the test. A signal sent
to the main thread interrupts a blocking call (a socket read, a sleep) and its handler raises
pytest's failure there, which passes through ``except Exception`` (pytest-timeout fails a hung
test the same way). The handler is installed once per session, only where the signal is free,
and acts only while a test's call phase runs.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import pytest

from pytest_vllm.server.process import ServerDeath

INTERRUPT_SIGNAL = signal.SIGUSR2


class DeathInterrupt:
    """Turns a server death seen on the watcher thread into a failure of the test using it."""

    def __init__(self) -> None:
        self._running: str | None = None  # node id of the test whose call phase runs
        self._pending: ServerDeath | None = None
        self._installed = False
        self._main = threading.main_thread().ident

    def install(self) -> bool:
        """Take the signal if nobody else handles it (False: deaths then fail the test when it ends)."""
        if threading.current_thread() is not threading.main_thread():
            return False
        if signal.getsignal(INTERRUPT_SIGNAL) not in (signal.SIG_DFL, None):
            return False
        signal.signal(INTERRUPT_SIGNAL, self._handle)
        self._installed = True
        return True

    def uninstall(self) -> None:
        if self._installed:
            self._running = None
            signal.signal(INTERRUPT_SIGNAL, signal.SIG_DFL)
            self._installed = False

    def enter(self, nodeid: str) -> None:
        self._pending = None
        self._running = nodeid

    def leave(self) -> None:
        self._running = None

    def server_died(self, death: ServerDeath, users: frozenset[str]) -> None:
        """Called on the watcher thread: interrupt the main thread if its running test used it."""
        if not self._installed or self._running is None or self._running not in users or self._pending is not None:
            return
        self._pending = death
        if self._main is not None:
            signal.pthread_kill(self._main, INTERRUPT_SIGNAL)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        death = self._pending
        if death is None or self._running is None:
            return  # late: the test is over; its report still names the death
        self._running = None  # once: the failure must not be raised again inside its own cleanup
        pytest.fail(death.message(), pytrace=False)
