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


@pytest.mark.parametrize("role", ["compresed", "custom", 3, [], ["base", "draft"]])
def test_a_marker_role_is_base_or_compressed(role: object) -> None:
    # A marker's flags shape only the planned base and compressed servers: any other role dropped them.
    with pytest.raises(UsageError) as err:
        MarkerFlags.from_kwargs({"role": role, "max_num_seqs": 2}, "t.py::x")
    message = str(err.value)
    assert message.startswith(f"t.py::x: vllm_server(role={role!r}): role is 'base' or 'compressed'")
    assert "vllm_server_factory(role=..., **flags)" in message


def test_a_marker_role_may_name_both_servers() -> None:
    assert MarkerFlags.from_kwargs({"role": ["base", "compressed"]}, "x").roles == frozenset({"base", "compressed"})
    assert MarkerFlags.from_kwargs({"role": "compressed"}, "x").applies_to("compressed")


def test_flag_values_are_what_json_flags_take() -> None:
    spec_config = {"method": "ngram", "num_speculative_tokens": 2, "nested": [1, 2.5, None, {"a": True}]}
    marker = MarkerFlags.from_kwargs({"speculative_config": spec_config, "max_num_seqs": 2, "dtype": None}, "x")
    assert marker.flags["speculative_config"] == spec_config


@pytest.mark.parametrize("value", [object(), {1: "a"}, [b"bytes"], {"a": {"b": {1, 2}}}])
def test_other_flag_values_are_refused_with_what_is_allowed(value: object) -> None:
    with pytest.raises(UsageError, match=r"x: vllm_server\(max_num_seqs=.*\): a flag value is a str, int, float, "
                                         r"bool or None, or a list or dict of those"):
        MarkerFlags.from_kwargs({"max_num_seqs": value}, "x")


def test_every_problem_of_a_marker_is_reported_at_once() -> None:
    with pytest.raises(UsageError) as err:
        MarkerFlags.from_kwargs({"role": "both", "env": {"A": None}, "dtype": object()}, "x")
    role, env, flag = str(err.value).splitlines()
    assert role.startswith("x: vllm_server(role='both')")
    assert env == "x: vllm_server(env=...): A=None: give each variable a string or number"
    assert flag.startswith("x: vllm_server(dtype=<object")


def test_served_names() -> None:
    assert served_name_for("/cache/models/smollm2-135m-instruct") == "smollm2-135m-instruct"
    assert served_name_for("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    spec = ServerSpec.create("base", "/x/model", {"served_model_name": "m"})
    assert spec.served_model_name == "m"
