"""New blocks reach miners through bitcoind's ZMQ hashblock feed, and through the long-poll
when ZMQ is off or its endpoint is dead. Real regtest bitcoind, real Stratum connection.

Each test leaves one fast way for the block to arrive (the long-poll or ZMQ off, the poll
every 5 s, the refresh every 100 s) and asserts that the clean ``mining.notify`` for the
mined block came through it: the ``new_block`` line for that block hash names the source.
A block credited to the poll (a ZMQ message lost to a fresh subscription, a poll tick in the
same millisecond) is followed by another, at most 5. The feed's own reconnection, gap and
malformed-message handling run against a ZMQ publisher process of the test's own (stopped
with SIGSTOP to go silent). Wall time: 10-20 s on a busy 2-core machine (the managed pool's
own bitcoind and its 101 blocks, and the ~3 s until a silent publisher is dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import sys
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
from pool.node.binaries import Binaries
from pool.node.managed import ManagedNode, free_port, free_zmq_endpoint
from pool.node.zmq_feed import HashBlockFeed
from tests.integration.harness import RawClient, pool_config, start_pool, wait_for, wallet_address
from tests.unit.test_metrics import parse_exposition

pytestmark = pytest.mark.integration

# The best-block poll is slow next to ZMQ and the long-poll (milliseconds) but bounds the wait
# when a ZMQ message is lost (one published before bitcoind had the new subscription).
SLOW = {"poll_interval_seconds": 5.0, "template_refresh_seconds": 100.0}
ATTEMPTS = 5  # blocks mined at most until one is announced by the source under test
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
    """Mine one block on the node; the block's hash and the clean mining.notify on top of it."""
    hashes = await rpc_call("generatetoaddress", 1, MINE_TO)
    while True:
        notify = await client.notification("mining.notify", timeout=timeout)
        if notify["params"][8] is True and prev_hash(notify) == hashes[0]:
            return hashes[0], notify


def prev_hash(notify: dict[str, Any]) -> str:
    """mining.notify's prevhash (32-bit words byte-swapped) in display order."""
    prev = bytes.fromhex(notify["params"][1])
    words = b"".join(prev[i : i + 4][::-1] for i in range(0, 32, 4))
    return words[::-1].hex()


async def block_through(
    app: PoolApp, client: RawClient, source: str
) -> tuple[list[str], list[dict[str, Any]]]:
    """Mine blocks until one reaches the miner announced by ``source`` (at most ``ATTEMPTS``:
    a message lost to a fresh subscription, or a poll tick landing in the same millisecond,
    credits another source). Returns the sources of the blocks mined, in order, and the log."""
    assert app.rpc is not None
    seen: list[str] = []
    with capture_logs() as logs:
        for _ in range(ATTEMPTS):
            block_hash, _notify = await clean_notify_after_block(client, app.rpc.call)
            new_blocks = [e for e in logs if e["event"] == "new_block"]
            announced = [e["source"] for e in new_blocks if e["prev"] == block_hash]
            assert len(announced) == 1, f"new_block lines for {block_hash}: {new_blocks}"
            seen.append(announced[0])
            if announced[0] == source:
                return seen, logs
    raise AssertionError(f"no block of {ATTEMPTS} reached the miner through {source}: {seen}")


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
        seen, _logs = await block_through(app, client, "zmq")
        assert feed.messages >= 1
        after = app.watcher.new_blocks  # type: ignore[union-attr]
        assert after["zmq"] == before["zmq"] + 1
        assert sum(after.values()) == sum(before.values()) + len(seen)  # one credit per block
    finally:
        await client.close()
    assert await metric_reaches(app, NEW_BLOCKS, after["zmq"], source="zmq") == after["zmq"]
    fams = await metrics(app)
    assert fams["stratum_pool_zmq_connected"].value() == 1
    assert fams["stratum_pool_zmq_messages_total"].value(kind="ok") >= 1


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
        await wait_for(
            lambda: (feed.sequence.last or 0) >= 1,
            30,
            "ZMQ sequence past 0",
            lambda: feed.sequence.last,
        )
        resets = feed.sequence.resets
        node = app.node
        with capture_logs() as logs:
            node.process.send_signal(signal.SIGKILL)
            await wait_for(lambda: node.restarts == restarts + 1, 90, "the node restarted")
            await wait_for(lambda: feed.connects > connects, 30, "ZMQ reconnected")
        events = [e["event"] for e in logs]
        assert "zmq_disconnected" in events and "zmq_connected" in events
        _seen, after = await block_through(app, client, "zmq")
        assert "zmq_sequence_reset" in [e["event"] for e in after]
        assert feed.sequence.resets == resets + 1
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
            seen, logs = await block_through(app, client, "longpoll")
            assert "zmq" not in seen
            # each clean job's fan-out is timed in its log line (the bench reads it)
            published = [e for e in logs if e["event"] == "job_published" and e["clean"]]
            assert published and all(e["miners"] == 1 for e in published), published
            assert all(0 <= e["fanout_ms"] < 10_000 for e in published), published
            assert app.watcher.wait_method == "waitfornewblock"
            if app.watcher.zmq is not None:
                assert not app.watcher.zmq.connected and app.watcher.zmq.messages == 0
        finally:
            await client.close()
        assert await metric_reaches(app, NEW_BLOCKS, 1, source="longpoll") == 1
        fams = await metrics(app)
        assert fams["stratum_pool_new_blocks_total"].value(source="zmq") == 0
    finally:
        await app.stop()


