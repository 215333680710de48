"""Every limit is a named config key, enforced: each test starts a pool with one limit low."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from pool.app import PoolApp
from pool.config import LimitsConfig
from pool.node.managed import ManagedNode
from tests.integration.harness import (
    RawClient,
    pool_config,
    start_pool,
    wait_for,
    wallet_address,
)

pytestmark = pytest.mark.integration


@asynccontextmanager
async def pool_with(
    node: ManagedNode, tmp_path: Path, **limits: object
) -> AsyncIterator[tuple[PoolApp, int, str]]:
    address = await wallet_address(node)
    config = pool_config(node, tmp_path, address, limits=LimitsConfig(**limits))  # type: ignore[arg-type]
    app = await start_pool(config)
    assert app.server is not None
    try:
        yield app, app.server.bound_ports[0], address
    finally:
        await app.stop()


async def closed_by_pool(client: RawClient, timeout: float = 10.0) -> bool:
    """True when the pool closes the connection (EOF or reset) within the timeout."""
    try:
        async with asyncio.timeout(timeout):
            while await client.reader.read(65536):
                pass
    except ConnectionError:
        return True  # reset
    except TimeoutError:
        return False
    return True  # EOF


async def test_connections_per_ip(regtest_node: ManagedNode, tmp_path: Path) -> None:
    async with pool_with(regtest_node, tmp_path, max_connections_per_ip=2) as (_app, port, addr):
        first, second = await RawClient.connect(port), await RawClient.connect(port)
        await first.handshake(f"{addr}.one")
        await second.handshake(f"{addr}.two")
        third = await RawClient.connect(port)  # both slots authorized: refused
        assert await closed_by_pool(third, 5)
        second.send(9, "mining.extranonce.subscribe", [])
        assert (await second.response(9))["result"] is True  # the first two still work
        await first.close()
        await wait_for(lambda: len(_app.server.sessions) == 1, 10, "a freed slot")  # type: ignore[union-attr]
        fourth = await RawClient.connect(port)
        fourth.send(1, "mining.subscribe", [])
        assert (await fourth.response(1))["result"] is not None  # a slot was freed
        for c in (second, fourth):
            await c.close()


async def test_half_open_connections_never_lock_an_ip_out(
    regtest_node: ManagedNode, tmp_path: Path
) -> None:
    """At the per-IP cap, or over limits.max_unauthorized_per_ip, a new connection drops the
    IP's oldest one that is still not authorized: a farm behind one IP always gets in."""
    async with pool_with(
        regtest_node, tmp_path, max_connections_per_ip=8, max_unauthorized_per_ip=3
    ) as (app, port, addr):
        assert app.server is not None
        miner = await RawClient.connect(port)
        await miner.handshake(f"{addr}.farm")
        silent = [await RawClient.connect(port) for _ in range(3)]
        await wait_for(lambda: len(app.server.sessions) == 4, 10, "4 sessions")  # type: ignore[union-attr]
        late = await RawClient.connect(port)  # the 4th half-open one: the oldest goes
        assert await closed_by_pool(silent[0], 5)
        await late.handshake(f"{addr}.late")  # and the new miner logs in
        silent += [await RawClient.connect(port) for _ in range(10)]  # a half-open flood
        for c in silent[1:-3]:  # all but the newest 3, oldest first
            assert await closed_by_pool(c, 10)
        for c in (miner, late):
            c.send(20, "mining.extranonce.subscribe", [])
            assert (await c.response(20))["result"] is True
            await c.close()


async def test_max_connections(regtest_node: ManagedNode, tmp_path: Path) -> None:
    async with pool_with(regtest_node, tmp_path, max_connections=1) as (_app, port, _):
        first = await RawClient.connect(port)
        first.send(1, "mining.subscribe", [])
        await first.response(1)
        second = await RawClient.connect(port)
        assert await closed_by_pool(second, 5)
        await first.close()


async def test_handshake_timeout(regtest_node: ManagedNode, tmp_path: Path) -> None:
    async with pool_with(regtest_node, tmp_path, handshake_timeout_seconds=0.5) as (_, port, _a):
        silent = await RawClient.connect(port)
        assert await closed_by_pool(silent, 5)


async def test_idle_timeout_after_authorize(regtest_node: ManagedNode, tmp_path: Path) -> None:
    async with pool_with(regtest_node, tmp_path, idle_timeout_seconds=1.0) as (_, port, address):
        client = await RawClient.connect(port)
        await client.handshake(f"{address}.idle")
        assert await closed_by_pool(client, 5)


async def test_workers_per_connection(regtest_node: ManagedNode, tmp_path: Path) -> None:
    async with pool_with(regtest_node, tmp_path, max_workers_per_connection=1) as (_, port, addr):
        client = await RawClient.connect(port)
        await client.handshake(f"{addr}.one")
        client.send(3, "mining.authorize", [f"{addr}.two", "x"])
        reply = await client.response(3)
        assert reply["error"][0] == 24 and "max_workers_per_connection" in reply["error"][1]
        await client.close()


