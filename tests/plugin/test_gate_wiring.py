"""The gates through pytest itself (pytester, no server boots): accuracy markers and settings fail
collection with clear errors, the conformance option is in --help and loads nothing heavy, and a
failing conformance example reports its requests."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def test_unknown_marker_key_fails_collection(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(textwrap.dedent("""
        import pytest

        @pytest.mark.vllm_accuracy_budget(recovery=0.97, kl_mena=0.1)
        def test_x():
            pass
    """))
    result = pytester.runpytest("--gpu", "cpu", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown accuracy budget key 'kl_mena'; valid keys: recovery, history,*"])


def test_unknown_pyproject_accuracy_key_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml("[tool.pytest_vllm.accuracy]\ngates = 'upper'\n")
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest("--gpu", "cpu", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*[[]tool.pytest_vllm.accuracy[]]: unknown key(s) gates; valid keys: confidence*"])


def test_valid_marker_collects(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(textwrap.dedent("""
        import pytest

        @pytest.mark.vllm_accuracy_budget(recovery_facts="off", kl_mean="<= 0.3", greedy_topk=1.0)
        def test_x():
            pass
    """))
    result = pytester.runpytest("--gpu", "cpu", "-p", "no:cacheprovider", "--strict-markers")
    assert result.ret == pytest.ExitCode.OK


def test_the_conformance_rules_marker_is_registered(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(textwrap.dedent("""
        import pytest

        @pytest.mark.vllm_conformance_rules("usage.max_tokens", "schema.*@error*")
        def test_x():
            pass
    """))
    result = pytester.runpytest("--gpu", "cpu", "-p", "no:cacheprovider", "--strict-markers")
    assert result.ret == pytest.ExitCode.OK


def test_the_option_is_in_help_and_heavy_modules_stay_unloaded(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(["*--vllm-conformance-profile=ci|nightly*", "*vllm_conformance_profile (string)*"])


def test_loading_the_plugin_loads_no_conformance_machinery() -> None:
    """The plugins import the conformance plugin and its profile table only; validators, strategies
    and the SDK load on use."""
    code = ("import sys, pytest_vllm.plugin, pytest_vllm.conformance.plugin; "
            "print(sorted(m for m in sys.modules if m.startswith(('pytest_vllm.conformance.', 'openai'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['pytest_vllm.conformance.plugin', 'pytest_vllm.conformance.profiles']"


def test_failure_output_in_pytest_shows_the_request(pytester: pytest.Pytester) -> None:
    """End to end through hypothesis and pytest: the report holds the JSON and the curl line."""
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile('''
        from hypothesis import strategies as st
        from pytest_vllm.conformance.ledger import Ledger
        from pytest_vllm.conformance.probe import Exchange, Probe
        from pytest_vllm.conformance.profiles import get_profile
        from pytest_vllm.conformance.replay import encode_body
        from pytest_vllm.conformance.runner import PropertyRun

        def test_property():
            run = PropertyRun(model="m", probe=Probe("http://127.0.0.1:9"),
                              record=Ledger().record("n", "p", "base"), profile=get_profile("ci"))

            def check(n):
                body = {"model": "m", "prompt": "hello", "max_tokens": n}
                run.probe.history.append(Exchange("POST", "http://127.0.0.1:9/v1/completions", body,
                                                  encode_body(body), "application/json", "EMPTY"))
                assert n < 3, "max_tokens was not respected"

            run.run(check, st.integers(0, 10), examples=50)
    ''')
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "max_tokens was not respected" in out
    assert "requests of this example (replay them with the curl lines):" in out
    assert '"prompt": "hello",' in out
    result.stdout.fnmatch_lines(["*curl -sS -X POST http://127.0.0.1:9/v1/completions -H 'Content-Type: "
                                 "application/json' -H 'Authorization: Bearer EMPTY' --data-binary "
                                 "'{\"model\":\"m\",\"prompt\":\"hello\",\"max_tokens\":*}'*"])


def test_a_deferred_confirmation_runs_at_the_end_and_reports_once(pytester: pytest.Pytester) -> None:
    """The perf gate's run protocol, with a stand-in ``vllm_bench`` (a test double for the gate:
    it defers where the protocol allows, as the gate does when a measurement is out of budget)."""
    pytester.makeconftest(textwrap.dedent("""
        import pytest

        @pytest.fixture
        def vllm_bench(request):
            return request.node
    """))
    pytester.makepyfile(textwrap.dedent("""
        from pytest_vllm.perf import deferral

        def out_of_budget(item, confirmed):
            print(f"RUN {item.name} first={deferral.attempts_of(item) is None}")
            if deferral.can_defer(item):
                deferral.defer(item, deferral.Attempts({}, 0, None))
            assert not confirmed, "confirmed: out of budget again"

        def test_spell(vllm_bench):
            out_of_budget(vllm_bench, confirmed=False)

        def test_regression(vllm_bench):
            out_of_budget(vllm_bench, confirmed=True)

        def test_plain():
            print("RUN test_plain")

        def test_last(vllm_bench):
            out_of_budget(vllm_bench, confirmed=True)
    """))
    result = pytester.runpytest("--gpu", "cpu", "-p", "no:cacheprovider", "-s", "--junitxml=junit.xml")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(["*RUN test_spell first=True", "RUN test_regression first=True", "RUN test_plain",
                                 "*RUN test_last first=True",  # not last: the deferred ones come after it
                                 "RUN test_spell first=False", "*RUN test_regression first=False",
                                 "*RUN test_last first=False"])
    junit = (pytester.path / "junit.xml").read_text()
    assert junit.count("<testcase ") == 4 and junit.count("confirmed: out of budget again") >= 2
    alone = pytester.runpytest("--gpu", "cpu", "-p", "no:cacheprovider", "-s", "-k", "test_last")
    alone.assert_outcomes(failed=1, deselected=3)  # the session's last test has no later: it decides at once
    assert alone.stdout.str().count("RUN test_last") == 1
