"""ServerSpec: everything that makes one vLLM server differ from another.

Tests whose resolved spec is equal share one server process. A spec is resolved from, in
increasing priority: the GPU profile's defaults, the role's defaults (the compressed role's
online quantization, the GPU memory split), and ``vllm_server`` markers from module to
function (the closest marker wins per flag).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_vllm import redact
from pytest_vllm.errors import UsageError

BASE = "base"
COMPRESSED = "compressed"
PAIR_ROLES = (BASE, COMPRESSED)

MARKER = "vllm_server"
MARKER_HELP = (
    "vllm_server(role=None, env=None, replicas=1, **flags): boot the server(s) this test uses with these vLLM "
    "flags, named as in `vllm serve --help` with underscores (max_num_seqs=8, "
    "enable_prefix_caching=True). role='base' or 'compressed' limits the flags to that server; env "
    "adds environment variables; replicas=N boots the role as N servers (each on its own CPU cores, or its own "
    "GPU where there are several) with the load spread over them. Applies on functions, classes and modules "
    "(pytestmark); the closest marker wins per flag. Flags are checked against vLLM's parser before any boot."
)
# Marker keywords that are not vLLM flags.
_MARKER_KEYWORDS = frozenset({"role", "env", "replicas"})


@dataclass(frozen=True)
class ServerSpec:
    """A hashable description of one server; equal specs share one process."""

    role: str
    model: str
    flags: tuple[tuple[str, str], ...] = ()  # (name, JSON-encoded value), sorted
    env: tuple[tuple[str, str], ...] = ()
    replica: int | None = None  # 0-based index within a role of several replicas; None: a lone server

    @classmethod
    def create(cls, role: str, model: str, flags: Mapping[str, Any] | None = None,
               env: Mapping[str, str] | None = None) -> ServerSpec:
        redact.register_secrets_of(flags or {})  # an hf_token flag or HF_TOKEN variable is masked everywhere
        redact.register_secrets_of(env or {})
        encoded = tuple(sorted((_normal_key(k), json.dumps(v, sort_keys=True)) for k, v in (flags or {}).items()))
        return cls(role=role, model=str(model), flags=encoded,
                   env=tuple(sorted((str(k), str(v)) for k, v in (env or {}).items())))

    @property
    def flag_dict(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.flags}

    @property
    def recorded_flags(self) -> dict[str, Any]:
        """The flags as results and baselines record them: secret ones masked."""
        return redact.mapping(self.flag_dict)

    @property
    def env_dict(self) -> dict[str, str]:
        return dict(self.env)

    @property
    def key(self) -> str:
        """A short stable id: the same spec gets the same key in every run (baselines use it)."""
        blob = json.dumps([self.role, self.model, self.flags, self.env, *self._replica_part])
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def _replica_part(self) -> list[int]:
        """What a replica adds to the keys: nothing for a lone server, so its keys stay as they were."""
        return [] if self.replica is None else [self.replica]

    @property
    def portable_key(self) -> str:
        """Like ``key`` but equal on every machine: the served model name stands for the model path
        (baselines compare runs across checkouts and caches)."""
        flags = [f for f in self.flags if f[0] != "served_model_name"]
        blob = json.dumps([self.role, self.served_model_name, flags, self.env, *self._replica_part])
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def served_model_name(self) -> str:
        return str(self.flag_dict.get("served_model_name") or served_name_for(self.model))

    def describe(self) -> str:
        """The server in words, secret flags masked (it is printed and written)."""
        shown = redact.mapping({k: json.loads(v) for k, v in self.flags if k != "served_model_name"})
        flags = ", ".join(f"{k}={v!r}" for k, v in shown.items())
        which = "" if self.replica is None else f" replica {self.replica + 1}"
        return f"{self.role} server{which}: {self.model}" + (f" ({flags})" if flags else "")

    def with_flags(self, **flags: Any) -> ServerSpec:
        return ServerSpec.create(self.role, self.model, {**self.flag_dict, **flags}, self.env_dict)

    def as_replicas(self, count: int) -> tuple[ServerSpec, ...]:
        """This server as ``count`` replicas (distinct specs, so the pool boots each); itself for one."""
        if count == 1:
            return (self,)
        return tuple(dataclasses.replace(self, replica=index) for index in range(count))


def _normal_key(key: str) -> str:
    return key.lstrip("-").replace("-", "_")


def served_name_for(model: str) -> str:
    """A readable served model name: a local path's folder name, or the hub id as vLLM would use."""
    path = Path(model)
    if model.startswith(("/", ".", "~")) or path.exists():
        return path.expanduser().name or model
    return model


