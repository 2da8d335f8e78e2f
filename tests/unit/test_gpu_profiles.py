"""GPU profile detection and the --gpu safety check."""

from __future__ import annotations

import pytest

from pytest_vllm.errors import UsageError
from pytest_vllm.gpu import PROFILES, DeviceInfo, profile_for_device, resolve_profile

H100 = DeviceInfo(name="NVIDIA H100 80GB HBM3", count=1, memory_mib=81559, driver="580.95")
CPU = DeviceInfo(name="AMD EPYC 7B13", count=0)


@pytest.mark.parametrize(("device_name", "profile"), [
    ("NVIDIA H100 80GB HBM3", "h100"),
    ("NVIDIA H100 PCIe", "h100"),
    ("NVIDIA H200", "h200"),
    ("NVIDIA L40S", "l40s"),
    ("NVIDIA L4", "l4"),
    ("NVIDIA A100-SXM4-80GB", "a100"),
    ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
    ("Tesla T4", "t4"),
    ("NVIDIA A10G", "a10g"),
])
def test_device_names_map_to_profiles(device_name: str, profile: str) -> None:
    found = profile_for_device(DeviceInfo(name=device_name, count=1))
    assert found is not None and found.name == profile


def test_no_gpu_is_the_cpu_profile() -> None:
    assert resolve_profile(None, CPU).name == "cpu"


def test_unknown_gpu_needs_an_explicit_profile() -> None:
    with pytest.raises(UsageError, match="matches no known profile"):
        resolve_profile(None, DeviceInfo(name="Mystery Accelerator 9000", count=1))


def test_wrong_gpu_profile_is_refused_with_the_real_device_named() -> None:
    with pytest.raises(UsageError) as err:
        resolve_profile("l40s", H100)
    assert "H100" in str(err.value) and "--gpu h100" in str(err.value) and "--gpu-force" in str(err.value)


def test_gpu_profile_on_a_cpu_machine_is_refused() -> None:
    with pytest.raises(UsageError, match="no GPU"):
        resolve_profile("h100", CPU)


def test_force_runs_another_profile() -> None:
    assert resolve_profile("l40s", H100, force=True).name == "l40s"


def test_unknown_profile_name_lists_the_known_ones() -> None:
    with pytest.raises(UsageError) as err:
        resolve_profile("h1000", H100)
    assert all(name in str(err.value) for name in PROFILES)


def test_profiles_split_gpu_memory_below_one() -> None:
    for profile in PROFILES.values():
        if profile.pair_gpu_memory_utilization is not None:
            assert 2 * profile.pair_gpu_memory_utilization < 1.0, profile.name
