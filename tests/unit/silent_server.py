"""A TCP server that reads a request and never answers: what a hung engine looks like to a client
(a test double: a real vLLM cannot be made to hang on cue within a unit test's time). Shared by the
load generator's and the accuracy client's deadline tests."""

from __future__ import annotations

import asyncio


async def silent_server() -> tuple[asyncio.Server, int]:
    """The server (use it as ``async with``) and its port."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            pass
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]
