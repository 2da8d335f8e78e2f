"""pytest-xdist: whole files per worker (the scheduling chosen and said), modes that split files refused.

Inner sessions here boot nothing (a server-free test file, or --collect-only); the integration
test in tests/integration/test_parallel.py runs two workers with real servers.
"""

from __future__ import annotations

import pytest

pytest.importorskip("xdist")

def test_n_sends_whole_files_and_says_so(pytester: pytest.Pytester) -> None:
    tests = "".join(f"def test_{n}(worker_id):\n    print('RAN', __name__, worker_id)\n\n" for n in "abcd")
    pytester.makepyfile(test_one=tests, test_two=tests)
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider", "-s", "-v")
    result.assert_outcomes(passed=8)
    result.stdout.fnmatch_lines(["*vllm: pytest-xdist: --dist loadfile, so a test file's tests share a worker*"])
    workers = {}
    for line in result.outlines:
        if line.startswith("[gw"):
            worker, _, rest = line.partition("]")
            workers.setdefault(rest.split("::")[0].split()[-1], set()).add(worker)
    assert workers and all(len(on) == 1 for on in workers.values()), f"a file's tests on one worker: {workers}"


def test_a_mode_that_splits_server_groups_is_refused(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="def test_a():\n    pass\n")
    result = pytester.runpytest_subprocess("-n", "2", "--dist", "loadscope", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--dist loadscope would spread the tests of one vLLM server over several workers*"])