async def test_external_node_auto_finds_its_hashblock_address(
    bitcoind_binaries: Binaries, tmp_path: Path
) -> None:
    """node.zmq_hashblock = "auto" on an external node: the pool asks bitcoind
    (getzmqnotifications) where it publishes hashblock and subscribes there."""
    endpoint = free_zmq_endpoint()
    node = ManagedNode(tmp_path / "node", binaries=bitcoind_binaries, zmq_hashblock=endpoint)
    await node.start()
    try:
        base = pool_config(node, tmp_path / "pool", MINE_TO)
        config = dataclasses.replace(
            base, node=dataclasses.replace(base.node, longpoll=False, **SLOW)
        )
        assert config.node.zmq_hashblock == "auto"
        app = await start_pool(config)
        try:
            assert app.zmq_endpoint == endpoint
            await wait_for(lambda: feed_of(app).connected, 30, "the ZMQ subscription connected")
            client = await RawClient.connect(app.server.bound_ports[0])  # type: ignore[union-attr]
            try:
                await client.handshake(f"{MINE_TO}.auto")
                seen, _logs = await block_through(app, client, "zmq")
                assert seen[-1] == "zmq"
            finally:
                await client.close()
        finally:
            await app.stop()
    finally:
        await node.stop()


# -- the feed against a publisher of the test's own ------------------------------------------------
PUBLISHER = """
import struct, sys, time, zmq
sock = zmq.Context().socket(zmq.PUB)
sock.bind(sys.argv[1])
for line in sys.stdin:  # "SEQ" publishes a hashblock with that sequence; "bad" a malformed one
    word = line.strip()
    if word == "bad":
        sock.send_multipart([b"hashblock", b"short"])
    else:
        seq = int(word)
        sock.send_multipart([b"hashblock", seq.to_bytes(32, "big"), struct.pack("<I", seq)])
    print("sent", flush=True)
"""


async def test_feed_notices_a_silent_publisher_reconnects_and_logs_gaps() -> None:
    """A publisher that stops answering without closing (SIGSTOP: no TCP reset) is dropped
    after the missed heartbeats and reconnected when it answers again; lost messages show as
    a sequence gap, a malformed one is counted and skipped. The event loop stays free."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        PUBLISHER,
        endpoint,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    heard: list[str] = []
    feed = HashBlockFeed(endpoint, heard.append, heartbeat_seconds=1.0)
    task = asyncio.create_task(feed.run())

    async def publish(word: str) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(f"{word}\n".encode())
        await proc.stdin.drain()
        assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"sent\n"

    async def until_heard(n: int, word: str) -> None:
        """Publish ``word`` again until ``n`` messages were heard (the first after a connect
        can be lost: the subscription travels to the publisher after the handshake)."""
        while len(heard) < n:
            await publish(word)
            with contextlib.suppress(AssertionError):
                await wait_for(lambda: len(heard) >= n, 1.0, "")

    try:
        with capture_logs() as logs:
            await wait_for(lambda: feed.connected, 30, "the feed connected")
            await until_heard(1, "7")
            await publish("bad")
            await wait_for(lambda: feed.bad_messages == 1, 30, "the malformed message counted")
            before = len(heard)  # "7" may have been heard more than once (sent again)
            await publish("10")  # 8 and 9 never sent: a gap of 2
            await wait_for(lambda: len(heard) > before, 30, "the message after the gap")
            assert (feed.sequence.gaps, feed.sequence.missed) == (1, 2)
            proc.send_signal(signal.SIGSTOP)
            stopped = time.monotonic()
            # the loop keeps running while the feed waits: a timer fires on time
            ticks = 0
            while feed.connected:
                await asyncio.sleep(0.1)
                ticks += 1
                assert time.monotonic() - stopped < 60, "silent publisher never dropped"
            noticed = time.monotonic() - stopped
            proc.send_signal(signal.SIGCONT)
            await wait_for(lambda: feed.connected, 60, "the feed reconnected")
            await until_heard(len(heard) + 1, "11")
        assert ticks >= 10 and 2.0 <= noticed <= 30.0, noticed
        assert feed.connects >= 2 and feed.disconnects >= 1
        events = [e["event"] for e in logs]
        assert {"zmq_bad_message", "zmq_sequence_gap", "zmq_disconnected"} <= set(events)
        gap = next(e for e in logs if e["event"] == "zmq_sequence_gap")
        assert gap["missed"] == 2 and gap["sequence"] == 10
        assert heard[0] == (7).to_bytes(32, "big").hex()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        await proc.wait()
