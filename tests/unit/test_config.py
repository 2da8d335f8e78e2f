"""RunConfig resolution: option coercion, --vllm-url parsing, [tool.pytest_vllm] checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_vllm.config import (
    OPTIONS_BY_NAME,
    RunConfig,
    check_table_keys,
    coerce,
    parse_urls,
    read_pyproject_table,
)
from pytest_vllm.errors import UsageError


def test_bare_url_is_the_base_server() -> None:
    urls = parse_urls(("http://svc:8000/v1",))
    assert urls.base == "http://svc:8000" and urls.compressed is None


def test_role_urls() -> None:
    urls = parse_urls(("base=http://a:8000", "compressed=http://b:8001/"))
    assert (urls.base, urls.compressed) == ("http://a:8000", "http://b:8001")


@pytest.mark.parametrize("entry", ["quantized=http://a:1", "ftp://a", "base=a:8000"])
def test_bad_urls_are_usage_errors(entry: str) -> None:
    with pytest.raises(UsageError, match="--vllm-url"):
        parse_urls((entry,))


def test_same_role_twice_is_an_error() -> None:
    with pytest.raises(UsageError, match="twice"):
        parse_urls(("http://a:1", "base=http://b:2"))


def test_coerce_bool_and_float() -> None:
    assert coerce(OPTIONS_BY_NAME["gpu_force"], "yes") is True
    assert coerce(OPTIONS_BY_NAME["startup_timeout"], "12") == 12.0
    assert coerce(OPTIONS_BY_NAME["startup_timeout"], None) == OPTIONS_BY_NAME["startup_timeout"].default
    with pytest.raises(UsageError, match="--vllm-startup-timeout"):
        coerce(OPTIONS_BY_NAME["startup_timeout"], "soon")


def test_relative_log_dir_is_under_rootdir(tmp_path: Path) -> None:
    config = RunConfig.from_values(tmp_path, {"log_dir": "logs", "gpu": "cpu"}, environ={})
    assert config.log_dir == tmp_path / "logs"
    assert config.gpu == "cpu"
    assert config.api_key == "EMPTY"


def test_api_key_from_environment(tmp_path: Path) -> None:
    assert RunConfig.from_values(tmp_path, {}, environ={"VLLM_API_KEY": "k"}).api_key == "k"


def test_pyproject_table_and_unknown_keys(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.pytest_vllm]\ngpu = "cpu"\ngpuu = "x"\n')
    table = read_pyproject_table(tmp_path)
    assert table["gpu"] == "cpu"
    with pytest.raises(UsageError, match="gpuu"):
        check_table_keys(table, set(OPTIONS_BY_NAME), "pyproject.toml")


def test_broken_pyproject_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.pytest_vllm\n")
    with pytest.raises(UsageError, match="not valid TOML"):
        read_pyproject_table(tmp_path)


def test_replacing_and_adding_baselines_at_once_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--update-baselines replaces .* --add-baselines adds"):
        RunConfig.from_values(tmp_path, {"update_baselines": True, "add_baselines": True}, environ={})
    assert RunConfig.from_values(tmp_path, {"add_baselines": "yes"}, environ={}).add_baselines is True


@pytest.mark.parametrize("raw", ["inf", "nan", "0", "-5", "601", 1e9])
def test_stop_timeout_must_be_finite_positive_and_bounded(raw: object) -> None:
    with pytest.raises(UsageError) as err:
        coerce(OPTIONS_BY_NAME["stop_timeout"], raw)
    message = str(err.value)
    assert "--vllm-stop-timeout" in message and "[tool.pytest_vllm] stop_timeout" in message
    assert "finite number of seconds above 0 and at most 600 (default 15)" in message


def test_startup_timeout_bounds_allow_a_long_boot_but_not_forever() -> None:
    assert coerce(OPTIONS_BY_NAME["startup_timeout"], "3600") == 3600.0
    assert coerce(OPTIONS_BY_NAME["stop_timeout"], 600) == 600.0
    with pytest.raises(UsageError, match="at most 86400"):
        coerce(OPTIONS_BY_NAME["startup_timeout"], "inf")


def test_out_of_range_timeout_from_pyproject_is_refused_by_run_config(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="'inf' is out of range"):
        RunConfig.from_values(tmp_path, {"stop_timeout": "inf"}, environ={})


@pytest.mark.parametrize("raw", ["0", "1.5", "-0.2", "nan", "90"])
def test_tool_call_budget_is_a_fraction(raw: str) -> None:
    with pytest.raises(UsageError, match=r"--vllm-tool-call-budget .* above 0 and at most 1 \(default 0.8\)"):
        coerce(OPTIONS_BY_NAME["tool_call_budget"], raw)


def test_tool_call_budget_reaches_the_run_config(tmp_path: Path) -> None:
    assert RunConfig.from_values(tmp_path, {}, environ={}).tool_call_budget == 0.8
    assert RunConfig.from_values(tmp_path, {"tool_call_budget": "0.75"}, environ={}).tool_call_budget == 0.75
