"""The hypothesis profiles (bounded CI, thorough nightly) and the option that picks one."""

from __future__ import annotations

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




def test_the_option_offers_exactly_the_profiles() -> None:
    from pytest_vllm.config import OPTIONS_BY_NAME
    from pytest_vllm.conformance.profiles import PROFILES

    assert OPTIONS_BY_NAME["conformance_profile"].choices == tuple(PROFILES)
