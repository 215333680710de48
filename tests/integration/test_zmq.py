"""New blocks reach miners through bitcoind's ZMQ hashblock feed, and through the long-poll
when ZMQ is off or its endpoint is dead. Real regtest bitcoind, real Stratum connection.

Each test leaves only one way for the block to arrive in time (the others off or slow: poll
every 60 s, refresh every 100 s), so the clean ``mining.notify`` proves that way works and
the ``source`` asserted is the only one it can be. Wall time: about 30 s on a busy 2-core
machine (the managed pool's own bitcoind start and its 101 blocks dominate).
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from structlog.testing import capture_logs

from pool.app import PoolApp
from pool.config import ApiConfig, Config, NodeConfig, PoolConfig, PortConfig, StratumConfig
from pool.node.managed import ManagedNode, free_port
from tests.integration.harness import RawClient, pool_config, start_pool, wait_for, wallet_address
from tests.unit.test_metrics import parse_exposition

pytestmark = pytest.mark.integration

SLOW = {"poll_interval_seconds": 60.0, "template_refresh_seconds": 100.0}
NEW_BLOCKS = "stratum_pool_new_blocks_total"
MINE_TO = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"  # nobody's: the pool's wallet unchanged


async def metrics(app: PoolApp) -> dict[str, Any]:
    assert app.api is not None
    url = f"http://127.0.0.1:{app.api.port}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        return parse_exposition(await resp.text())


async def metric_reaches(app: PoolApp, name: str, at_least: float, **labels: str) -> float:
    """The /metrics value of ``name`` once it reaches ``at_least`` (the rendered text is cached
    for a moment)."""
    seen: list[float] = []
    deadline = time.monotonic() + 30
    while not seen or seen[-1] < at_least:
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}{labels}: saw {seen[-3:]}, expected >= {at_least}")
        if seen:
            await asyncio.sleep(0.1)
        fams = await metrics(app)
        seen.append(float(fams[name].value(**labels)))
    return seen[-1]


async def clean_notify_after_block(
    client: RawClient, rpc_call: Any, timeout: float = 60.0
) -> tuple[str, dict[str, Any]]:
    """Mine one block on the node; the next clean mining.notify (and the block's hash)."""
    hashes = await rpc_call("generatetoaddress", 1, MINE_TO)
    while True:
        notify = await client.notification("mining.notify", timeout=timeout)
        if notify["params"][8] is True:
            return hashes[0], notify


def sources(logs: list[dict[str, Any]]) -> list[str]:
    return [e["source"] for e in logs if e["event"] == "new_block"]


# -- the managed node: ZMQ on by default -----------------------------------------------------------
@pytest_asyncio.fixture(scope="module")
async def zmq_pool(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PoolApp]:
    """A pool with its managed bitcoind (node.zmq_hashblock = "auto"); no long-poll and slow
    polls: only ZMQ can announce a block within a test's wait."""
    data = tmp_path_factory.mktemp("zmq-pool")
    config = Config(
        node=NodeConfig(mode="managed", longpoll=False, restart_backoff_seconds=0.2, **SLOW),
        pool=PoolConfig(data_dir=str(data)),
        stratum=StratumConfig(ports=(PortConfig(port=0, start_difficulty=1e-5),)),
        api=ApiConfig(port=0),
    )
    app = await start_pool(config)
    try:
        yield app
    finally:
        await app.stop()


def feed_of(app: PoolApp) -> Any:
    assert app.watcher is not None and app.watcher.zmq is not None
    return app.watcher.zmq


async def test_managed_node_publishes_hashblock_and_a_block_reaches_miners_through_zmq(
    zmq_pool: PoolApp,
) -> None:
    app = zmq_pool
    assert app.node is not None and app.rpc is not None
    assert app.zmq_endpoint.startswith("tcp://127.0.0.1:")
    assert f"-zmqpubhashblock={app.zmq_endpoint}" in app.node.command(Path("bitcoind"))
    published = await app.rpc.call("getzmqnotifications")
    assert [(n["type"], n["address"]) for n in published] == [("pubhashblock", app.zmq_endpoint)]
    feed = feed_of(app)
    await wait_for(lambda: feed.connected, 30, "the ZMQ subscription connected")
    client = await RawClient.connect(app.server.bound_ports[0])  # type: ignore[union-attr]
    try:
        await client.handshake(f"{MINE_TO}.zmq")
        before = dict(app.watcher.new_blocks)  # type: ignore[union-attr]
        with capture_logs() as logs:
            block_hash, notify = await clean_notify_after_block(client, app.rpc.call)
        assert sources(logs) == ["zmq"]
        # the job is on top of the mined block (prevhash is sent in 4-byte-word order)
        prev = bytes.fromhex(notify["params"][1])
        words = b"".join(prev[i : i + 4][::-1] for i in range(0, 32, 4))
        assert words[::-1].hex() == block_hash
        assert feed.messages >= 1
        after = app.watcher.new_blocks  # type: ignore[union-attr]
        assert after["zmq"] == before["zmq"] + 1
        assert sum(after.values()) == sum(before.values()) + 1
    finally:
        await client.close()
    assert await metric_reaches(app, NEW_BLOCKS, after["zmq"], source="zmq") == after["zmq"]
    fams = await metrics(app)
    assert fams["stratum_pool_zmq_connected"].value() == 1
    assert fams["stratum_pool_zmq_missed_messages_total"].value() == 0


async def test_killed_node_comes_back_and_zmq_resubscribes_by_itself(zmq_pool: PoolApp) -> None:
    """SIGKILL the managed node: it is restarted on the same ZMQ endpoint, the subscription
    reconnects by itself (no pool action), the sequence going back to 0 is logged, and the
    next block reaches miners through ZMQ again."""
    app = zmq_pool
    assert app.node is not None and app.node.process is not None and app.rpc is not None
    feed = feed_of(app)
    connects, restarts = feed.connects, app.node.restarts
    client = await RawClient.connect(app.server.bound_ports[0])  # type: ignore[union-attr]
    try:
        await client.handshake(f"{MINE_TO}.zmq2")
        for _ in range(2):  # heard through ZMQ before the kill: its sequence is past 0
            await clean_notify_after_block(client, app.rpc.call)
        assert feed.sequence.last is not None and feed.sequence.last >= 1
        resets = feed.sequence.resets
        with capture_logs() as logs:
            app.node.process.send_signal(signal.SIGKILL)
            await wait_for(lambda: app.node.restarts == restarts + 1, 90, "the node restarted")  # type: ignore[union-attr]
            await wait_for(lambda: feed.connects > connects, 30, "ZMQ reconnected")
            zmq_before = app.watcher.new_blocks["zmq"]  # type: ignore[union-attr]
            # A message published before the new subscription reached bitcoind is lost (ZMQ's
            # slow joiner): mine until one arrives through ZMQ (the long-poll is off).
            for _attempt in range(10):
                await clean_notify_after_block(client, app.rpc.call)
                if app.watcher.new_blocks["zmq"] > zmq_before:  # type: ignore[union-attr]
                    break
        assert app.watcher.new_blocks["zmq"] > zmq_before  # type: ignore[union-attr]
        events = [e["event"] for e in logs]
        assert "zmq_disconnected" in events and "zmq_connected" in events
        assert "zmq_sequence_reset" in events and feed.sequence.resets == resets + 1
    finally:
        await client.close()
    assert await metric_reaches(app, "stratum_pool_zmq_reconnects_total", 1) >= 1


# -- an external node: long-poll when ZMQ is off or dead -------------------------------------------
@pytest.mark.parametrize("zmq", ["", "dead"])
async def test_without_zmq_the_block_reaches_miners_through_the_longpoll(
    zmq: str, regtest_node: ManagedNode, tmp_path: Path
) -> None:
    """ZMQ off (""), or configured on an endpoint where nothing listens: the long-poll brings
    the block; the dead endpoint never connects and holds nothing up."""
    endpoint = f"tcp://127.0.0.1:{free_port()}" if zmq == "dead" else ""
    base = pool_config(regtest_node, tmp_path / "pool", await wallet_address(regtest_node))
    config = dataclasses.replace(
        base, node=dataclasses.replace(base.node, zmq_hashblock=endpoint, **SLOW)
    )
    app = await start_pool(config)
    try:
        assert app.watcher is not None and app.rpc is not None
        assert (app.watcher.zmq is None) == (zmq == "")
        client = await RawClient.connect(app.server.bound_ports[0])  # type: ignore[union-attr]
        try:
            await client.handshake(f"{MINE_TO}.longpoll")
            with capture_logs() as logs:
                await clean_notify_after_block(client, app.rpc.call)
            assert sources(logs) == ["longpoll"]
            if app.watcher.zmq is not None:
                assert not app.watcher.zmq.connected and app.watcher.zmq.messages == 0
        finally:
            await client.close()
        assert await metric_reaches(app, NEW_BLOCKS, 1, source="longpoll") == 1
        fams = await metrics(app)
        assert fams["stratum_pool_new_blocks_total"].value(source="zmq") == 0
    finally:
        await app.stop()
