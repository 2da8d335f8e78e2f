"""Which model each role serves: the user's pair, or the embedded default pair.

Without ``--compressed-model``, the compressed role is the embedded W8A8 checkpoint when the base
is the embedded model and the profile has no online quantization (cpu), or online FP8 of the
base checkpoint (``quantization=fp8``) on GPU profiles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pytest_vllm.errors import UsageError
from pytest_vllm.gpu import GPUProfile
from pytest_vllm.models import embedded
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
