"""Shared defaults of the suites in suites/ (and of this repo's own tests).

The throughput suite sweeps the concurrency levels of the GPU profile in use, so one suite file
serves a 2-core CPU (1, 4) and an H200 (1, 16, 64, 256) alike.
"""

from __future__ import annotations

import pytest

from pytest_vllm.session import SESSION_KEY


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "concurrency" in metafunc.fixturenames:
        levels = metafunc.config.stash[SESSION_KEY].profile.concurrency_levels
        metafunc.parametrize("concurrency", levels, ids=[f"c{c}" for c in levels])
