"""Bad input is a usage error at configure or collection, before any server boots (issue 18, item 6).

Each case runs an inner pytest session (pytester) whose model path is never booted and asserts
the exit code 4 of a usage error, no INTERNALERROR or traceback, and a message that names the
problem and the fix.
"""

from __future__ import annotations

import sys

import pytest


@pytest.fixture
def model_dir(pytester: pytest.Pytester) -> str:
    """A stand-in model path: these tests never boot, so no weights are needed."""
    return str(pytester.mkdir("some-model"))


def usage_error(result: pytest.RunResult) -> str:
    """The usage error's text, after checking that it is one and that nothing booted or crashed."""
    out, err = result.stdout.str(), result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, out + err
    assert "INTERNALERROR" not in out + err and "Traceback" not in out + err, out + err
    assert "booting" not in out
    return err


@pytest.mark.parametrize(("where", "text"), [
    ("--vllm-stop-timeout=inf", "--vllm-stop-timeout / vllm_stop_timeout / [tool.pytest_vllm] stop_timeout: 'inf'"),
    ("--vllm-startup-timeout=-1", "--vllm-startup-timeout / vllm_startup_timeout / [tool.pytest_vllm] "
                                  "startup_timeout: '-1'"),
    ("pyproject", "--vllm-stop-timeout / vllm_stop_timeout / [tool.pytest_vllm] stop_timeout: 'inf'"),
])
def test_out_of_range_timeout(pytester: pytest.Pytester, where: str, text: str) -> None:
    pytester.makepyfile("def test_x(): pass")
    args = [where] if where.startswith("--") else []
    if where == "pyproject":
        pytester.makefile(".toml", pyproject='[tool.pytest_vllm]\nstop_timeout = "inf"\n')
    err = usage_error(pytester.runpytest_subprocess(*args))
    assert text in err and "is out of range; give a finite number of seconds above 0 and at most" in err, err


def test_budget_table_in_pyproject_is_checked_at_configure(pytester: pytest.Pytester) -> None:
    # No perf test at all: the table was read only when the first perf test set up, after its boot.
    pytester.makepyfile("def test_x(): pass")
    pytester.makefile(".toml", pyproject='[tool.pytest_vllm.budgets]\nttft_p50 = "<= baseline * 1.1.1"\n'
                                         'ttft_p5 = "<= 1 ms"\n')
    err = usage_error(pytester.runpytest_subprocess())
    assert "[tool.pytest_vllm.budgets]: budget ttft_p50='<= baseline * 1.1.1': '1.1.1' is not a number; write a " \
           "decimal such as 1.1" in err, err
    assert "[tool.pytest_vllm.budgets]: unknown metric 'ttft_p5' in a budget; valid metrics: " in err, err


