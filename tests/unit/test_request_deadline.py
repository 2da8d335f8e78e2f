"""A request's total deadline: a server that accepts and then says nothing fails it in time, and
the requests after it are not sent to the hung server."""

from __future__ import annotations

import asyncio
import time

from silent_server import silent_server

from pytest_vllm.load.client import (
    PER_TOKEN_BOUND_S,
    PREFILL_ALLOWANCE_S,
    HungServer,
    PreparedRequest,
    RequestRecord,
    new_session,
    request_deadline,
    send_streaming,
)
from pytest_vllm.load.workload import Workload


def test_the_deadline_grows_with_the_output_length() -> None:
    short, long = (Workload(name="w", num_requests=1, input_len=8, output_len=n, concurrency=1) for n in (4, 64))
    assert request_deadline(short) == PREFILL_ALLOWANCE_S + 4 * PER_TOKEN_BOUND_S
    assert request_deadline(long) - request_deadline(short) == 60 * PER_TOKEN_BOUND_S


def test_a_silent_server_fails_the_request_at_its_deadline_and_the_next_is_not_sent() -> None:
    async def scenario() -> tuple[RequestRecord, RequestRecord, float]:
        server, port = await silent_server()
        request = PreparedRequest("/v1/completions", b"{}", chat=False, deadline_s=0.5)
        first, second, hung = RequestRecord(0), RequestRecord(1), HungServer()
        async with server, new_session() as session:
            started = time.perf_counter()
            await send_streaming(session, f"http://127.0.0.1:{port}", request, first, hung)
            took = time.perf_counter() - started
            await send_streaming(session, f"http://127.0.0.1:{port}", request, second, hung)
        return first, second, took

    first, second, took = asyncio.run(scenario())
    assert 0.4 < took < 5, took
    assert first.error is not None and "within its total deadline of 0.5 s" in first.error
    assert "the server hangs" in first.error
    assert second.error is not None
    assert second.error.startswith("not sent: an earlier request passed its total deadline")
