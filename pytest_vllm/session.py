"""VLLMSession: the plugin's state for one pytest run.

It resolves the GPU profile, host class and model pair once, turns each test's markers into
server specs at collection (through ``server.launcher``, which validates them against vLLM's
parser), plans and orders tests so each server boots once, hands out ready servers, and gathers
the report sections of the gates. The pytest hooks in ``plugin.py`` only delegate here; each gate
keeps its own state under its own stash key (``gate_state``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import httpx
import pytest

from pytest_vllm import redact
from pytest_vllm.config import RunConfig
from pytest_vllm.errors import UsageError
from pytest_vllm.gpu import DeviceInfo, GPUProfile, detect_device, resolve_profile
from pytest_vllm.hostclass import HostFingerprint, fingerprint
from pytest_vllm.models.pair import (
    DEFAULT_PAIR,
    PERF_PAIR,
    RoleModel,
    perf_model_choice,
    resolve_perf_role,
    resolve_role,
)
from pytest_vllm.parallel import Worker, file_of
from pytest_vllm.paths import cache_dir
from pytest_vllm.server.flags import VLLMArgSchema, load_schema
from pytest_vllm.server.handle import ServerHandle
from pytest_vllm.server.launcher import Launcher
from pytest_vllm.server.pool import MAX_RESIDENT, DeathListener, ServerPool
from pytest_vllm.server.process import ServerDeath, VLLMServer
from pytest_vllm.server.replicas import connect_remote_replicas, join_replicas
from pytest_vllm.server.spec import BASE, COMPRESSED, MarkerFlags, ServerSpec, marker_key, replica_count
from pytest_vllm.sizing import Sizing, sizing_for

if TYPE_CHECKING:
    from pytest_vllm.report.writer import Section

SESSION_KEY = pytest.StashKey["VLLMSession"]()
# A gate's report section for the end of the session (None when it has nothing to say).
SectionProvider = Callable[[], "Section | None"]
# Sections appear in this order in every report, whatever ran first.
SECTION_ORDER = ("performance", "accuracy", "conformance")
T = TypeVar("T")


@dataclass
class ItemNeeds:
    """The servers one test needs: by role, with the markers that shape them."""

    roles: tuple[str, ...]
    markers: tuple[MarkerFlags, ...]
    specs: tuple[ServerSpec, ...] = ()  # every server: each role's replicas, role after role
    role_specs: dict[str, tuple[ServerSpec, ...]] = field(default_factory=dict)  # a role's replicas, in order
    marker_key: str = ""  # the markers' flags as JSON: tests with equal keys share their servers
    skip_reason: str | None = None
    pair: str = DEFAULT_PAIR  # PERF_PAIR: the test serves the perf pair (marker vllm_perf_pair)

    def specs_of(self, role: str) -> tuple[ServerSpec, ...]:
        """The servers of ``role``: its replicas, or its one server (``specs`` aligned with ``roles``)."""
        return self.role_specs.get(role) or (self.specs[self.roles.index(role)],)


@dataclass
class VLLMSession:
    config: RunConfig
    say: Callable[[str], None] = print
    needs: dict[str, ItemNeeds] = field(default_factory=dict)
    _remote: dict[str, ServerHandle] = field(default_factory=dict)
    _role_models: dict[tuple[str, str], RoleModel] = field(default_factory=dict)
    perf_tests: frozenset[str] = frozenset()  # node ids of the tests marked vllm_perf_pair
    _sections: list[SectionProvider] = field(default_factory=list)
    on_server_death: DeathListener = lambda *_: None  # told on the pool's watcher thread (plugin: DeathInterrupt)
    worker: Worker | None = None  # this process as a pytest-xdist worker (parallel.py)

    def __post_init__(self) -> None:
        redact.register(self.config.api_key)  # masked in everything printed or written from now on

    # -- resolved once -----------------------------------------------------------------------
    @cached_property
    def device(self) -> DeviceInfo:
        return detect_device()

    @cached_property
    def device_profile(self) -> GPUProfile:
        """The GPU profile as gpu.py defines it, before this host's sizing."""
        return resolve_profile(self.config.gpu, self.device, force=self.config.gpu_force)

    @cached_property
    def sizing(self) -> Sizing:
        """Full work sizes, or a slow class's (sizing.py): fewer repetitions and examples."""
        return sizing_for(self.device_profile, self.host.isa_tier, self.remote)

    @cached_property
    def profile(self) -> GPUProfile:
        """The profile this run measures with: the device's, sized for this host (``sizing``)."""
        return self.sizing.apply(self.device_profile)

    @cached_property
    def host(self) -> HostFingerprint:
        return fingerprint(self.device)

    @cached_property
    def host_class(self) -> str:
        """Where this host's performance baselines are filed (``--vllm-host-class`` overrides)."""
        return self.config.host_class or self.host.host_class(self.profile)

    @cached_property
    def schema(self) -> VLLMArgSchema:
        return load_schema(self.config.python, cache_dir())

    @cached_property
    def launcher(self) -> Launcher:
        return Launcher(self.profile, self.device, self.schema, self.config.python, api_key=self.config.api_key,
                        cpu_isa=self.host.cpu_isa)

    @cached_property
    def pool(self) -> ServerPool:
        worker = self.worker
        return ServerPool(launcher=self.launcher, log_dir=self.config.log_dir,
                          startup_timeout=self.config.startup_timeout, stop_grace=self.config.stop_timeout,
                          say=self.say, on_death=lambda death, users: self.on_server_death(death, users),
                          log_tag=f"-{worker.id}" if worker else "",
                          worker_slots=(worker.index, worker.count) if worker else (0, 1))

    @property
    def pool_started(self) -> bool:
        """Whether any server was planned or booted (the pool exists only once it is needed)."""
        return "pool" in self.__dict__

    @cached_property
    def vllm_version(self) -> str:
        if not self.remote:
            return self.schema.vllm_version
        try:
            url = self.config.urls.base or self.config.urls.compressed
            with httpx.Client(timeout=10, headers={"Authorization": f"Bearer {self.config.api_key}"}) as http:
                return str(http.get(f"{url}/version").json()["version"])
        except (httpx.HTTPError, ValueError, KeyError):
            return "unknown"

    def role_model(self, role: str, pair: str = DEFAULT_PAIR) -> RoleModel:
        """The model ``role`` serves in ``pair``: the run's (DEFAULT_PAIR) or the perf suite's (PERF_PAIR)."""
        if (role, pair) not in self._role_models:
            config = self.config
            if pair == PERF_PAIR:
                found = resolve_perf_role(role, config.perf_model, config.base_model, config.compressed_model,
                                          self.profile)
            else:
                found = resolve_role(role, config.base_model, config.compressed_model, self.profile)
            self._role_models[(role, pair)] = found
        return self._role_models[(role, pair)]

    @property
    def perf_model(self) -> str:
        """What the perf pair is on this run: a shape's name, "user" or "embedded"."""
        return perf_model_choice(self.config.perf_model, self.config.base_model, self.profile)

    def pair_of(self, nodeid: str) -> str:
        """The pair a test serves: PERF_PAIR for the tests marked vllm_perf_pair."""
        return PERF_PAIR if nodeid in self.perf_tests else DEFAULT_PAIR

    @property
    def remote(self) -> bool:
        return self.config.urls.any

    # -- specs and planning ---------------------------------------------------------------------
    def spec_for(self, role: str, markers: Sequence[MarkerFlags], model: str | None = None,
                 pair: str = DEFAULT_PAIR) -> ServerSpec:
        """The server spec for ``role`` under these markers (farthest first), flags validated."""
        if model is not None:
            return self.launcher.spec(role, model, markers)
        role_model = self.role_model(role, pair)
        return self.launcher.spec(role, role_model.model, markers, role_flags=role_model.flags)

    def spec_like_base(self, role: str, markers: Sequence[MarkerFlags], pair: str = DEFAULT_PAIR) -> ServerSpec:
        """A server of the base model of ``pair`` with the base role's flags (a shape's load_format, the
        GPU dtype) under another role name: vllm_server_factory's default model."""
        base = self.role_model(BASE, pair)
        return self.launcher.spec(role, base.model, markers, role_flags=base.flags)

    def plan(self, items: Sequence[tuple[str, tuple[str, ...], list[MarkerFlags]]], boots_own: bool = False,
             perf_tests: frozenset[str] = frozenset()) -> None:
        """Resolve every test's specs (usage errors for all tests at once) and plan the pool.

        ``items``: (node id, roles needed, markers farthest first) per test; ``boots_own``: some
        test boots servers of its own (vllm_server_factory); ``perf_tests``: the tests that serve
        the perf pair. Either way the vLLM interpreter is checked first, once, so a bad
        --vllm-python is one error, not one per test; a run that needs no server never starts it.
        """
        self.perf_tests = perf_tests
        if not self.remote and (boots_own or any(roles for _, roles, _ in items)):
            self.schema  # noqa: B018 - runs --vllm-python once; a UsageError names the interpreter
        problems: list[str] = []
        for nodeid, roles, markers in items:
            if not roles:
                continue
            need = ItemNeeds(roles=roles, markers=tuple(markers), pair=self.pair_of(nodeid))
            need.marker_key = marker_key(markers) + self._group_suffix(need.pair)
            if self.remote:
                need.skip_reason = self._remote_skip_reason(roles, markers)
            else:
                try:
                    need.role_specs = self._booted_replicas(roles, markers, need.pair)
                    need.specs = tuple(spec for role in roles for spec in need.role_specs[role])
                except UsageError as exc:
                    problems.append(f"{nodeid}: {exc}")
            self.needs[nodeid] = need
        if problems:
            raise UsageError("\n".join(problems))
        if self.remote:
            self._check_remote_replicas()
        if not self.remote and self.needs:  # no pool (and no vLLM interpreter run) for a run without servers
            families = {spec: need.marker_key for need in self.needs.values() for spec in need.specs}
            # An xdist worker runs only the files it is sent, each whole (parallel/): it plans a
            # file's server group when the group's first test asks for a server, so a server is
            # kept for the worker's own tests only.
            planned = {} if self.worker else {nodeid: need.specs for nodeid, need in self.needs.items()}
            self.pool.plan(planned, families)

    def _group_suffix(self, pair: str) -> str:
        """What sets a pair's tests apart in the order (``order``) and the pool's families: the perf
        pair's tests form groups of their own where its servers are other models (a GPU profile's
        8B shape); where they are the run's pair (the CPU profile: the embedded pair) they join the
        run's groups, so the pair boots once rather than again after the servers of other groups
        (on the avx2-only host a reboot of the pair cost 2 minutes)."""
        if pair == DEFAULT_PAIR:
            return ""
        def served(role: str, of: str) -> tuple[object, object]:
            found = self.role_model(role, of)
            return found.model, found.flags

        try:
            same = all(served(role, pair) == served(role, DEFAULT_PAIR) for role in (BASE, COMPRESSED))
        except UsageError:  # a broken perf-pair choice: reported where its servers are specified
            same = False
        return "" if same else f"|{pair}"

    def _booted_replicas(self, roles: Sequence[str], markers: Sequence[MarkerFlags], pair: str
                         ) -> dict[str, tuple[ServerSpec, ...]]:
        """Each role's servers: one spec, or one per replica under vllm_server(replicas=N). More
        servers than the pool runs at once would evict each other mid-test: a UsageError."""
        found = {role: self.spec_for(role, markers, pair=pair).as_replicas(replica_count(role, markers))
                 for role in roles}
        total = sum(len(specs) for specs in found.values())
        if total > MAX_RESIDENT and any(len(specs) > 1 for specs in found.values()):
            counts = ", ".join(f"{role} {len(specs)}" for role, specs in found.items())
            raise UsageError(f"vllm_server(replicas=...) asks for {total} servers at once ({counts}); at most "
                             f"{MAX_RESIDENT} run at once: give replicas to one role only (vllm_server(replicas=2, "
                             "role='base')) or use one role's fixture (base_server)")
        return found

    def replicas_for(self, role: str, markers: Sequence[MarkerFlags]) -> int:
        """How many replicas ``role`` has for a test with ``markers``: --vllm-url's list, else the markers'."""
        if self.remote:
            return len(self.config.urls.replicas_of(role))
        return replica_count(role, markers)

    def _check_remote_replicas(self) -> None:
        """At session start, every replica of each --vllm-url role with several is asked for its model:
        a replica serving another model than its siblings is a UsageError before any test runs."""
        wanted = {role for need in self.needs.values() if not need.skip_reason for role in need.roles}
        for role in sorted(wanted):
            if len(self.config.urls.replicas_of(role)) > 1:
                self._remote_handle(role)

    def _remote_skip_reason(self, roles: Sequence[str], markers: Sequence[MarkerFlags]) -> str | None:
        for role in roles:
            if not self.config.urls.for_role(role):
                return f"needs the {role} server; --vllm-url gave none (add --vllm-url {role}=URL)"
            if any(m.applies_to(role) and (m.flags or m.env) for m in markers):
                return (f"needs a {role} server booted with its vllm_server flags; a --vllm-url server "
                        "runs with its own flags")
        return None

    def order(self, nodeids: Sequence[str], boots_own: frozenset[str] = frozenset()) -> list[str]:
        """Group tests that use the same server configuration, keeping first-seen order otherwise.

        Within a group, tests that boot servers of their own (``boots_own``: they use
        vllm_server_factory) run last, so their servers do not evict the group's shared ones.
        """
        if self.config.keep_order:
            return list(nodeids)
        first_seen: dict[str, int] = {}
        keys = []
        for index, nodeid in enumerate(nodeids):
            need = self.needs.get(nodeid)
            group = "" if need is None or need.skip_reason else need.marker_key
            first_seen.setdefault(group, index)
            keys.append((first_seen[group], nodeid in boots_own, index, nodeid))
        return [key[-1] for key in sorted(keys)]

    # -- serving ------------------------------------------------------------------------------
    def handle(self, role: str, nodeid: str) -> ServerHandle:
        """A ready server for ``role`` as planned for this test."""
        need = self.needs.get(nodeid)
        if self.remote:
            return self._remote_handle(role)
        if need is None or role not in need.roles:
            raise UsageError(f"{nodeid} asked for the {role} server outside the plan")
        if self.worker:  # this test's group is this worker's: loadfile sends whole files
            self.pool.add_to_plan({other: n.specs for other, n in self.needs.items() if n.marker_key == need.marker_key
                                   and file_of(other) == file_of(nodeid) and not n.skip_reason})
        return join_replicas([self._serve(spec, nodeid) for spec in need.specs_of(role)])

    def handle_for_spec(self, spec: ServerSpec, nodeid: str) -> ServerHandle:
        if self.remote:
            raise UsageError("vllm_server_factory boots servers; it cannot run with --vllm-url")
        return self._serve(spec, nodeid)

    def _serve(self, spec: ServerSpec, nodeid: str) -> ServerHandle:
        server = self.pool.get(spec, nodeid)
        return ServerHandle(role=spec.role, url=server.url, model=spec.served_model_name, spec=spec,
                            log_path=server.log_path, api_key=self.config.api_key)

    def _remote_handle(self, role: str) -> ServerHandle:
        if role not in self._remote:
            urls = self.config.urls.replicas_of(role)
            if not urls:
                raise UsageError(f"no {role} server: pass --vllm-url {role}=URL")
            named = {"base": self.config.base_model, "compressed": self.config.compressed_model}.get(role)
            self._remote[role] = connect_remote_replicas(role, urls, self.config.api_key, named)
        return self._remote[role]

    def servers_used_by(self, nodeid: str) -> list[VLLMServer]:
        """The booted servers a test used (their logs join its failure report)."""
        return [] if self.remote or not self.pool_started else list(self.pool.servers_used_by(nodeid))

    def deaths_during(self, nodeid: str) -> list[ServerDeath]:
        """Booted servers this test uses that died while it ran (its report must name them)."""
        return [] if self.remote or not self.pool_started else self.pool.deaths_during(nodeid)

    def finished(self, nodeid: str) -> None:
        if not self.remote and self.pool_started:
            self.pool.finished(nodeid)

    def expect_again(self, nodeid: str) -> None:
        """The test runs once more at the end of the session (a deferred confirmation)."""
        if not self.remote and self.pool_started:
            self.pool.expect_again(nodeid)

    def shutdown(self) -> None:
        if self.pool_started:
            self.pool.stop_all()

    # -- reports ------------------------------------------------------------------------------
    def add_section(self, provider: SectionProvider) -> None:
        """A gate's report section, asked for at the end of the session."""
        self._sections.append(provider)

    def sections(self) -> list[Section]:
        """Report sections of whatever ran in this session, in SECTION_ORDER."""
        found = [section for section in (provider() for provider in self._sections) if section is not None]
        rank = {name: i for i, name in enumerate(SECTION_ORDER)}
        return sorted(found, key=lambda s: rank.get(s.name, len(rank)))

    def finish_reports(self, exitstatus: int) -> tuple[list[str], list[Path]]:
        """Terminal lines and report files for the end of the session."""
        from pytest_vllm.report.writer import terminal_lines, write_reports

        sections = self.sections()
        if not sections:
            return [], []
        failed = exitstatus != 0 or any(section.failed for section in sections)
        info = {"verdict": "FAIL" if failed else "PASS", "gpu": self.profile.name,
                "host_class": self.host_class, "device": self.device.name, "vllm_version": self.vllm_version,
                "exit_status": int(exitstatus)}
        report_dir = self.config.report_dir / self.worker.id if self.worker else self.config.report_dir
        if self.worker:
            info["xdist_worker"] = self.worker.id
        written = write_reports(report_dir, sections, info, say=self.say)
        return terminal_lines(sections), written

    def plan_lines(self) -> list[str]:
        """What will boot, for the terminal after collection (also with --collect-only)."""
        uses: dict[ServerSpec, int] = {}
        for need in self.needs.values():
            for spec in need.specs:
                uses[spec] = uses.get(spec, 0) + 1
        skipped = sum(1 for need in self.needs.values() if need.skip_reason)
        perf = [need for need in self.needs.values() if need.pair == PERF_PAIR and not need.skip_reason]
        lines = [f"vllm: {len(uses)} server configuration(s) planned"
                 + (f", {skipped} test(s) skipped (no matching --vllm-url server)" if skipped else "")]
        lines += [f"vllm:   {spec.describe()} [{spec.key}], {n} test(s)" for spec, n in uses.items()]
        if perf and not self.remote:
            lines.append(f"vllm: {len(perf)} perf test(s) serve the perf pair: --vllm-perf-model "
                         f"{self.config.perf_model} -> {self.perf_model}")
        return lines if uses or skipped else []

    def header_lines(self) -> list[str]:
        lines = []
        try:
            profile = self.profile.name
        except UsageError as exc:
            return [f"vllm: {exc}"]
        device = self.device
        what = f"{device.count}x {device.name} (driver {device.driver})" if device.is_gpu else f"CPU {device.name}"
        lines.append(f"vllm: profile {profile}, device {what}, host class {self.host_class}")
        sized = self.sizing.describe(self.profile)
        if sized:
            lines.append(sized)
        if self.remote:
            shown = {role: ",".join(self.config.urls.replicas_of(role)) or None for role in (BASE, COMPRESSED)}
            lines.append(f"vllm: remote servers: base={shown[BASE]} compressed={shown[COMPRESSED]}")
        else:
            for role in (BASE, COMPRESSED):
                try:
                    lines.append(f"vllm: {role} model {self.role_model(role).describe()}")
                except UsageError as exc:
                    lines.append(f"vllm: {role} model unavailable: {exc}")
        return lines


def gate_state(config: pytest.Config, key: pytest.StashKey[T],
               make: Callable[[pytest.Config, VLLMSession], tuple[T, SectionProvider]]) -> T:
    """A gate's state for this run under its own ``key``, made on first use by ``make``, which
    also gives the gate's report section: every gate attaches to the session this one way."""
    if key not in config.stash:
        session = config.stash[SESSION_KEY]
        state, provider = make(config, session)
        session.add_section(provider)
        config.stash[key] = state
    return config.stash[key]