def test_number_in_the_budget_table_says_which_string_was_meant(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(): pass")
    pytester.makefile(".toml", pyproject="[tool.pytest_vllm.budgets]\nttft_p50 = 1.1\n")
    err = usage_error(pytester.runpytest_subprocess())
    assert ('[tool.pytest_vllm.budgets]: budget ttft_p50=1.1 is a bare number; write it as a string: '
            '"<= baseline * 1.1" (relative to the stored baseline) or "<= 1.1 ms" (an absolute limit in ms)') in err


def test_malformed_and_numeric_marker_budgets_fail_at_collection(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest
        @pytest.mark.vllm_budget(ttft_p50="<= baseline * 1.1.1")
        def test_malformed(): pass

        @pytest.mark.vllm_budget(output_throughput=0.9)
        def test_number(): pass

        @pytest.mark.vllm_pair_budget(output_throughput=1.2)
        def test_pair_number(): pass
    """)
    err = usage_error(pytester.runpytest_subprocess())
    assert "test_malformed: budget ttft_p50='<= baseline * 1.1.1': '1.1.1' is not a number" in err, err
    assert ('test_number: budget output_throughput=0.9 is a bare number; write it as a string: '
            '">= baseline * 0.9" (relative to the stored baseline) or ">= 0.9 tok/s"') in err, err
    assert 'test_pair_number: budget output_throughput=1.2 is a bare number; write it as a string: ">= 1.2" (the ' \
           'ratio candidate / reference)' in err, err


def test_unknown_marker_role_and_bad_flag_values_fail_at_collection(pytester: pytest.Pytester, model_dir: str) -> None:
    pytester.makepyfile("""
        import pytest
        @pytest.mark.vllm_server(role="compresed", max_num_seqs=2)
        def test_role_typo(base_server): pass

        @pytest.mark.vllm_server(max_num_seqs=object())
        def test_object_value(base_server): pass

        @pytest.mark.vllm_server(role=3)
        def test_role_number(compressed_server): pass
    """)
    err = usage_error(pytester.runpytest_subprocess("--base-model", model_dir, "--compressed-model", model_dir))
    assert "test_role_typo: vllm_server(role='compresed'): role is 'base' or 'compressed' (or a list of them)" in err
    assert "test_role_number: vllm_server(role=3): role is 'base' or 'compressed'" in err, err
    assert "test_object_value: vllm_server(max_num_seqs=<object object at" in err, err
    assert "a flag value is a str, int, float, bool or None, or a list or dict of those" in err


def test_a_json_flag_takes_a_dict(pytester: pytest.Pytester, model_dir: str) -> None:
    # vLLM's JSON flags parse "0.5" too, so they were taken for float flags and a dict was refused.
    pytester.makepyfile("""
        import pytest
        @pytest.mark.vllm_server(speculative_config={"method": "ngram", "num_speculative_tokens": 2})
        def test_x(base_server): pass
    """)
    result = pytester.runpytest_subprocess("--collect-only", "--base-model", model_dir)
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["*speculative_config={'method': 'ngram', 'num_speculative_tokens': 2}*1 test(s)"])


@pytest.mark.parametrize(("python", "problem"), [("/nope/python", "does not exist"),
                                                ("not-executable", "is not an executable file")])
def test_vllm_python_that_cannot_run_is_one_usage_error(pytester: pytest.Pytester, model_dir: str, python: str,
                                                         problem: str) -> None:
    if python == "not-executable":
        python = str(pytester.makefile(".py", python="print('a script, not an interpreter')"))
    pytester.makepyfile("def test_x(base_server): pass\ndef test_y(vllm_server): pass\n")
    err = usage_error(pytester.runpytest_subprocess("--base-model", model_dir, "--compressed-model", model_dir,
                                                    "--vllm-python", python))
    assert (f"the vLLM interpreter {python!r} {problem}: pass --vllm-python (ini vllm_python) the interpreter of the "
            "environment where vLLM is installed") in err, err
    assert err.count(python) == 1, err  # once for the run, not once per test


def test_vllm_python_without_vllm_is_a_usage_error(pytester: pytest.Pytester, model_dir: str) -> None:
    no_vllm = pytester.path / "python"
    no_vllm.write_text(f"#!/bin/sh\nexec {sys.executable} -I -c \"import sys; sys.modules['vllm'] = None; "
                       "exec(sys.argv[2])\" \"$@\"\n")
    no_vllm.chmod(0o755)
    pytester.makepyfile("def test_x(vllm_server_factory): pass")  # a test that boots its own server needs it too
    err = usage_error(pytester.runpytest_subprocess("--vllm-python", str(no_vllm)))
    assert f"vLLM is not installed for {no_vllm}" in err and "point --vllm-python at an interpreter" in err, err


def test_vllm_python_is_not_run_when_no_test_needs_a_server(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess("--vllm-python", "/nope/python")
    assert result.ret == 0, result.stdout.str() + result.stderr.str()


def test_accuracy_budget_table_percentage_is_refused_at_collection(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(): pass")
    pytester.makefile(".toml", pyproject="[tool.pytest_vllm.accuracy.budgets]\nrecovery = 95\n")
    err = usage_error(pytester.runpytest_subprocess())
    assert ("[tool.pytest_vllm.accuracy]: budgets: accuracy budget recovery=95: recovery is a ratio, at most 1.5 to "
            "mean anything; for 95% write 0.95") in err, err
