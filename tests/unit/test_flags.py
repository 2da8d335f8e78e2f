"""Marker flags → vLLM argv, checked against the installed vLLM's real option table."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from pytest_vllm.errors import UsageError
from pytest_vllm.paths import cache_dir
from pytest_vllm.server.dump_vllm_args import describe
from pytest_vllm.server.flags import VLLMArgSchema, check_interpreter, flag_name, load_schema, to_argv


@pytest.fixture(scope="module")
def schema() -> VLLMArgSchema:
    return load_schema(sys.executable, cache_dir())


def test_flag_names() -> None:
    assert flag_name("max_num_seqs") == "--max-num-seqs"
    assert flag_name("--max-num-seqs") == "--max-num-seqs"


def test_values_render_like_the_cli(schema: VLLMArgSchema) -> None:
    argv = to_argv({"max_num_seqs": 8, "enable_prefix_caching": True, "enforce_eager": True,
                    "dtype": "float32", "compilation_config": {"mode": 0}}, schema)
    assert argv == ["--max-num-seqs", "8", "--enable-prefix-caching", "--enforce-eager",
                    "--dtype", "float32", "--compilation-config", '{"mode": 0}']


def test_false_turns_off_a_boolean_optional_flag_and_omits_a_store_true(schema: VLLMArgSchema) -> None:
    assert to_argv({"enable_prefix_caching": False}, schema) == ["--no-enable-prefix-caching"]
    assert to_argv({"disable_log_stats": False}, schema) == []
    assert to_argv({"disable_log_stats": True}, schema) == ["--disable-log-stats"]


def test_none_omits_the_flag(schema: VLLMArgSchema) -> None:
    assert to_argv({"max_num_seqs": None}, schema) == []


def test_misspelled_flag_is_named_with_suggestions(schema: VLLMArgSchema) -> None:
    with pytest.raises(UsageError) as err:
        to_argv({"max_num_seqz": 8}, schema)
    message = str(err.value)
    assert "max_num_seqz" in message and "--max-num-seqz" in message and "did you mean --max-num-seqs" in message


def test_every_problem_is_reported_at_once(schema: VLLMArgSchema) -> None:
    with pytest.raises(UsageError) as err:
        to_argv({"dtype": "f33", "max_num_batched_tokens": "lots", "enable_prefix_caching": "yes", "port": 1},
                schema)
    message = str(err.value)
    assert "must be one of" in message and "float32" in message
    assert "takes an integer" in message
    assert "on/off flag" in message
    assert "sets --port itself" in message


def test_damaged_schema_cache_is_rebuilt(tmp_path: Path, schema: VLLMArgSchema) -> None:
    first = load_schema(sys.executable, tmp_path)
    cached = next((tmp_path / "vllm-args").glob("*.json"))
    cached.write_text("{not json")
    again = load_schema(sys.executable, tmp_path)
    assert again.options.keys() == first.options.keys()
    assert json.loads(cached.read_text())["vllm_version"] == first.vllm_version


def test_missing_interpreter_is_a_usage_error_naming_it_and_the_fix(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-python")
    with pytest.raises(UsageError) as err:
        load_schema(missing, tmp_path)
    assert f"the vLLM interpreter {missing!r} does not exist" in str(err.value)
    assert "pass --vllm-python (ini vllm_python) the interpreter of the environment where vLLM is installed" in str(
        err.value)
    with pytest.raises(UsageError, match="'no-such-python-here' does not exist"):
        check_interpreter("no-such-python-here")  # a bare name is looked up on PATH, as the subprocess would


def test_an_interpreter_that_is_not_executable_is_a_usage_error(tmp_path: Path) -> None:
    not_executable = tmp_path / "python"
    not_executable.write_text("#!/bin/sh\n")
    for path in (not_executable, tmp_path):
        with pytest.raises(UsageError, match="is not an executable file: pass --vllm-python"):
            load_schema(str(path), tmp_path)


def test_a_program_that_is_not_python_is_a_usage_error(tmp_path: Path) -> None:
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho hello\n")
    fake.chmod(0o755)
    with pytest.raises(UsageError, match="is not a Python interpreter \\(it printed 'hello'\\)"):
        load_schema(str(fake), tmp_path)


def test_an_interpreter_without_vllm_says_how_to_get_one(tmp_path: Path) -> None:
    # This interpreter, with vllm hidden: a real interpreter that finds no vLLM.
    no_vllm = tmp_path / "python"
    no_vllm.write_text(f"#!/bin/sh\nexec {sys.executable} -I -c \"import sys; sys.modules['vllm'] = None; "
                       f"exec(sys.argv[2])\" \"$@\"\n")
    no_vllm.chmod(0o755)
    with pytest.raises(UsageError, match="vLLM is not installed for .*point --vllm-python at an interpreter"):
        load_schema(str(no_vllm), tmp_path)


def test_json_typed_flags_are_not_taken_for_numbers() -> None:
    # vLLM's JSON options (speculative_config) parse "0.5" as well as a dict: they take any text.
    parser = argparse.ArgumentParser()
    parser.add_argument("--speculative-config", type=json.loads)
    parser.add_argument("--gpu-memory-utilization", type=float)
    parser.add_argument("--max-num-seqs", type=lambda text: int(text))
    kinds = {name: info["value_kind"] for name, info in describe(parser).items()}
    assert kinds == {"--speculative-config": "any", "--gpu-memory-utilization": "float", "--max-num-seqs": "int"}
