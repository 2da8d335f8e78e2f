"""ServerPool: one server per distinct spec, booted on first need, stopped after its last user.

The pool is told at collection which specs each test needs (``plan``). A server boots when the
first test needing it starts, together with the other servers that test needs and with its pair
partner when a later test needs that: in parallel where the profile allows it or every server's
memory is fixed beforehand (``LaunchPlan.boots_beside_others``), else one after the other.
After each test the pool stops every server no remaining test needs, which frees memory for the
next spec. A spec that failed to boot is not retried: later tests get the same error at once.

A ready server that dies (its process or its engine core exits) is seen within DEATH_POLL_S by a
watcher thread, which stops what is left of it (so its port refuses connections at once) and
tells ``on_death`` which tests were using it. The next request for it reboots it once, keeping
the earlier log numbered (``base-KEY.1.log``); a second death is final: the tests that need it
fail at once with that error. No log of this session is overwritten by a later boot.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import httpx

from pytest_vllm.errors import ServerDiedError, ServerStartError
from pytest_vllm.gpu import BootOrder
from pytest_vllm.server.process import LaunchPlan, ServerDeath, VLLMServer, free_port
from pytest_vllm.server.spec import ServerSpec

PROGRESS_EVERY = 30.0  # seconds between "still booting" lines
DEATH_POLL_S = 0.5  # seconds between the watcher's looks at the running servers
MAX_RESIDENT = 2  # servers running at once per pool (the pair; or a role's two replicas)
# Told of each death: how it died, and the node ids of the tests that were using the server.
DeathListener = Callable[[ServerDeath, frozenset[str]], None]


class LaunchPolicy(Protocol):
    """What the pool asks of a launcher (``launcher.Launcher``; a fake one in unit tests)."""

    @property
    def boot_order(self) -> BootOrder: ...

    def plan(self, spec: ServerSpec, port: int, slot: int, slots: int) -> LaunchPlan:
        """What to execute; ``slot`` is the lowest index no running server holds, of ``slots``, so
        concurrent servers can get disjoint CPU cores or GPUs."""
        ...


class ServerPool:
    def __init__(self, *, launcher: LaunchPolicy, log_dir: Path, startup_timeout: float, stop_grace: float,
                 max_resident: int = MAX_RESIDENT, say: Callable[[str], None] = lambda _: None,
                 on_death: DeathListener = lambda *_: None, log_tag: str = "",
                 worker_slots: tuple[int, int] = (0, 1)) -> None:
        """``log_tag`` ends every log name (an xdist worker's ``-gw0``); ``worker_slots``: (this
        process's index, processes) when several pools share the machine, so each pool's servers
        get CPU cores of their own."""
        self._launcher = launcher
        self._log_dir = log_dir
        self._startup_timeout = startup_timeout
        self._stop_grace = stop_grace
        self.max_resident = max_resident
        self._say = say
        self._servers: dict[ServerSpec, VLLMServer] = {}
        self._failed: dict[ServerSpec, ServerStartError | ServerDiedError] = {}
        self._needs: dict[str, tuple[ServerSpec, ...]] = {}
        self._remaining: Counter[ServerSpec] = Counter()
        self._in_use: dict[str, set[ServerSpec]] = {}
        self._families: dict[ServerSpec, str] = {}
        self._lock = threading.RLock()
        self.on_death = on_death
        self._log_tag = log_tag
        self._worker_index, self._workers = worker_slots
        self._dead: dict[ServerSpec, ServerDeath] = {}  # deaths not yet answered by a reboot
        self._first_deaths: dict[ServerSpec, tuple[ServerDeath, Path | None]] = {}  # with the log kept then
        self._booted: set[ServerSpec] = set()
        self._deaths_lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- planning --------------------------------------------------------------------------
    def plan(self, needs: Mapping[str, Sequence[ServerSpec]], families: Mapping[ServerSpec, str]) -> None:
        """Record which specs each test (by node id) will use, and which specs came from the same
        markers (a family: the base and compressed server of one configuration)."""
        self._needs = {nodeid: tuple(specs) for nodeid, specs in needs.items()}
        self._remaining = Counter(spec for specs in self._needs.values() for spec in set(specs))
        self._families = dict(families)

    def add_to_plan(self, needs: Mapping[str, Sequence[ServerSpec]]) -> None:
        """Plan more tests (an xdist worker plans each server group when its first test starts:
        only then does it know the group is its own); tests planned already are kept as they are."""
        with self._lock:
            for nodeid, specs in needs.items():
                if nodeid not in self._needs:
                    self._needs[nodeid] = tuple(specs)
                    self._remaining.update(set(specs))

    # -- use ---------------------------------------------------------------------------------
    def get(self, spec: ServerSpec, nodeid: str) -> VLLMServer:
        """The ready server for ``spec``, booting it (and its companions) if needed."""
        with self._lock:
            self._in_use.setdefault(nodeid, set()).add(spec)
            if spec in self._failed:
                raise self._failed[spec]
            self.check_deaths()
            if spec in self._dead:
                self._answer_death(spec)
            server = self._servers.get(spec)
            if server is not None and server.running and server.ready_after is not None:
                return server
            wanted = [spec, *self._companions(spec, nodeid)]
            self._make_room(keep=set(self._needs.get(nodeid, ())) | {spec}, incoming=len(wanted))
            self._boot([s for s in wanted if s not in self._servers or not self._servers[s].running])
            if spec in self._failed:
                raise self._failed[spec]
            return self._servers[spec]

    def finished(self, nodeid: str) -> None:
        """A test is done: stop the servers no remaining test needs."""
        with self._lock:
            for spec in set(self._needs.get(nodeid, ())):
                self._remaining[spec] -= 1
            for spec in self._in_use.pop(nodeid, set()):
                if self._remaining.get(spec, 0) <= 0:
                    self._stop(spec)
            for spec in list(self._servers):
                if self._remaining.get(spec, 0) <= 0 and not any(spec in used for used in self._in_use.values()):
                    self._stop(spec)

    def expect_again(self, nodeid: str) -> None:
        """The test will run once more (its verdict was deferred): keep its servers until then."""
        with self._lock:
            for spec in set(self._needs.get(nodeid, ())):
                self._remaining[spec] += 1

    def check_deaths(self) -> list[ServerDeath]:
        """Record the ready servers that died since the last look, stop what is left of them, and
        tell ``on_death`` (the watcher calls this every DEATH_POLL_S; the test thread before it
        reports or boots, so nothing waits on the next tick)."""
        found = []
        for spec, server in list(self._servers.items()):
            with self._deaths_lock:
                if spec in self._dead:
                    continue
                death = server.death()
                if death is None:
                    continue
                self._dead[spec] = death
            server.note_in_log(f"died: {death.cause}; pytest stops what is left of it")
            server.terminate()
            users = frozenset(nodeid for nodeid, used in list(self._in_use.items()) if spec in used)
            self.on_death(death, users)
            found.append(death)
        return found

    def deaths_during(self, nodeid: str) -> list[ServerDeath]:
        """Deaths of the servers this test uses since it got them (a death before is answered by
        a reboot or an error when the test asks for the server)."""
        self.check_deaths()
        used = self._in_use.get(nodeid, set())
        return [death for spec, death in list(self._dead.items()) if spec in used]

    def servers_used_by(self, nodeid: str) -> list[VLLMServer]:
        return [self._servers[s] for s in self._in_use.get(nodeid, ()) if s in self._servers]

    def running(self) -> list[VLLMServer]:
        return [s for s in self._servers.values() if s.running]

    def stop_all(self) -> None:
        self._stopping.set()
        with self._lock:
            specs = list(self._servers)
            with ThreadPoolExecutor(max_workers=max(1, len(specs))) as ex:
                list(ex.map(self._stop, specs))

    # -- internals -------------------------------------------------------------------------
    def _companions(self, spec: ServerSpec, nodeid: str) -> list[ServerSpec]:
        """Servers worth booting together with ``spec``: the test's others, and its still-needed
        family members (the other server of the pair)."""
        found = [s for s in self._needs.get(nodeid, ()) if s != spec]
        family = self._families.get(spec)
        if family is not None:
            found += [c for c, uses in self._remaining.items()
                      if uses > 0 and c != spec and self._families.get(c) == family]
        unique: list[ServerSpec] = []
        for s in found:
            if s not in unique and s not in self._failed and s not in self._dead and not (
                    s in self._servers and self._servers[s].running):
                unique.append(s)
        return unique[: max(0, self.max_resident - 1)]

    def _make_room(self, keep: set[ServerSpec], incoming: int) -> None:
        resident = [s for s, srv in self._servers.items() if srv.running]
        excess = len(resident) + incoming - self.max_resident
        for spec in sorted(resident, key=lambda s: self._remaining.get(s, 0)):
            if excess <= 0:
                break
            if spec not in keep:
                self._say(f"stopping {spec.describe()} to make room (it boots again when needed)")
                self._stop(spec)
                excess -= 1

    def _boot(self, specs: Iterable[ServerSpec]) -> None:
        specs = list(specs)
        if not specs:
            return
        servers = []
        for spec in specs:
            port = free_port()
            slot = self._free_slot()
            log_path = self._log_path(spec)
            self._keep_earlier_log(spec)
            self._booted.add(spec)
            # Interleaved, so every worker's first server gets cores of its own before any second one.
            plan = self._launcher.plan(spec, port, slot * self._workers + self._worker_index,
                                       self.max_resident * self._workers)
            server = VLLMServer(spec, plan, port, log_path, stop_grace=self._stop_grace)
            server.slot = slot
            self._servers[spec] = server
            servers.append(server)
        self._start_watcher()
        if boots_in_parallel(self._launcher.boot_order, [s.plan for s in servers]):
            for server in servers:
                self._start(server)
            self._wait(servers)
        else:
            for server in servers:
                self._start(server)
                self._wait([server])

    def _answer_death(self, spec: ServerSpec) -> None:
        """A dead server is asked for: allow its one reboot (saying so), or fail it for good."""
        death = self._dead.pop(spec)
        server = self._servers.pop(spec, None)
        if server is not None:
            server.stop()
        if spec in self._first_deaths:
            first, first_log = self._first_deaths[spec]
            error = ServerDiedError(f"{death.message()}\nnot rebooted again: it died once before in this session "
                                    f"({first.cause}; that log: {first_log}) and a server is rebooted at most once; "
                                    "find the cause in its logs")
            self._failed[spec] = error
            self._say(f"{death.server} died again ({death.cause}); not rebooted: the tests that need it fail")
            raise error
        kept = self._keep_earlier_log(spec)
        self._first_deaths[spec] = (death, kept)
        self._say(f"rebooting {death.server} after it died ({death.cause}); its earlier log: {kept}")

    def _log_path(self, spec: ServerSpec) -> Path:
        return self._log_dir / f"{spec.role}-{spec.key}{self._log_tag}.log"

    def _keep_earlier_log(self, spec: ServerSpec) -> Path | None:
        """Before a boot: number the log of this session's earlier boot of ``spec`` (``.1.log``,
        ``.2.log``...) and return where it went; at the first boot, remove an earlier session's
        numbered logs of it (its main log is overwritten, as always)."""
        log = self._log_path(spec)
        numbered = sorted(log.parent.glob(f"{log.stem}.*{log.suffix}"))
        if spec not in self._booted:
            for stale in numbered:
                stale.unlink(missing_ok=True)
            return None
        if not log.exists():
            return None
        number = 1
        while (kept := log.with_name(f"{log.stem}.{number}{log.suffix}")).exists():
            number += 1
        log.rename(kept)
        return kept

    def _start_watcher(self) -> None:
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="pytest-vllm death watcher", daemon=True)
            self._watcher.start()

    def _watch(self) -> None:
        while not self._stopping.wait(DEATH_POLL_S):
            try:
                self.check_deaths()
            except Exception as exc:  # noqa: BLE001 - a watcher that dies silently would hide every later death
                self._say(f"the server death watcher failed ({type(exc).__name__}: {exc}); it keeps watching")

    def _free_slot(self) -> int:
        taken = {srv.slot for srv in self._servers.values() if srv.slot is not None and srv.running}
        taken |= {srv.slot for srv in self._servers.values() if srv.slot is not None and srv.started_at is None}
        return next(i for i in range(len(taken) + 1) if i not in taken)

    def _start(self, server: VLLMServer) -> None:
        note = f" ({server.plan.note})" if server.plan.note else ""
        self._say(f"booting {server.spec.describe()} on port {server.port}{note}; log: {server.log_path}")
        server.start()

    def _wait(self, servers: list[VLLMServer]) -> None:
        """Wait for all ``servers`` at once; one progress line every PROGRESS_EVERY seconds."""
        waiting = list(servers)
        last_note = time.monotonic()
        with httpx.Client(timeout=5.0) as http:
            while waiting:
                for server in list(waiting):
                    try:
                        ready = server.check_ready(http, self._startup_timeout)
                    except ServerStartError as exc:
                        self._failed[server.spec] = exc  # its message already holds the log tail
                        self._servers.pop(server.spec, None)
                        server.stop()
                        self._say(f"FAILED: {server.spec.describe()} (the tests that need it will error)")
                        waiting.remove(server)
                        continue
                    if ready:
                        self._say(f"ready: {server.spec.role} server in {server.ready_after:.0f}s")
                        waiting.remove(server)
                if waiting and time.monotonic() - last_note >= PROGRESS_EVERY:
                    last_note = time.monotonic()
                    self._say("still booting: " + ", ".join(
                        f"{s.spec.role} ({s.booting_for:.0f}s)" for s in waiting))
                if waiting:
                    time.sleep(0.5)

    def _stop(self, spec: ServerSpec) -> None:
        server = self._servers.pop(spec, None)
        if server is not None and server.running:
            self._say(f"stopping {spec.describe()}")
        if server is not None:
            server.stop()


def boots_in_parallel(order: BootOrder, plans: Sequence[LaunchPlan]) -> bool:
    """Whether servers booting together start at once: where the profile allows it, or where
    every one's memory is fixed beforehand (a KV cache size on a shared GPU)."""
    return order is BootOrder.PARALLEL or all(plan.boots_beside_others for plan in plans)
