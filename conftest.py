"""Shared defaults of the suites in suites/ (and of this repo's own tests).

The throughput suite sweeps the concurrency levels of the GPU profile in use, so one suite file
serves a 2-core CPU (4) and an H200 (16, 64, 256) alike. Level 1 is left to the single-stream test:
its workload is the same (3 requests of 128 in / 32 out on the CPU), so a throughput test at c1
measured it twice (on the avx2-only host 3.6 minutes of a CI run for no check of its own).
"""

from __future__ import annotations

import pytest

from pytest_vllm.session import SESSION_KEY


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "concurrency" in metafunc.fixturenames:
        levels = [c for c in metafunc.config.stash[SESSION_KEY].profile.concurrency_levels if c > 1]
        metafunc.parametrize("concurrency", levels, ids=[f"c{c}" for c in levels])
