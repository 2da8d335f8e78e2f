"""ServerSpec identity and marker merging."""

from __future__ import annotations

import pytest

from pytest_vllm.errors import UsageError
from pytest_vllm.server.spec import MarkerFlags, ServerSpec, merge_flags, served_name_for


def test_equal_specs_are_equal_whatever_the_flag_order() -> None:
    a = ServerSpec.create("base", "/m", {"max_num_seqs": 8, "enable_prefix_caching": True})
    b = ServerSpec.create("base", "/m", {"enable_prefix_caching": True, "max_num_seqs": 8})
    assert a == b and hash(a) == hash(b) and a.key == b.key


def test_dash_and_underscore_spellings_are_one_flag() -> None:
    assert ServerSpec.create("base", "/m", {"max-num-seqs": 8}) == ServerSpec.create("base", "/m", {"max_num_seqs": 8})


@pytest.mark.parametrize("other", [
    ServerSpec.create("compressed", "/m", {"max_num_seqs": 8}),
    ServerSpec.create("base", "/n", {"max_num_seqs": 8}),
    ServerSpec.create("base", "/m", {"max_num_seqs": 4}),
    ServerSpec.create("base", "/m", {"max_num_seqs": 8}, env={"A": "1"}),
])
def test_role_model_flags_and_env_all_distinguish_specs(other: ServerSpec) -> None:
    assert ServerSpec.create("base", "/m", {"max_num_seqs": 8}) != other


def test_closest_marker_wins_and_role_scoping() -> None:
    module = MarkerFlags.from_kwargs({"max_num_seqs": 8, "enable_prefix_caching": True}, "m")
    function = MarkerFlags.from_kwargs({"max_num_seqs": 2}, "f")
    compressed_only = MarkerFlags.from_kwargs({"role": "compressed", "kv_cache_dtype": "fp8",
                                               "env": {"X": "1"}}, "c")
    base_flags, base_env = merge_flags("base", [{"dtype": "float32"}], [module, function, compressed_only])
    assert base_flags == {"dtype": "float32", "max_num_seqs": 2, "enable_prefix_caching": True}
    assert base_env == {}
    comp_flags, comp_env = merge_flags("compressed", [{}], [module, function, compressed_only])
    assert comp_flags["kv_cache_dtype"] == "fp8" and comp_env == {"X": "1"}


def test_marker_env_must_be_a_dict() -> None:
    with pytest.raises(UsageError, match="env"):
        MarkerFlags.from_kwargs({"env": "A=1"}, "here")


def test_served_names() -> None:
    assert served_name_for("/cache/models/smollm2-135m-instruct") == "smollm2-135m-instruct"
    assert served_name_for("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    spec = ServerSpec.create("base", "/x/model", {"served_model_name": "m"})
    assert spec.served_model_name == "m"
