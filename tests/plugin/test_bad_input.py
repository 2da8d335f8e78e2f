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
