"""Which model each role serves: the user's pair, or the embedded default pair.

Without ``--compressed-model``, the compressed role is the embedded W8A8 checkpoint when the base
is the embedded model and the profile has no online quantization (cpu), or online FP8 of the
base checkpoint (``quantization=fp8``) on GPU profiles.

The perf suite's tests (marker ``vllm_perf_pair``) serve the perf pair instead (``--vllm-perf-model``):
on GPU profiles by default a production shape of random weights (models/shapes.py), because a
135M model measures the host there rather than the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_vllm.errors import UsageError
from pytest_vllm.gpu import GPUProfile
from pytest_vllm.models import embedded, shapes
from pytest_vllm.server.spec import BASE, COMPRESSED, served_name_for


@dataclass(frozen=True)
class RoleModel:
    model: str
    flags: dict[str, Any] = field(default_factory=dict)  # role defaults, e.g. quantization=fp8
    source: str = "user"  # "user" | "embedded" | "online quantization of the base model"

    def describe(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.flags.items())
        return f"{self.model}" + (f" ({extra})" if extra else "") + f" [{self.source}]"


def resolve_role(role: str, base_model: str | None, compressed_model: str | None,
                 profile: GPUProfile) -> RoleModel:
    """The model for ``role``; builds nothing, but says how to when the embedded pair is missing."""
    if role == BASE:
        if base_model:
            return RoleModel(base_model)
        # The embedded checkpoint is stored in float32 (exact on CPU kernels); GPUs serve it in
        # bfloat16, as any production checkpoint (FlashAttention has no float32 path).
        flags = {"dtype": "bfloat16"} if profile.is_gpu else {}
        return RoleModel(str(embedded.require_built(embedded.BASE_RECIPE)), flags, source="embedded")
    if role == COMPRESSED:
        if compressed_model:
            return RoleModel(compressed_model)
        if profile.online_quantization:
            base = resolve_role(BASE, base_model, None, profile)
            # Its own served name: the two servers of a pair must be told apart in reports and baselines.
            scheme = "-".join(str(v) for v in profile.online_quantization.values())
            online: dict[str, Any] = {**base.flags, **profile.online_quantization,
                                      "served_model_name": f"{served_name_for(base.model)}-{scheme}"}
            return RoleModel(base.model, online, source="online quantization of the base model")
        if base_model:
            raise UsageError(
                f"--base-model {base_model} was given without --compressed-model, and the {profile.name!r} "
                "profile has no online quantization: pass --compressed-model PATH_OR_ID"
            )
        return RoleModel(str(embedded.require_built(embedded.COMPRESSED_RECIPE)), source="embedded")
    raise UsageError(f"unknown server role {role!r}: use base or compressed (or vllm_server_factory)")


# The pairs a test can serve: the run's models, or the perf suite's.
DEFAULT_PAIR = "default"
PERF_PAIR = "perf"
# Served from a shape: random weights from its config, in the dtype GPUs serve production checkpoints in.
SHAPE_FLAGS: dict[str, Any] = {"load_format": "dummy", "dtype": "bfloat16"}


def perf_model_choice(perf_model: str, base_model: str | None, profile: GPUProfile) -> str:
    """What ``--vllm-perf-model`` resolves to on this profile: a shape's name, "user" or "embedded"."""
    if perf_model != "auto":
        return perf_model
    if base_model:
        return "user"
    return shapes.DEFAULT_SHAPE if profile.is_gpu else "embedded"


def resolve_perf_role(role: str, perf_model: str, base_model: str | None, compressed_model: str | None,
                      profile: GPUProfile) -> RoleModel:
    """The model ``role`` serves in the perf suite; a shape's folder is built here (a config and the
    tokenizer's files: milliseconds)."""
    choice = perf_model_choice(perf_model, base_model, profile)
    if choice == "user":
        return resolve_role(role, base_model, compressed_model, profile)
    if choice == "embedded":
        return resolve_role(role, None, None, profile)
    if role not in (BASE, COMPRESSED):
        raise UsageError(f"unknown server role {role!r}: use base or compressed (or vllm_server_factory)")
    if not profile.online_quantization:
        raise UsageError(f"--vllm-perf-model {choice}: a shape of random weights needs online quantization for its "
                         f"compressed server, which the {profile.name!r} profile lacks (and random 8B-class weights "
                         "are for GPUs): pass --vllm-perf-model embedded or user")
    tokenizer_dir = Path(base_model).expanduser() if base_model and Path(base_model).expanduser().is_dir() \
        else embedded.require_built(embedded.BASE_RECIPE)
    folder = shapes.build_shape(shapes.shape_named(choice), tokenizer_dir, embedded.models_dir())
    source = f"{choice} shape, random weights, tokenizer of {tokenizer_dir.name}"
    if role == BASE:
        return RoleModel(str(folder), dict(SHAPE_FLAGS), source=source)
    scheme = "-".join(str(v) for v in profile.online_quantization.values())
    online: dict[str, Any] = {**SHAPE_FLAGS, **profile.online_quantization,
                              "served_model_name": f"{folder.name}-{scheme}"}
    return RoleModel(str(folder), online, source=f"{source}, online quantization")
