"""Bad input is a usage error at configure or collection, before any server boots (issue 18, item 6).

Each case runs an inner pytest session (pytester) whose model path is never booted and asserts
the exit code 4 of a usage error, no INTERNALERROR or traceback, and a message that names the
problem and the fix.
"""

from __future__ import annotations

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