@dataclass(frozen=True)
class MarkerFlags:
    """The keyword arguments of one vllm_server marker, split into flags, env and role scope."""

    flags: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    roles: frozenset[str] | None = None  # None: every role
    replicas: int | None = None  # vllm_server(replicas=N); None: not said by this marker

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any], where: str) -> MarkerFlags:
        """Split and check a marker's keywords; every problem of the marker in one UsageError."""
        problems: list[str] = []
        roles = _marker_roles(kwargs.get("role"), problems)
        env = kwargs.get("env") or {}
        if not isinstance(env, Mapping):
            problems.append("vllm_server(env=...) must be a dict of environment variables")
            env = {}
        elif bad := [f"{k}={v!r}" for k, v in env.items() if not isinstance(v, (str, int, float))]:
            problems.append(f"vllm_server(env=...): {', '.join(bad)}: give each variable a string or number")
        replicas = kwargs.get("replicas")
        if replicas is not None and (isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1):
            problems.append(f"vllm_server(replicas={replicas!r}): give a whole number of replicas, at least 1 "
                            "(replicas=2 boots the role as two servers and spreads the load over them)")
            replicas = None
        flags = {k: v for k, v in kwargs.items() if k not in _MARKER_KEYWORDS}
        for key, value in flags.items():
            if not _is_flag_value(value):
                problems.append(f"vllm_server({key}={value!r}): a flag value is a str, int, float, bool or None, or "
                                "a list or dict of those (JSON flags such as speculative_config take a dict)")
        if problems:
            raise UsageError(f"{where}: " + f"\n{where}: ".join(problems))
        return cls(flags=flags, env={str(k): str(v) for k, v in env.items()}, roles=roles, replicas=replicas)

    def applies_to(self, role: str) -> bool:
        return self.roles is None or role in self.roles


def _marker_roles(role: object, problems: list[str]) -> frozenset[str] | None:
    """A marker's ``role=``: None (every server), a role or a list of them, each base or compressed.

    Markers shape only the planned base and compressed servers (vllm_server_factory takes its own
    flags), so any other role would drop the marker's flags without a word."""
    if role is None:
        return None
    given = [role] if isinstance(role, str) else list(role) if isinstance(role, (list, tuple, set, frozenset)) else None
    if given is None or not given or any(r not in PAIR_ROLES for r in given):
        problems.append(f"vllm_server(role={role!r}): role is 'base' or 'compressed' (or a list of them), or left "
                        "out for both; a server of another role takes its flags from "
                        "vllm_server_factory(role=..., **flags)")
        return None
    return frozenset(given)


_SCALARS = (str, int, float, bool, type(None))


def _is_flag_value(value: object) -> bool:
    """What a vLLM flag can take: a scalar, or a list or dict of them (nested), as JSON renders it."""
    if isinstance(value, _SCALARS):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_flag_value(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _is_flag_value(v) for k, v in value.items())
    return False


def marker_key(markers: Sequence[MarkerFlags]) -> str:
    """The markers' flags as JSON: tests with equal keys share their servers (and run together)."""
    return json.dumps([sorted(m.flags.items(), key=str) + ([("replicas", m.replicas)] if m.replicas else [])
                       for m in markers], default=str)


def replica_count(role: str, markers: Sequence[MarkerFlags]) -> int:
    """How many replicas ``role`` boots as under ``markers`` (farthest first): the closest marker that
    says so for the role wins; 1 when none does."""
    counts = [m.replicas for m in markers if m.replicas is not None and m.applies_to(role)]
    return counts[-1] if counts else 1


def merge_flags(role: str, layers: Iterable[Mapping[str, Any]], markers: Iterable[MarkerFlags]
                ) -> tuple[dict[str, Any], dict[str, str]]:
    """Merge default layers then markers (farthest first) for one role: later entries win."""
    flags: dict[str, Any] = {}
    env: dict[str, str] = {}
    for layer in layers:
        flags.update({_normal_key(k): v for k, v in layer.items()})
    for marker in markers:
        if marker.applies_to(role):
            flags.update({_normal_key(k): v for k, v in marker.flags.items()})
            env.update(marker.env)
    return flags, env
