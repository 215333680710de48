"""The bundled miner keeps mining when the pool goes away, however the connection ends.

A pool process that is SIGKILLed while the miner's submits sit unread in its socket makes the
kernel answer with a reset (RST), not an orderly close. Here a real TCP listener resets the
first connection the same way (SO_LINGER 0), so the miner's read raises ECONNRESET.
"""

from __future__ import annotations

import asyncio
import io
import socket
import struct

import pytest

from pool.miner import Miner, MinerOptions

pytestmark = pytest.mark.integration


async def test_miner_reconnects_after_a_connection_reset() -> None:
    connections: list[bytes] = []
    second = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first_line = await reader.readline()  # the miner's mining.subscribe
        connections.append(first_line)
        if len(connections) == 1:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()  # close with linger 0: the kernel sends RST
            return
        second.set()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    out = io.StringIO()
    miner = Miner(MinerOptions(host="127.0.0.1", port=port, user="w", duration=10.0), out=out)
    run = asyncio.create_task(miner.run())
    try:
        async with asyncio.timeout(8):
            await second.wait()
    finally:
        miner.stopping.set()
        await run
        server.close()
        await server.wait_closed()
    assert len(connections) >= 2
    assert all(b"mining.subscribe" in line for line in connections)
    assert "connection lost" in out.getvalue() and "ConnectionResetError" in out.getvalue()
