"""How much of the host's CPU the hypervisor gave to other tenants while a workload ran.

On a shared virtual machine (cloud CI runners, lent GPU machines) a neighbour's load shows up as
CPU steal: time a virtual CPU was ready to run and was not scheduled. A server bound by host work
(a small model on a fast GPU, any model on a CPU) slows with it, so every measurement reports the
steal beside its numbers and a failed gate says when the host was loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil

# A steal share (percent) from which a failed gate names the host as a likely cause.
NOTABLE_STEAL_PCT = 2.0


@dataclass(frozen=True)
class HostCPUTimes:
    """System-wide CPU seconds, all CPUs together (``steal`` is 0 where the OS does not report it)."""

    steal: float
    total: float

    @classmethod
    def now(cls) -> HostCPUTimes:
        times = psutil.cpu_times()
        guest = getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)  # Linux counts them in user too
        return cls(steal=getattr(times, "steal", 0.0), total=sum(times) - guest)


def steal_share(before: HostCPUTimes, after: HostCPUTimes) -> float:
    """Fraction of the CPU time between two samples that was stolen (0 when no time passed)."""
    elapsed = after.total - before.total
    return max(0.0, (after.steal - before.steal) / elapsed) if elapsed > 0 else 0.0
