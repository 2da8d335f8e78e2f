"""The memory-bandwidth floor of single-stream decoding, and how close a measured TPOT comes to it.

One request at a time, every decoding step reads all the weights once: weight bytes / the device's
memory bandwidth is the least time a token can take. Measured TPOT against that floor says how
much of the device a server uses (an 8B-shaped bf16 server on an H200: 4.5 ms against 3.1 ms),
which a baseline alone cannot: a baseline recorded on a slow server keeps it slow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Peak memory bandwidth (TB/s, vendors' data sheets) by a lower-case substring of the driver's
# device name; the longest match wins ("h100 pcie" over "h100").
BANDWIDTH_TBS: dict[str, float] = {
    "b200": 8.0,
    "h200": 4.8,
    "gh200": 4.0,
    "h100 nvl": 3.9,
    "h100 pcie": 2.0,
    "h100": 3.35,  # SXM (nvidia-smi: "NVIDIA H100 80GB HBM3")
    "h800": 3.35,
    "a100-sxm4-80gb": 2.039,
    "a100 80gb pcie": 1.935,
    "a100-sxm4-40gb": 1.555,
    "a100-pcie-40gb": 1.555,
    "a100": 2.0,
    "l40s": 0.864,
    "l40": 0.864,
    "a10g": 0.6,
    "a10": 0.6,
    " l4": 0.3,
    "t4": 0.32,
    "v100": 0.9,
}


def bandwidth_of(device_name: str) -> float | None:
    """Bytes per second of the device named ``device_name``, None for a device not in the table."""
    lowered = f" {device_name.lower()}"
    matches = [pattern for pattern in BANDWIDTH_TBS if pattern in lowered]
    if not matches:
        return None
    return BANDWIDTH_TBS[max(matches, key=len)] * 1e12


@dataclass(frozen=True)
class Roofline:
    """One single-stream measurement against its device's bandwidth floor."""

    device: str
    bandwidth_bytes_per_s: float
    weight_bytes: int
    tpot_ms: float

    @property
    def floor_ms(self) -> float:
        return self.weight_bytes / self.bandwidth_bytes_per_s * 1000

    @property
    def share(self) -> float:
        """Floor / measured TPOT: 1.0 would read the weights at the device's full bandwidth."""
        return self.floor_ms / self.tpot_ms if self.tpot_ms > 0 else 0.0

    def describe(self) -> str:
        return (f"TPOT {self.tpot_ms:.2f} ms against a floor of {self.floor_ms:.2f} ms "
                f"({self.weight_bytes / 1e9:.2f} GB of weights / {self.bandwidth_bytes_per_s / 1e12:g} TB/s): "
                f"{self.share:.0%} of the bandwidth limit")

    def to_json(self) -> dict[str, Any]:
        return {"device": self.device, "bandwidth_tb_s": self.bandwidth_bytes_per_s / 1e12,
                "weight_bytes": self.weight_bytes, "tpot_p50_ms": self.tpot_ms, "floor_ms": self.floor_ms,
                "share": self.share}


def roofline(device_name: str, weight_bytes: int | None, tpot_ms: float) -> Roofline | None:
    """The roofline of a measurement, None where the device's bandwidth or the weights are unknown."""
    bandwidth = bandwidth_of(device_name)
    if bandwidth is None or not weight_bytes or tpot_ms <= 0:
        return None
    return Roofline(device_name, bandwidth, weight_bytes, tpot_ms)
