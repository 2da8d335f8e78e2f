"""A failing example prints its requests as JSON and as a curl line that sends the very same bytes.

The last test runs a property in an inner pytest session (pytester) and reads its output as a
person would. No server is contacted: the exchanges are recorded as a probe records them.
"""

from __future__ import annotations

import json
import shlex

import pytest

from pytest_vllm.conformance.ledger import Ledger
from pytest_vllm.conformance.probe import Exchange, Probe
from pytest_vllm.conformance.profiles import get_profile
from pytest_vllm.conformance.replay import curl_line, describe_request, encode_body
from pytest_vllm.conformance.runner import ConformanceFailure, PropertyRun

BODY = {"model": "m", "messages": [{"role": "user", "content": "Grüß dich 😀 'quoted' $HOME"}], "max_tokens": 4,
        "stream": True}


def test_curl_line_sends_exactly_the_encoded_body() -> None:
    payload = encode_body(BODY)
    line = curl_line("http://127.0.0.1:8000/v1/chat/completions", payload, api_key="EMPTY", stream=True)
    argv = shlex.split(line)
    assert argv[:5] == ["curl", "-sS", "-N", "-X", "POST"]
    assert argv[5] == "http://127.0.0.1:8000/v1/chat/completions"
    assert "Content-Type: application/json" in argv and "Authorization: Bearer EMPTY" in argv
    assert argv[argv.index("--data-binary") + 1].encode() == payload
    assert json.loads(argv[argv.index("--data-binary") + 1]) == BODY


def test_nan_is_sent_as_written_and_replayed_the_same() -> None:
    payload = encode_body({"temperature": float("nan")})
    assert payload == b'{"temperature":NaN}'
    assert shlex.split(curl_line("http://h/v1/completions", payload))[-1] == '{"temperature":NaN}'


def test_describe_shows_pretty_json_then_the_curl_line() -> None:
    text = describe_request("http://h/v1/chat/completions", BODY, encode_body(BODY), api_key="k")
    lines = text.splitlines()
    assert lines[0] == "request POST http://h/v1/chat/completions"
    assert json.loads(text[text.index("{"):text.index("\nreplay:")]) == BODY
    assert lines[-1].startswith("curl -sS -N -X POST http://h/v1/chat/completions")


def test_a_raw_body_is_shown_as_raw() -> None:
    text = describe_request("http://h/v1/completions", None, b'{"prompt": ', api_key=None)
    assert "(raw body, not a JSON document) '{\"prompt\": '" in text
    assert text.splitlines()[-1].endswith("--data-binary '{\"prompt\": '")


def recorded_probe() -> Probe:
    """A probe holding one exchange as if it had sent it (nothing is sent)."""
    probe = Probe("http://127.0.0.1:9")
    probe.history.append(Exchange("POST", "http://127.0.0.1:9/v1/chat/completions", BODY, encode_body(BODY),
                                  "application/json", "EMPTY", status=500, text="boom"))
    return probe


def test_a_failing_example_carries_its_requests_as_json_and_curl() -> None:
    ledger = Ledger()
    run = PropertyRun(model="m", probe=recorded_probe(), record=ledger.record("t::x[base]", "x", "base"),
                      profile=get_profile("ci"))
    with pytest.raises(ConformanceFailure) as info:
        with run.example():
            run.probe.history.append(Exchange("POST", "http://127.0.0.1:9/v1/completions", {"prompt": "p"},
                                              encode_body({"prompt": "p"}), "application/json", None))
            raise ConformanceFailure("a deviation")
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert '"prompt": "p"' in notes and "curl -sS -X POST http://127.0.0.1:9/v1/completions" in notes
    assert ledger.records["t::x[base]"].examples == 1


