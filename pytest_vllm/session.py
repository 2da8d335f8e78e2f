"""VLLMSession: the plugin's state for one pytest run.

It resolves the GPU profile and model pair once, turns each test's markers into server specs
(validated against vLLM's parser at collection), plans and reorders tests so each server boots
once, and hands out ready servers. The pytest hooks in ``plugin.py`` only delegate here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from pytest_vllm.config import RunConfig
from pytest_vllm.errors import UsageError
from pytest_vllm.gpu import DeviceInfo, GPUProfile, detect_device, resolve_profile
from pytest_vllm.hostclass import HostFingerprint, emulating_avx2, emulation_server_env, fingerprint
from pytest_vllm.models.pair import RoleModel, resolve_role
from pytest_vllm.paths import cache_dir
from pytest_vllm.server.flags import VLLMArgSchema, flag_name, load_schema, to_argv
from pytest_vllm.server.handle import ServerHandle, connect_remote
from pytest_vllm.server.memory import GIB, MIB, pinned_kv_cache_bytes
from pytest_vllm.server.pool import ServerPool
from pytest_vllm.server.process import LaunchPlan
from pytest_vllm.server.spec import (
    BASE,
    COMPRESSED,
    MarkerFlags,
    ServerSpec,
    merge_flags,
)

if TYPE_CHECKING:
    from pytest_vllm.bench import BenchState
    from pytest_vllm.report.writer import Section

SERVER_ENV = {
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "PYTHONUNBUFFERED": "1",
    # FlashInfer is optional in vLLM wheels; its sampler probe fails without it.
    "VLLM_USE_FLASHINFER_SAMPLER": "0",
}


@dataclass
class ItemNeeds:
    """The servers one test needs: by role, with the markers that shape them."""

    roles: tuple[str, ...]
    markers: tuple[MarkerFlags, ...]
    specs: tuple[ServerSpec, ...] = ()
    family: str = ""
    skip_reason: str | None = None


@dataclass
class VLLMSession:
    config: RunConfig
    say: Callable[[str], None] = print
    needs: dict[str, ItemNeeds] = field(default_factory=dict)
    _remote: dict[str, ServerHandle] = field(default_factory=dict)
    # Report sections of other subsystems (accuracy, conformance): each provider returns a Section
    # (or None when it has nothing to say) at the end of the session.
    section_providers: list[Callable[[], Section | None]] = field(default_factory=list)

    # -- resolved once -----------------------------------------------------------------------
    @cached_property
    def device(self) -> DeviceInfo:
        return detect_device()

    @cached_property
    def profile(self) -> GPUProfile:
        return resolve_profile(self.config.gpu, self.device, force=self.config.gpu_force)

    @cached_property
    def schema(self) -> VLLMArgSchema:
        return load_schema(self.config.python, cache_dir())

    @cached_property
    def pool(self) -> ServerPool:
        return ServerPool(planner=self.launch_plan, log_dir=self.config.log_dir,
                          startup_timeout=self.config.startup_timeout, stop_grace=self.config.stop_timeout,
                          boot_order=self.profile.boot_order, say=self.say)

    def role_model(self, role: str) -> RoleModel:
        cache = self.__dict__.setdefault("_role_models", {})
        if role not in cache:
            cache[role] = resolve_role(role, self.config.base_model, self.config.compressed_model, self.profile)
        return cache[role]

    @property
    def remote(self) -> bool:
        return self.config.urls.any

    # -- specs -------------------------------------------------------------------------------
    def spec_for(self, role: str, markers: Sequence[MarkerFlags], model: str | None = None) -> ServerSpec:
        """The server spec for ``role`` under these markers (farthest first), flags validated."""
        layers: list[dict[str, Any]] = [dict(self.profile.server_defaults)]
        if model is None:
            role_model = self.role_model(role)
            model = role_model.model
            layers.append(role_model.flags)
        if self.profile.pair_gpu_memory_utilization:
            # Two servers may share the GPU at any time (the pair, or a test's own server beside a
            # shared one), so every server takes its share, not vLLM's default 0.9.
            layers.append({"gpu_memory_utilization": self.profile.pair_gpu_memory_utilization})
        flags, env = merge_flags(role, layers, markers)
        spec = ServerSpec.create(role, model, flags, {**self.profile.server_env, **env})
        to_argv(spec.flag_dict, self.schema)  # raises UsageError naming every bad flag
        return spec

    def launch_plan(self, spec: ServerSpec, port: int, slot: int) -> LaunchPlan:
        flags = spec.flag_dict
        flags.setdefault("served_model_name", spec.served_model_name)
        env = {**SERVER_ENV, **spec.env_dict}
        beside_others, note = not self.profile.is_gpu, ""
        if self.profile.is_gpu and self.profile.pair_gpu_memory_utilization:
            flags, beside_others, note = self._fix_kv_cache(spec, flags)
        argv = [self.config.python, "-m", "vllm.entrypoints.openai.api_server", "--model", spec.model,
                "--host", "127.0.0.1", "--port", str(port), *to_argv(flags, self.schema)]
        if not self.profile.is_gpu:
            env.update(emulation_server_env())
        if not self.profile.is_gpu and "VLLM_CPU_OMP_THREADS_BIND" not in env:
            # vLLM binds every CPU server's compute threads to the same core by default; two
            # servers booting or serving side by side would then share one core.
            cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
            binding = cpu_binding(cores, slot, slots=self.pool.max_resident)
            if binding:
                env["VLLM_CPU_OMP_THREADS_BIND"] = binding
        if Path(spec.model).expanduser().exists():
            env.setdefault("HF_HUB_OFFLINE", "1")  # a local checkpoint needs no hub; fail fast without one
        return LaunchPlan(argv=argv, env=env, boots_beside_others=beside_others, note=note)

    def _fix_kv_cache(self, spec: ServerSpec, flags: dict[str, Any]) -> tuple[dict[str, Any], bool, str]:
        """Flags with the KV cache size fixed from the server's memory share (server/memory.py),
        whether the server may then boot beside others, and what to say about it.

        A launch detail like the port, not part of the spec: the spec (and its baselines) keep the
        memory share, and the KV cache of the suites' servers is far larger than their load needs.
        """
        if flags.get("kv_cache_memory_bytes") is not None:
            return flags, True, ""  # fixed by a marker already
        if flag_name("kv_cache_memory_bytes") not in self.schema.options:
            return flags, False, ""  # a vLLM without the flag profiles, and boots alone
        kv_bytes = pinned_kv_cache_bytes(spec.model, flags, self.device.memory_mib * MIB)
        if kv_bytes is None:
            return flags, False, ""
        return ({**flags, "kv_cache_memory_bytes": kv_bytes}, True,
                f"KV cache fixed at {kv_bytes / GIB:.1f} GiB of its share, so it can boot beside others")

    # -- planning ------------------------------------------------------------------------------
    def plan(self, items: Sequence[tuple[str, tuple[str, ...], list[MarkerFlags]]]) -> None:
        """Resolve every test's specs (usage errors for all tests at once) and plan the pool.

        ``items``: (node id, roles needed, markers farthest first) per test.
        """
        problems: list[str] = []
        for nodeid, roles, markers in items:
            if not roles:
                continue
            need = ItemNeeds(roles=roles, markers=tuple(markers))
            need.family = json.dumps([sorted(m.flags.items(), key=str) for m in markers], default=str)
            if self.remote:
                need.skip_reason = self._remote_skip_reason(roles, markers)
            else:
                try:
                    need.specs = tuple(self.spec_for(role, markers) for role in roles)
                except UsageError as exc:
                    problems.append(f"{nodeid}: {exc}")
            self.needs[nodeid] = need
        if problems:
            raise UsageError("\n".join(problems))
        if not self.remote:
            families = {spec: need.family for need in self.needs.values() for spec in need.specs}
            self.pool.plan({nodeid: need.specs for nodeid, need in self.needs.items()}, families)

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
            group = "" if need is None or need.skip_reason else need.family
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
        spec = need.specs[need.roles.index(role)]
        return self._serve(spec, nodeid)

    def handle_for_spec(self, spec: ServerSpec, nodeid: str) -> ServerHandle:
        if self.remote:
            raise UsageError("vllm_server_factory boots servers; it cannot run with --vllm-url")
        return self._serve(spec, nodeid)

    def _serve(self, spec: ServerSpec, nodeid: str) -> ServerHandle:
        server = self.pool.get(spec, nodeid)
        return ServerHandle(role=spec.role, url=server.url, model=spec.served_model_name, spec=spec,
                            log_path=server.log_path)

    def _remote_handle(self, role: str) -> ServerHandle:
        if role not in self._remote:
            url = self.config.urls.for_role(role)
            if not url:
                raise UsageError(f"no {role} server: pass --vllm-url {role}=URL")
            self._remote[role] = connect_remote(role, url, self.config.api_key)
        return self._remote[role]

    def finished(self, nodeid: str) -> None:
        if not self.remote and "pool" in self.__dict__:
            self.pool.finished(nodeid)

    def shutdown(self) -> None:
        if "pool" in self.__dict__:
            self.pool.stop_all()

    # -- performance and reports ------------------------------------------------------------
    @cached_property
    def host(self) -> HostFingerprint:
        return fingerprint(self.device)

    @cached_property
    def host_class(self) -> str:
        """Where this host's performance baselines are filed (``--vllm-host-class`` overrides)."""
        return self.config.host_class or self.host.host_class(self.profile)

    @cached_property
    def bench_state(self) -> BenchState:
        from pytest_vllm import baselines
        from pytest_vllm.bench import BenchState, settings_for

        if emulating_avx2() and (self.config.update_baselines or self.config.add_baselines):
            raise UsageError("PYTEST_VLLM_EMULATE_AVX2 is set: baselines are never recorded under emulation "
                             "(it sizes runs; a real avx2-only host records that class)")
        device = self.device
        environment = baselines.environment_record(self.profile.name, device.name, device.driver, self.vllm_version,
                                                   self.config.rootdir, self.host_class, self.host.to_dict())
        return BenchState(settings_for(self.config, self.profile, self.host_class, environment))

    @cached_property
    def vllm_version(self) -> str:
        if not self.remote:
            return self.schema.vllm_version
        try:
            url = self.config.urls.base or self.config.urls.compressed
            with httpx.Client(timeout=10) as http:
                return str(http.get(f"{url}/version").json()["version"])
        except (httpx.HTTPError, ValueError, KeyError):
            return "unknown"

    def sections(self) -> list[Section]:
        """Report sections of whatever ran in this session."""
        from pytest_vllm.report.writer import Section

        sections = []
        if "bench_state" in self.__dict__ and self.bench_state.measurements:
            from pytest_vllm.report import perf, plots

            state = self.bench_state
            try:
                images = plots.all_plots(state)
            except Exception as exc:  # noqa: BLE001 - a plot must never hide the verdicts
                self.say(f"plots skipped: {type(exc).__name__}: {exc}")
                images = {}
            sections.append(Section("performance", perf.tables(state), perf.to_json(state), images))
        for provider in self.section_providers:
            section = provider()
            if section is not None:
                sections.append(section)
        return sections

    def finish_reports(self, exitstatus: int) -> tuple[list[str], list[Path]]:
        """Terminal lines and report files for the end of the session."""
        from pytest_vllm.report.writer import terminal_lines, write_reports

        sections = self.sections()
        if not sections:
            return [], []
        info = {"verdict": "PASS" if exitstatus == 0 else "FAIL", "gpu": self.profile.name,
                "device": self.device.name, "vllm_version": self.vllm_version, "exit_status": int(exitstatus)}
        written = write_reports(self.config.report_dir, sections, info, say=self.say)
        return terminal_lines(sections), written

    # -- reporting ----------------------------------------------------------------------------
    def plan_lines(self) -> list[str]:
        """What will boot, for the terminal after collection (also with --collect-only)."""
        uses: dict[ServerSpec, int] = {}
        for need in self.needs.values():
            for spec in need.specs:
                uses[spec] = uses.get(spec, 0) + 1
        skipped = sum(1 for need in self.needs.values() if need.skip_reason)
        lines = [f"vllm: {len(uses)} server configuration(s) planned"
                 + (f", {skipped} test(s) skipped (no matching --vllm-url server)" if skipped else "")]
        lines += [f"vllm:   {spec.describe()} [{spec.key}], {n} test(s)" for spec, n in uses.items()]
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
        if self.remote:
            lines.append(f"vllm: remote servers: base={self.config.urls.base} "
                         f"compressed={self.config.urls.compressed}")
        else:
            for role in (BASE, COMPRESSED):
                try:
                    lines.append(f"vllm: {role} model {self.role_model(role).describe()}")
                except UsageError as exc:
                    lines.append(f"vllm: {role} model unavailable: {exc}")
        return lines


def cpu_binding(cores: Sequence[int], slot: int, slots: int) -> str | None:
    """The cores for the CPU server in ``slot``: an equal share each, one core per share left for
    the API server process when a share has more than two (as vLLM's own auto binding does)."""
    if len(cores) < 2:
        return None
    share = max(1, len(cores) // slots)
    mine = list(cores[(slot % slots) * share:(slot % slots + 1) * share]) or [cores[slot % len(cores)]]
    if len(mine) > 2:
        mine = mine[:-1]
    return ",".join(str(c) for c in mine)
