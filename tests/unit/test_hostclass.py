"""Host fingerprints and the classes baselines are filed under, from /proc/cpuinfo texts and device
records of the machines this project has run on."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_vllm.gpu import PROFILES, DeviceInfo
from pytest_vllm.hostclass import (
    cpu_fingerprint_fields,
    emulation_server_env,
    fingerprint,
    read_cpuinfo,
)

AMD_AVX512 = {"vendor_id": "AuthenticAMD", "model name": "AMD EPYC", "cpu family": "25", "model": "17",
              "flags": "fpu sse avx avx2 fma f16c avx512f avx512bw avx512vl avx512_vnni avx512_bf16"}
AMD_AVX2 = {"vendor_id": "AuthenticAMD", "model name": "AMD EPYC", "cpu family": "25", "model": "1",
            "flags": "fpu sse avx avx2 fma f16c"}
# This project's own CI host: an Emerald Rapids whose hypervisor hides AMX and AVX-512 BF16.
INTEL_VNNI = {"vendor_id": "GenuineIntel", "model name": "Intel(R) Xeon(R) Processor", "cpu family": "6",
              "model": "207", "flags": "avx avx2 avx512f avx512bw avx512vl avx512_vnni"}
INTEL_AMX = {"vendor_id": "GenuineIntel", "model name": "Intel(R) Xeon(R) Platinum 8480+", "cpu family": "6",
             "model": "143", "flags": "avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8"}
CPU = DeviceInfo(name="AMD EPYC")


@pytest.fixture(autouse=True)
def _two_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pytest_vllm.hostclass.usable_cores", lambda: 2)
    monkeypatch.delenv("PYTEST_VLLM_EMULATE_AVX2", raising=False)


@pytest.mark.parametrize(("cpuinfo", "expected"), [
    (AMD_AVX512, "cpu-amd-genoa-avx512bf16-2c"),
    (AMD_AVX2, "cpu-amd-milan-avx2-2c"),
    (INTEL_VNNI, "cpu-intel-emeraldrapids-avx512vnni-2c"),
    (INTEL_AMX, "cpu-intel-sapphirerapids-amx-2c"),
    ({**INTEL_VNNI, "model": "999"}, "cpu-intel-f6m999-avx512vnni-2c"),
    ({"CPU implementer": "0x41", "CPU part": "0xd40", "Features": "fp asimd sve"}, "cpu-arm-41-d40-sve-2c"),
])
def test_cpu_classes_tell_the_hosts_of_one_name_apart(cpuinfo: dict[str, str], expected: str) -> None:
    assert fingerprint(CPU, cpuinfo).host_class(PROFILES["cpu"]) == expected


def test_gpu_classes_name_the_device_memory_form_and_count() -> None:
    h200 = DeviceInfo("NVIDIA H200", count=1, memory_mib=143771, driver="570.124.06")
    record = fingerprint(h200, AMD_AVX512)
    assert record.host_class(PROFILES["h200"]) == "h200-140g" and record.driver_major == "570"
    pcie = DeviceInfo("NVIDIA H100 PCIe", count=2, memory_mib=81559, driver="550.1")
    assert fingerprint(pcie, AMD_AVX512).host_class(PROFILES["h100"]) == "h100-80g-pcie-x2"


def test_the_fingerprint_records_the_isa_and_round_trips_as_json() -> None:
    vendor, model, uarch, isa = cpu_fingerprint_fields(INTEL_AMX)
    assert (vendor, model, uarch) == ("intel", "Intel(R) Xeon(R) Platinum 8480+", "sapphirerapids")
    assert {"amx_bf16", "amx_tile", "avx512_vnni", "avx512f", "avx2"} <= set(isa)
    data = fingerprint(CPU, INTEL_AMX).to_dict()
    assert data["cpu_isa"] == list(isa) and data["cores"] == 2


def test_emulated_avx2_is_a_class_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_VLLM_EMULATE_AVX2", "1")
    record = fingerprint(CPU, INTEL_VNNI)
    assert record.host_class(PROFILES["cpu"]) == "cpu-intel-emeraldrapids-avx2emu-2c"
    assert not any(flag.startswith("avx512") for flag in record.cpu_isa)
    env = emulation_server_env()
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and Path(env["PYTHONPATH"].split(":")[0], "sitecustomize.py").is_file()


def test_emulated_servers_compile_into_caches_of_their_own() -> None:
    """vLLM's compile cache is not keyed by the ISA: shared, it broke the emulated servers' output."""
    env = emulation_server_env({"PYTEST_VLLM_EMULATE_AVX2": "1", "VLLM_CACHE_ROOT": "/c/vllm"})
    assert env["VLLM_CACHE_ROOT"] == "/c/vllm-avx2emu"
    assert env["TORCHINDUCTOR_CACHE_DIR"] == "/c/vllm-avx2emu/inductor"
    default = emulation_server_env({"PYTEST_VLLM_EMULATE_AVX2": "1", "XDG_CACHE_HOME": "/x"})
    assert default["VLLM_CACHE_ROOT"] == "/x/vllm-avx2emu"


def test_no_emulation_no_server_environment() -> None:
    assert emulation_server_env({}) == {}


def test_read_cpuinfo_takes_the_first_processor(tmp_path: Path) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: avx2\n\nprocessor\t: 1\n"
                    "vendor_id\t: Other\n")
    assert read_cpuinfo(path)["vendor_id"] == "GenuineIntel"
    assert read_cpuinfo(tmp_path / "missing") == {}
