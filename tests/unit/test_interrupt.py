"""DeathInterrupt: a server death seen on another thread fails the test blocked in the main thread."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from pytest_vllm.interrupt import INTERRUPT_SIGNAL, DeathInterrupt
from pytest_vllm.server.process import ServerDeath

DEATH = ServerDeath("base server: m", "its engine core process (pid 1) exited with exit code -9 (SIGKILL)", -9,
                    Path("base-k.log"), ("INFO started", "ERROR EngineDeadError: EngineCore encountered an issue"))


@pytest.fixture
def interrupt() -> DeathInterrupt:
    if signal.getsignal(INTERRUPT_SIGNAL) is not signal.SIG_DFL:
        # the plugin under test took it for this session: give it back for the test, then restore it
        previous = signal.signal(INTERRUPT_SIGNAL, signal.SIG_DFL)
    else:
        previous = None
    made = DeathInterrupt()
    assert made.install()
    yield made
    made.uninstall()
    if previous is not None:
        signal.signal(INTERRUPT_SIGNAL, previous)


def test_a_death_interrupts_a_blocking_call_of_the_test_using_the_server(interrupt: DeathInterrupt) -> None:
    interrupt.enter("t::a")
    threading.Timer(0.3, interrupt.server_died, (DEATH, frozenset({"t::a"}))).start()
    started = time.monotonic()
    with pytest.raises(pytest.fail.Exception) as failed:
        try:
            time.sleep(30)  # a blocking call; ``except Exception`` in a client would not swallow the failure
        except Exception:  # noqa: BLE001 - stands for a client that catches everything
            pass
    took = time.monotonic() - started
    interrupt.leave()
    assert took < 2
    assert failed.value.msg.startswith("base server: m died: its engine core process (pid 1) exited with exit code -9")
    assert "vLLM says: ERROR EngineDeadError" in failed.value.msg and "--- last 2 log lines ---" in failed.value.msg


def test_a_death_of_another_tests_server_or_outside_a_test_interrupts_nothing(interrupt: DeathInterrupt) -> None:
    interrupt.enter("t::b")
    interrupt.server_died(DEATH, frozenset({"t::a"}))
    time.sleep(0.2)
    interrupt.leave()
    interrupt.server_died(DEATH, frozenset({"t::b"}))
    time.sleep(0.2)  # a signal would have raised by now


def test_a_signal_someone_else_handles_is_left_alone() -> None:
    previous = signal.signal(INTERRUPT_SIGNAL, lambda *_: None)
    try:
        assert not DeathInterrupt().install()
    finally:
        signal.signal(INTERRUPT_SIGNAL, previous)
