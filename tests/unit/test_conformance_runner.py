"""PropertyRun's verdict rules: new deviations fail, known ones xfail once, owned ones are excused.

No server: deviations are handed to ``expect`` as the validators would produce them.
"""

from __future__ import annotations

import pytest
from _pytest.outcomes import XFailed

from pytest_vllm.conformance.deviations import KNOWN_VLLM_DEVIATIONS, Deviation, KnownDeviation
from pytest_vllm.conformance.ledger import Ledger
from pytest_vllm.conformance.probe import Probe
from pytest_vllm.conformance.profiles import get_profile
from pytest_vllm.conformance.runner import ConformanceFailure, PropertyRun

CODE_INT = Deviation("schema.type", "error.code", "expected a string, got integer 400")
GREEDY_N = Deviation("http.status", "", "a valid request got HTTP 400, not 200: n must be 1 when using greedy "
                                        "sampling, got 2.")


def run_for(prop: str, known: tuple[KnownDeviation, ...] = KNOWN_VLLM_DEVIATIONS) -> PropertyRun:
    return PropertyRun(model="m", probe=Probe("http://127.0.0.1:9"), record=Ledger().record(f"t::{prop}", prop, "b"),
                       profile=get_profile("ci"), known=known)


def test_a_new_deviation_fails_naming_it() -> None:
    run = run_for("test_chat")
    with pytest.raises(ConformanceFailure, match=r"choices\[0\]\.index: bad"):
        run.expect([Deviation("choices.index", "choices[0].index", "bad")], "valid chat request")


def test_a_known_deviation_makes_the_property_an_xfail_that_names_it() -> None:
    run = run_for("test_n_above_one_is_accepted_at_temperature_zero")
    run.expect([GREEDY_N], "request")
    with pytest.raises(XFailed, match="greedy-n-refused"):
        run.finish()
    assert run.record.known_deviations == ["greedy-n-refused"]


def test_an_owned_deviation_is_excused_elsewhere_and_reported_by_its_owner() -> None:
    elsewhere = run_for("test_invalid_requests_get_a_4xx_error_object_and_the_server_stays_healthy")
    elsewhere.expect([CODE_INT, CODE_INT], "invalid request")
    elsewhere.finish()  # no xfail: the property's own checks all passed
    assert elsewhere.record.excused == {"error-code-integer": 2}
    owner = run_for("test_error_bodies_follow_the_openai_error_schema")
    owner.expect([CODE_INT], "invalid request")
    with pytest.raises(XFailed, match="error-code-integer"):
        owner.finish()


def test_known_deviations_apply_only_where_given() -> None:
    """A server that is not vLLM gets no allowance: the same finding fails."""
    with pytest.raises(ConformanceFailure, match="error.code"):
        run_for("test_error_bodies_follow_the_openai_error_schema", known=()).expect([CODE_INT], "x")


def test_a_message_pattern_narrows_a_known_deviation() -> None:
    other_400 = Deviation("http.status", "", "a valid request got HTTP 400, not 200: something else")
    with pytest.raises(ConformanceFailure):
        run_for("test_chat").expect([other_400], "valid chat request")


def test_a_deviation_seen_on_an_older_vllm_applies_only_before_the_version_that_lost_it() -> None:
    from pytest_vllm.conformance.deviations import applicable

    def keys(version: str | None) -> set[str]:
        return {k.key for k in applicable(KNOWN_VLLM_DEVIATIONS, version)}

    assert {"connection-dropped-after-error", "malformed-request-500"} <= keys("0.24.0+cu130")
    assert {"connection-dropped-after-error", "malformed-request-500"} <= keys(None)  # version unknown
    assert not {"connection-dropped-after-error", "malformed-request-500"} & keys("0.32.0")
    assert not {"connection-dropped-after-error", "malformed-request-500"} & keys("0.100.1")
    assert "error-code-integer" in keys("0.32.0") and "error-code-integer" in keys("0.24.0")


def test_a_500_is_known_only_for_the_body_that_vllm_024_fails_on() -> None:
    run = run_for("test_error_bodies_follow_the_openai_error_schema")
    run.expect([Deviation("http.5xx", "", "HTTP 500 for a client's request (a server error): "
                                          '{"error": {"message": "\'list\' object has no attribute \'get\'"}}')], "x")
    with pytest.raises(ConformanceFailure, match="HTTP 500"):
        run.expect([Deviation("http.5xx", "", "HTTP 500 for a client's request (a server error): boom")], "y")


class DroppingServer:
    """A test double for what vLLM 0.32 no longer does (0.24 did, on real requests): answer the first
    request of each connection, then close it when the next request comes, without answering and
    without 'Connection: close'. A real server cannot be made to drop connections on cue."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    @staticmethod
    def _connection(conn) -> None:  # type: ignore[no-untyped-def]
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
            conn.recv(65536)  # the next request on this connection: dropped unanswered


def test_a_dropped_pooled_connection_is_sent_again_and_judged_as_a_deviation() -> None:
    server = DroppingServer()
    probe = Probe(server.url)
    assert probe.get("/first").status == 200
    again = probe.get("/second")
    assert again.status == 200 and again.dropped_connection and "RemoteProtocolError" in again.dropped_connection

    strict = PropertyRun(model="m", probe=probe, record=Ledger().record("t::p", "p", "b"), profile=get_profile("ci"))
    with pytest.raises(ConformanceFailure, match=r"http.connection-dropped"):
        with strict.example():
            probe.get("/third")
            probe.get("/fourth")

    lenient = run_for("test_odd_requests_never_get_a_5xx")
    lenient.probe = probe
    with lenient.example():
        probe.get("/fifth")
        probe.get("/sixth")
    with pytest.raises(XFailed, match="connection-dropped-after-error"):
        lenient.finish()
    probe.close()