async def test_invalid_shares_in_a_row(regtest_node: ManagedNode, tmp_path: Path) -> None:
    async with pool_with(regtest_node, tmp_path, max_invalid_shares_in_row=3) as (_, port, addr):
        client = await RawClient.connect(port)
        await client.handshake(f"{addr}.bad")
        for i in range(3):
            client.send(10 + i, "mining.submit", [f"{addr}.bad", "nope", "00", "00", "00"])
        for i in range(3):
            assert (await client.response(10 + i))["error"][0] == 21
        assert await closed_by_pool(client, 5)


async def test_slow_reader_is_dropped(regtest_node: ManagedNode, tmp_path: Path) -> None:
    async with pool_with(regtest_node, tmp_path, send_queue_bytes=4096) as (app, port, _):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        _reader, writer = await asyncio.open_connection(sock=sock)
        request = b'{"id": 1, "method": "mining.extranonce.subscribe", "params": []}\n'
        assert app.server is not None

        def sessions() -> int:
            return len(app.server.sessions)  # type: ignore[union-attr]

        await asyncio.sleep(0.2)
        assert sessions() == 1
        try:
            for _ in range(200):  # answers pile up in the pool because we never read
                writer.write(request * 500)
                await asyncio.wait_for(writer.drain(), 5)
                if sessions() == 0:
                    break
        except (ConnectionError, TimeoutError):
            pass
        for _ in range(50):
            if sessions() == 0:
                break
            await asyncio.sleep(0.1)
        assert sessions() == 0, "the pool kept a connection that does not read its answers"
        writer.close()


async def test_connection_rate_per_ip(regtest_node: ManagedNode, tmp_path: Path) -> None:
    async with pool_with(
        regtest_node, tmp_path, connect_burst_per_ip=3, connect_rate_per_ip=0.01
    ) as (_, port, _a):
        clients = [await RawClient.connect(port) for _ in range(4)]
        assert await closed_by_pool(clients[3], 5)  # over the burst: refused
        clients[0].send(1, "mining.subscribe", [])
        assert (await clients[0].response(1))["result"] is not None
        for c in clients[:3]:
            await c.close()


async def test_slow_loris_is_cut_by_the_idle_timeout(
    regtest_node: ManagedNode, tmp_path: Path
) -> None:
    """Bytes that never make a useful request do not keep a connection: one byte at a time
    of a line that never ends, and garbage lines, are cut at limits.idle_timeout_seconds."""
    async with pool_with(regtest_node, tmp_path, idle_timeout_seconds=2.0) as (_, port, addr):
        client = await RawClient.connect(port)
        await client.handshake(f"{addr}.loris")
        started = asyncio.get_running_loop().time()

        async def drip() -> None:
            with contextlib.suppress(ConnectionError):
                for _ in range(100):
                    client.send_raw(b"{")
                    await client.writer.drain()
                    await asyncio.sleep(0.2)

        dripping = asyncio.create_task(drip())
        assert await closed_by_pool(client, 15)
        dripping.cancel()
        assert asyncio.get_running_loop().time() - started < 10


async def test_workers_per_ip(regtest_node: ManagedNode, tmp_path: Path) -> None:
    async with pool_with(regtest_node, tmp_path, max_workers_per_ip=2) as (_, port, addr):
        client = await RawClient.connect(port)
        await client.handshake(f"{addr}.one")
        client.send(3, "mining.authorize", [f"{addr}.two", "x"])
        assert (await client.response(3))["result"] is True
        client.send(4, "mining.authorize", [f"{addr}.three", "x"])
        reply = await client.response(4)
        assert reply["error"][0] == 24 and "max_workers_per_ip" in reply["error"][1]
        await client.close()


async def test_invalid_share_flood_gets_a_temporary_ip_ban(
    regtest_node: ManagedNode, tmp_path: Path
) -> None:
    async with pool_with(
        regtest_node, tmp_path, invalid_share_burst=10, ban_strikes=2, ban_seconds=30.0
    ) as (app, port, addr):
        assert app.server is not None
        for _ in range(2):
            client = await RawClient.connect(port)
            await client.handshake(f"{addr}.bad")
            for i in range(20):
                client.send(10 + i, "mining.submit", [f"{addr}.bad", "nope", "00", "00", "00"])
            assert await closed_by_pool(client, 5)
        bans = app.server.temp_bans()
        assert [b.ip for b in bans] == ["127.0.0.1"] and bans[0].seconds == 30.0
        refused = await RawClient.connect(port)
        assert await closed_by_pool(refused, 5)
