"""Roles of several replicas at collection: ``vllm_server`` tests once per replica, and a bad or
unreachable replica list is a usage error at session start. Inner sessions that boot nothing."""

from __future__ import annotations

import pytest

INNER = """
import pytest

@pytest.mark.vllm_server(replicas=2, role="base")
def test_each(vllm_server):
    pass

def test_plain(vllm_server):
    pass

@pytest.mark.parametrize("vllm_server", ["compressed"], indirect=True)
def test_own_parametrization(vllm_server):
    pass

@pytest.mark.parametrize("c", [1])
def test_ids_keep_the_role_first(vllm_server, c):
    "Baselines are filed by node id: [base-1] as when the roles were the fixture's params."
"""


def test_vllm_server_tests_run_once_per_replica_of_a_booted_role(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_subprocess("--collect-only", "-q", "-p", "no:randomly")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str() + result.stderr.str()
    collected = [line for line in result.stdout.lines if "::" in line]
    assert collected == ["test_inner.py::test_each[base-replica1]", "test_inner.py::test_each[base-replica2]",
                         "test_inner.py::test_each[compressed]", "test_inner.py::test_plain[base]",
                         "test_inner.py::test_plain[compressed]", "test_inner.py::test_own_parametrization[compressed]",
                         "test_inner.py::test_ids_keep_the_role_first[base-1]",
                         "test_inner.py::test_ids_keep_the_role_first[compressed-1]"]
    result.stdout.fnmatch_lines(["*base server replica 1: *", "*base server replica 2: *"])


@pytest.mark.parametrize(("urls", "text"), [
    ("base=http://127.0.0.1:9,http://127.0.0.1:9", "lists the replica http://127.0.0.1:9 twice"),
    ("base=http://127.0.0.1:9,,http://127.0.0.1:8", "has an empty entry"),
    # nothing listens on port 9 (discard) here: refused at once, at session start, not in a test
    ("base=http://127.0.0.1:9,http://127.0.0.1:8", "base=http://127.0.0.1:9: the server does not answer"),
])
def test_a_bad_replica_list_is_a_usage_error_at_session_start(pytester: pytest.Pytester, urls: str,
                                                              text: str) -> None:
    pytester.makepyfile("def test_x(base_server): pass")
    result = pytester.runpytest_subprocess("--vllm-url", urls)
    out, err = result.stdout.str(), result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, out + err
    assert text in err and "Traceback" not in out + err, out + err
