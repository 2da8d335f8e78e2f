"""An accuracy request's total deadline: a server that accepts a request and then says nothing
fails the evaluation at the deadline, naming the hang, instead of waiting on it for ever."""

from __future__ import annotations

import asyncio
import time

import pytest
from silent_server import silent_server

from pytest_vllm.accuracy.client import EvalClient, EvalRequestError
from pytest_vllm.server.handle import ServerHandle


def test_a_silent_server_fails_the_request_at_its_deadline() -> None:
    async def scenario() -> tuple[float, str]:
        server, port = await silent_server()
        handle = ServerHandle(role="compressed", url=f"http://127.0.0.1:{port}", model="m")
        async with server:
            started = time.perf_counter()
            with pytest.raises(EvalRequestError) as caught:
                async with EvalClient(handle, concurrency=2, deadline_s=0.5) as client:
                    await client.complete("2 + 2 =", max_tokens=4)
            return time.perf_counter() - started, str(caught.value)

    took, message = asyncio.run(scenario())
    assert 0.4 < took < 5, took
    assert "no answer within its total deadline of 0.5 s" in message
    assert "the server hangs" in message and "compressed" in message

