"""The hypothesis profiles (bounded CI, thorough nightly) and the option that picks one."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pytest_vllm.conformance.profiles import get_profile
from pytest_vllm.errors import UsageError


def test_profiles_scale_the_budget() -> None:
    ci, nightly = get_profile("ci"), get_profile("nightly")
    assert (ci.examples(12), nightly.examples(12)) == (12, 120)
    ci_settings = ci.settings(12)
    assert ci_settings.max_examples == 12 and ci_settings.deadline is None and ci_settings.derandomize
    assert ci_settings.database is None
    assert nightly.settings(12).derandomize is False
    with pytest.raises(UsageError, match="ci, nightly"):
        get_profile("weekly")


def test_the_option_is_in_help_and_heavy_modules_stay_unloaded(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(["*--vllm-conformance-profile=ci|nightly*", "*vllm_conformance_profile (string)*"])


def test_loading_the_plugin_loads_no_conformance_machinery() -> None:
    """The plugin imports the profile table only; validators, strategies and the SDK load on use."""
    code = ("import sys, pytest_vllm.plugin; "
            "print(sorted(m for m in sys.modules if m.startswith(('pytest_vllm.conformance.', 'openai'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['pytest_vllm.conformance.profiles']"
