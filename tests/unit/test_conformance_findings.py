"""One finding per deviation: a property fails only for the rules it owns, records the others once
in the ledger, and a finding no owner reported fails the session.

No server: deviations are handed to ``expect`` as the validators would produce them.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from _pytest.outcomes import Skipped

from pytest_vllm.conformance.deviations import KNOWN_VLLM_DEVIATIONS, Deviation, applicable, known_for
from pytest_vllm.conformance.findings import UNCLAIMED, Ownership, example_of, pattern_matches
from pytest_vllm.conformance.ledger import FAIL, PASS, Ledger
from pytest_vllm.conformance.probe import Exchange, Probe
from pytest_vllm.conformance.profiles import get_profile
from pytest_vllm.conformance.runner import ConformanceFailure, NotJudged, PropertyRun

CLAIMED = ("usage.max_tokens", "choices.index", "schema.*@error*")
TOO_MANY = Deviation("usage.max_tokens", "usage", "completion_tokens 7 exceeds max_tokens 1 x n 1")
NO_CREATED = Deviation("schema.missing", "data[0].created", "required field missing (Model)")
CODE_INT = Deviation("schema.type", "error.code", "expected a string, got integer 400")


def run_for(ledger: Ledger, prop: str, own: tuple[str, ...], server: str = "base") -> PropertyRun:
    return PropertyRun(model="m", probe=Probe("http://127.0.0.1:9"), record=ledger.record(f"t::{prop}[{server}]",
                       prop, server), profile=get_profile("ci"), ownership=Ownership(own, CLAIMED), ledger=ledger)


def sent(body: bytes, status: int = 200) -> Exchange:
    return Exchange("POST", "http://127.0.0.1:9/v1/chat/completions", None, body, "application/json", None,
                    status=status, headers={"content-type": "application/json"}, text='{"id": "x"}')


def test_patterns_match_rule_and_generic_path() -> None:
    assert pattern_matches("usage.max_tokens", TOO_MANY)
    assert pattern_matches("schema.*@error*", CODE_INT)
    assert not pattern_matches("schema.*@error*", NO_CREATED)
    assert pattern_matches("schema.missing@data[*].created", NO_CREATED)


def test_a_property_without_rules_of_its_own_owns_what_nobody_claims() -> None:
    contract = Ownership((UNCLAIMED,), CLAIMED)
    assert contract.owns(NO_CREATED) and not contract.owns(TOO_MANY) and not contract.owns(CODE_INT)
    behaviour = Ownership(("usage.max_tokens",), CLAIMED)
    assert behaviour.owns(TOO_MANY) and not behaviour.owns(NO_CREATED)
    assert not Ownership((), CLAIMED).owns(TOO_MANY)  # @rules(): only its own assertions


def test_a_deviation_of_another_rule_is_recorded_once_and_does_not_fail_the_property() -> None:
    ledger = Ledger()
    greedy = run_for(ledger, "test_temperature_zero_is_deterministic", ())
    assert greedy.expect([TOO_MANY], "valid chat request", sent(b'{"max_tokens": 1, "messages": []}')) == [TOO_MANY]
    greedy.expect([TOO_MANY], "valid chat request", sent(b'{"max_tokens": 1}'))
    greedy.finish()  # no xfail, no skip: the property judged both examples itself
    (finding,) = ledger.findings.values()
    assert (finding.key, finding.occurrences, finding.met_in) == (
        "usage.max_tokens", 2, {"test_temperature_zero_is_deterministic": 2})
    assert finding.where == {"POST /v1/chat/completions": 2}
    assert finding.example is not None and "--data-binary '{\"max_tokens\": 1}'" in finding.example.curl
    assert greedy.record.findings == {"usage.max_tokens": 2}

    owner = run_for(ledger, "test_max_tokens_is_respected", ("usage.max_tokens",))
    with pytest.raises(ConformanceFailure, match="completion_tokens 7 exceeds max_tokens 1"):
        owner.expect([TOO_MANY], "valid chat request")
    assert finding.owned_in == ["t::test_max_tokens_is_respected[base]"] and finding.occurrences == 3


def test_the_owner_reports_a_finding_and_one_nobody_owned_fails_the_session() -> None:
    ledger = Ledger()
    run_for(ledger, "test_temperature_zero_is_deterministic", ()).expect([TOO_MANY], "x")
    session = SimpleNamespace(exitstatus=pytest.ExitCode.OK)  # pytest.Session's one attribute the check sets
    ledger.pytest_sessionfinish(session)  # type: ignore[arg-type]
    assert session.exitstatus == pytest.ExitCode.TESTS_FAILED
    section = ledger.section()
    assert section is not None and section.failed
    assert section.data["unreported_deviations"] == ["usage.max_tokens"]
    assert section.tables[0].rows[0][-1] == "FAIL (session): no selected property owns its rule"

    owner = run_for(ledger, "test_max_tokens_is_respected", ("usage.max_tokens",))
    section = ledger.section()
    assert section is not None and section.tables[0].rows[0][-1] == (
        "FAIL (session): its owner test_max_tokens_is_respected [base] did not meet it")
    with pytest.raises(ConformanceFailure):
        owner.expect([TOO_MANY], "y")
    owner.record.verdict = FAIL  # as the ledger's report hook sets it from pytest's report
    section = ledger.section()
    assert section is not None and not section.failed
    assert section.tables[0].rows[0][-1] == "FAIL: test_max_tokens_is_respected [base]"
    assert section.tables[0].title == "OpenAI API deviations: 1 distinct found, 0 known"
    session.exitstatus = pytest.ExitCode.OK
    ledger.pytest_sessionfinish(session)  # type: ignore[arg-type]
    assert session.exitstatus == pytest.ExitCode.OK


def test_a_property_whose_every_example_a_finding_spoiled_is_skipped_naming_it() -> None:
    ledger = Ledger()
    run = run_for(ledger, "test_n_above_one_is_accepted_at_temperature_zero", ())

    def check() -> None:
        run.expect([Deviation("http.status", "", "a valid request got HTTP 500, not 200")], "x")
        raise NotJudged("refused")

    with pytest.raises(Skipped, match=r"not judged: .*http\.status"):
        run.once(check)
    assert run.record.not_judged == 1


def test_an_accepted_invalid_request_is_one_finding_whichever_parameter_and_a_schema_rule_one_per_field() -> None:
    ledger = Ledger()
    run = run_for(ledger, "p", ())
    run.expect([Deviation("error.accepted", "messages", "accepted"), Deviation("error.accepted", "logit_bias", "a"),
                NO_CREATED, Deviation("schema.missing", "data[0].owned_by", "missing")], "x")
    assert sorted(f.key for f in ledger.findings.values()) == [
        "error.accepted", "schema.missing@data[*].created", "schema.missing@data[*].owned_by"]
    assert ledger.findings[("error.accepted", "", "")].paths == {"messages": 1, "logit_bias": 1}


def test_the_smallest_example_is_kept() -> None:
    ledger = Ledger()
    run = run_for(ledger, "p", ())
    for body in (b'{"a": 1, "b": 2}', b'{"a": 1}', b'{"a": 1, "c": 3}'):
        run.expect([TOO_MANY], "x", sent(body))
    (finding,) = ledger.findings.values()
    assert finding.example == example_of(sent(b'{"a": 1}'))


def test_known_deviations_belong_to_their_family() -> None:
    assert known_for("vllm", "0.32.0") == applicable(KNOWN_VLLM_DEVIATIONS, "0.32.0")
    assert known_for(None, None) == () and known_for("llama-cpp-python", "0.3.36") == ()


def test_a_known_deviation_is_listed_as_known_and_a_clean_run_says_so() -> None:
    ledger = Ledger()
    run = PropertyRun(model="m", probe=Probe("http://127.0.0.1:9"), record=ledger.record("t::e", "e", "base"),
                      profile=get_profile("ci"), known=KNOWN_VLLM_DEVIATIONS, ledger=ledger)
    run.expect([CODE_INT], "x")
    run.record.verdict = PASS
    section = ledger.section()
    assert section is not None and section.tables[0].rows[0][-1] == "XFAIL (known: error-code-integer)"
    assert not section.failed and run.record.excused == {"error-code-integer": 1}
    assert Ledger().section() is None


def test_a_failing_example_that_cannot_be_replayed_names_the_servers_nondeterminism() -> None:
    from hypothesis import strategies as st

    answers = iter(range(1, 1000))  # a server that answers the same request differently each time
    run = run_for(Ledger(), "test_stop_sequences_end_the_output_before_them", ())

    def check(data: st.DataObject) -> None:
        reference = "x" * next(answers)
        data.draw(st.integers(0, len(reference) - 1), label="stop starts at")
        data.draw(st.sampled_from(list(reference)), label="stop")
        raise AssertionError("the stop sequence is in the output")

    with pytest.raises(ConformanceFailure, match="not deterministic"):
        run.run(check, st.data(), examples=3)
