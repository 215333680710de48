"""The Stratum server end to end: real TCP, a real regtest bitcoind, the pool in-process."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from pool.app import PoolApp
from pool.bitcoin import display_to_hash
from pool.config import ChainConfig, SimulationConfig
from pool.jobs import prevhash_to_stratum
from pool.node.managed import ManagedNode
from tests.integration.harness import (
    RawClient,
    pool_config,
    solve,
    start_pool,
    wallet_address,
)

pytestmark = pytest.mark.integration

# Blocks only at a simulated difficulty far above the shares tests send: jobs stay live.
NO_BLOCKS = ChainConfig(simulation=SimulationConfig(enabled=True, initial_difficulty=1e9))


@pytest_asyncio.fixture(scope="module")
async def pool(
    regtest_node: ManagedNode, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[PoolApp]:
    address = await wallet_address(regtest_node)
    config = pool_config(regtest_node, tmp_path_factory.mktemp("pool"), address)
    config = dataclasses.replace(config, chain=NO_BLOCKS)
    app = await start_pool(config)
    try:
        yield app
    finally:
        await app.stop()


def port_of(app: PoolApp) -> int:
    assert app.server is not None
    return app.server.bound_ports[0]


@pytest_asyncio.fixture
async def miner_address(regtest_node: ManagedNode) -> str:
    return await wallet_address(regtest_node)


async def test_handshake_difficulty_then_notify(pool: PoolApp, miner_address: str) -> None:
    client = await RawClient.connect(port_of(pool))
    try:
        diff, notify = await client.handshake(f"{miner_address}.rig1")
        assert diff == pytest.approx(1e-5)
        params = notify["params"]
        assert len(params) == 9 and params[8] is True
        assert notify["id"] is None
        # set_difficulty came before the notify it governs
        methods = [m.get("method") for m in client.messages]
        assert methods.index("mining.set_difficulty") < methods.index("mining.notify")
    finally:
        await client.close()


async def test_every_bad_share_gets_its_code_and_message(pool: PoolApp, miner_address: str) -> None:
    port = port_of(pool)
    # Not subscribed (25): submit straight away.
    early = await RawClient.connect(port)
    early.send(7, "mining.submit", ["x", "1", "00000000", "00000000", "00000000"])
    msg = await early.response(7)
    assert msg["error"][0] == 25 and "subscribe" in msg["error"][1]
    await early.close()

    client = await RawClient.connect(port)
    worker = f"{miner_address}.bad"
    try:
        diff, notify = await client.handshake(worker)
        params = notify["params"]
        en2 = bytes(client.extranonce2_size)
        good = solve(params, client.extranonce1, en2, diff)
        cases = [
            (
                "unauthorized",
                [f"{miner_address}.other", *good.params(worker)[1:]],
                24,
                "unauthorized",
            ),
            ("stale", [worker, "deadbeef", *good.params(worker)[2:]], 21, "job not found"),
            (
                "extranonce2 size",
                [worker, good.job_id, "00", good.ntime, good.nonce],
                20,
                "extranonce2",
            ),
            (
                "malformed hex",
                [worker, good.job_id, "zz" * client.extranonce2_size, good.ntime, good.nonce],
                20,
                "extranonce2",
            ),
            (
                "nonce",
                [worker, good.job_id, good.extranonce2, good.ntime, "12345"],
                20,
                "nonce must be 8 hex",
            ),
            (
                "ntime ahead",
                [
                    worker,
                    good.job_id,
                    good.extranonce2,
                    f"{int(time.time()) + 3 * 3600:08x}",
                    good.nonce,
                ],
                20,
                "ntime out of range",
            ),
            (
                "ntime before",
                [worker, good.job_id, good.extranonce2, "00000001", good.nonce],
                20,
                "ntime out of range",
            ),
            ("version bits", [*good.params(worker), "00000001"], 20, "version bits"),
        ]
        for i, (name, submit, code, text) in enumerate(cases, start=100):
            client.send(i, "mining.submit", submit)
            reply = await client.response(i)
            assert reply["result"] is None, name
            assert reply["error"][0] == code, (name, reply)
            assert text in reply["error"][1], (name, reply)

        client.send(200, "mining.submit", good.params(worker))
        assert (await client.response(200))["result"] is True
        client.send(201, "mining.submit", good.params(worker))
        dup = await client.response(201)
        assert dup["error"][0] == 22 and "duplicate" in dup["error"][1]

        low = solve(
            params,
            client.extranonce1,
            (1).to_bytes(client.extranonce2_size, "big"),
            diff / 64,
            max_difficulty=diff,
        )
        client.send(202, "mining.submit", low.params(worker))
        rej = await client.response(202)
        assert rej["error"][0] == 23 and "low difficulty" in rej["error"][1]
    finally:
        await client.close()
    assert pool.server is not None
    stats = pool.server.stats.workers[worker]
    assert stats.accepted == 1
    assert stats.rejected["duplicate"] == 1 and stats.rejected["low_difficulty"] == 1


async def test_share_for_job_sent_before_difficulty_change_uses_old_difficulty(
    pool: PoolApp, miner_address: str
) -> None:
    client = await RawClient.connect(port_of(pool))
    worker = f"{miner_address}.change"
    try:
        diff, notify = await client.handshake(worker)
        old_params = notify["params"]
        # Raise the difficulty 1000x: the pool sends set_difficulty and a new job.
        client.send(5, "mining.suggest_difficulty", [diff * 1000])
        assert (await client.response(5))["result"] is True
        new_diff = await client.notification("mining.set_difficulty")
        assert new_diff["params"][0] == pytest.approx(diff * 1000)
        new_notify = await client.notification("mining.notify")
        assert new_notify["params"][0] != old_params[0]

        # A share for the OLD job meeting only the old difficulty: accepted.
        en2 = (7).to_bytes(client.extranonce2_size, "big")
        share = solve(old_params, client.extranonce1, en2, diff, max_difficulty=diff * 1000)
        client.send(6, "mining.submit", share.params(worker))
        assert (await client.response(6))["result"] is True
        # Equally weak work on the NEW job is judged at the new difficulty (another
        # extranonce2: the resent job is the same block, so the same header is a duplicate).
        en2 = (8).to_bytes(client.extranonce2_size, "big")
        share = solve(
            new_notify["params"], client.extranonce1, en2, diff, max_difficulty=diff * 1000
        )
        client.send(7, "mining.submit", share.params(worker))
        assert (await client.response(7))["error"][0] == 23
    finally:
        await client.close()


async def test_cpuminer_wire_behaviour(pool: PoolApp, miner_address: str) -> None:
    """Exactly what cpuminer 2.5.1 sends: string-free ids 1, 2, then every submit with id 4."""
    client = await RawClient.connect(port_of(pool))
    worker = f"{miner_address}.cpu"
    try:
        client.send(1, "mining.subscribe", ["cpuminer/2.5.1"])
        sub = await client.response(1)
        extranonce1 = bytes.fromhex(sub["result"][1])
        size = sub["result"][2]
        assert 1 <= size <= 100
        client.send(2, "mining.authorize", [worker, "x"])
        assert (await client.response(2))["result"] is True
        diff = (await client.notification("mining.set_difficulty"))["params"][0]
        params = (await client.notification("mining.notify"))["params"]
        for i in range(3):
            share = solve(params, extranonce1, i.to_bytes(size, "big"), diff)
            client.send(4, "mining.submit", share.params(worker))
            reply = await client.response(4)
            assert reply == {"id": 4, "result": True, "error": None}
        client.send(4, "mining.submit", [worker, params[0], "00" * size, params[7], "zz"])
        reply = await client.response(4)
        assert reply["id"] == 4 and reply["result"] is None
        assert isinstance(reply["error"][1], str) and reply["error"][2] is None
    finally:
        await client.close()


async def test_string_ids_unknown_methods_and_garbage(pool: PoolApp) -> None:
    client = await RawClient.connect(port_of(pool))
    try:
        client.send("abc", "mining.subscribe", [])
        assert (await client.response("abc"))["result"][2] == 4
        client.send("x1", "mining.no_such_thing", [1, 2])
        unknown = await client.response("x1")
        assert unknown["error"][0] == 20 and "unknown method" in unknown["error"][1]
        client.send_raw(b"this is not json\n")
        bad = await client.next_message()
        assert bad["id"] is None and bad["error"] is not None
        client.send(
            9,
            "mining.configure",
            [
                ["version-rolling", "minimum-difficulty"],
                {"version-rolling.mask": "ffffffff", "version-rolling.min-bit-count": 2},
            ],
        )
        conf = (await client.response(9))["result"]
        assert conf["version-rolling"] is True
        assert conf["version-rolling.mask"] == "1fffe000"
        assert conf["minimum-difficulty"] is False
        client.send(10, "mining.extranonce.subscribe", [])
        assert (await client.response(10))["result"] is True
    finally:
        await client.close()


async def test_bad_payout_address_is_refused_at_authorize(pool: PoolApp) -> None:
    client = await RawClient.connect(port_of(pool))
    try:
        client.send(1, "mining.subscribe", [])
        await client.response(1)
        mainnet = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"
        client.send(2, "mining.authorize", [f"{mainnet}.w", "x"])
        reply = await client.response(2)
        assert reply["error"][0] == 24
        assert mainnet in reply["error"][1] and "regtest" in reply["error"][1]
        client.send(3, "mining.authorize", ["notanaddress", "x"])
        assert (await client.response(3))["error"][0] == 24
    finally:
        await client.close()


async def test_fixed_difficulty_from_password(pool: PoolApp, miner_address: str) -> None:
    client = await RawClient.connect(port_of(pool))
    try:
        diff, _ = await client.handshake(f"{miner_address}.fixed", "x,d=0.0005")
        assert diff == pytest.approx(0.0005)
    finally:
        await client.close()


async def test_line_too_long_disconnects(pool: PoolApp) -> None:
    client = await RawClient.connect(port_of(pool))
    try:
        client.send_raw(b"{" + b"a" * 20000)
        with pytest.raises((ConnectionError, TimeoutError)):
            await client.next_message(timeout=5)
    finally:
        await client.close()


async def test_suggest_difficulty_before_authorize_is_clamped(
    pool: PoolApp, miner_address: str
) -> None:
    client = await RawClient.connect(port_of(pool))
    try:
        client.send(1, "mining.suggest_difficulty", [0.0001])  # before subscribe/authorize
        assert (await client.response(1))["result"] is True
        diff, _ = await client.handshake(f"{miner_address}.bitaxe")
        assert diff == pytest.approx(0.0001)
    finally:
        await client.close()
    high = await RawClient.connect(port_of(pool))
    try:
        high.send(1, "mining.suggest_difficulty", ["1e12"])  # above the port's max (1e6)
        await high.response(1)
        diff, _ = await high.handshake(f"{miner_address}.big")
        assert diff == pytest.approx(1e6)
    finally:
        await high.close()


async def test_session_resume_gives_back_extranonce1(pool: PoolApp) -> None:
    first = await RawClient.connect(port_of(pool))
    first.send(1, "mining.subscribe", ["cpuminer/2.5.1"])
    result = (await first.response(1))["result"]
    session_id, extranonce1 = result[0][1][1], result[1]
    await first.close()
    await asyncio.sleep(0.2)
    again = await RawClient.connect(port_of(pool))
    try:
        again.send(1, "mining.subscribe", ["cpuminer/2.5.1", session_id])
        assert (await again.response(1))["result"][1] == extranonce1
    finally:
        await again.close()


async def test_session_resume_across_a_pool_restart(
    regtest_node: ManagedNode, tmp_path: Path, miner_address: str
) -> None:
    """The session id is the extranonce1 (as in ckpool): after a restart of the pool a miner
    subscribing with its old one gets it back when no live connection has it."""
    config = dataclasses.replace(
        pool_config(regtest_node, tmp_path, miner_address), chain=NO_BLOCKS
    )
    app = await start_pool(config)
    try:
        first = await RawClient.connect(port_of(app))
        first.send(1, "mining.subscribe", ["cpuminer/2.5.1"])
        result = (await first.response(1))["result"]
        session_id, extranonce1 = result[0][1][1], result[1]
        assert session_id == extranonce1
        await first.close()
    finally:
        await app.stop()
    app = await start_pool(config)  # a new process state: nothing parked, nothing live
    try:
        again = await RawClient.connect(port_of(app))
        again.send(1, "mining.subscribe", ["cpuminer/2.5.1", session_id])
        assert (await again.response(1))["result"][1] == extranonce1
        other = await RawClient.connect(port_of(app))  # the same id while it is live: a new one
        other.send(1, "mining.subscribe", ["cpuminer/2.5.1", session_id])
        assert (await other.response(1))["result"][1] != extranonce1
        for c in (again, other):
            await c.close()
    finally:
        await app.stop()


async def test_upper_case_address_is_one_identity_with_the_lower_case_one(
    pool: PoolApp, miner_address: str
) -> None:
    """BIP173: an all-upper-case bech32 address is the same address. It logs in under the
    canonical (lower-case) name, so it cannot split a balance or slip past an address ban;
    'ADDR.' and padded names are refused at login with a clear error."""
    assert pool.server is not None
    upper = miner_address.upper()
    client = await RawClient.connect(port_of(pool))
    try:
        await client.handshake(f"{upper}.caps")
        assert f"{miner_address}.caps" in pool.server.stats.workers
        assert f"{upper}.caps" not in pool.server.stats.workers
        for i, bad in enumerate([f"{miner_address}.", f" {miner_address}.pad", f"{upper}.x\x01"]):
            client.send(20 + i, "mining.authorize", [bad, "x"])
            reply = await client.response(20 + i)
            assert reply["result"] is None and reply["error"][0] == 24, reply
        pool.server.banned_workers.add(miner_address)
        try:
            other = await RawClient.connect(port_of(pool))
            other.send(1, "mining.subscribe", [])
            await other.response(1)
            other.send(2, "mining.authorize", [f"{upper}.evade", "x"])
            reply = await other.response(2)
            assert reply["error"][0] == 24 and "banned" in reply["error"][1]
            await other.close()
        finally:
            pool.server.banned_workers.discard(miner_address)
    finally:
        await client.close()


async def test_several_workers_and_get_transactions(pool: PoolApp, miner_address: str) -> None:
    client = await RawClient.connect(port_of(pool))
    try:
        diff, notify = await client.handshake(f"{miner_address}.a")
        client.send(3, "mining.authorize", [f"{miner_address}.b", "x"])
        assert (await client.response(3))["result"] is True
        params = notify["params"]
        for i, worker in enumerate(("a", "b")):
            share = solve(params, client.extranonce1, (100 + i).to_bytes(4, "big"), diff)
            client.send(10 + i, "mining.submit", share.params(f"{miner_address}.{worker}"))
            assert (await client.response(10 + i))["result"] is True
        client.send(20, "mining.get_transactions", [params[0]])
        txs = (await client.response(20))["result"]
        assert isinstance(txs, list)
    finally:
        await client.close()
    assert pool.server is not None
    for worker in ("a", "b"):
        assert pool.server.stats.workers[f"{miner_address}.{worker}"].accepted == 1


async def test_shutdown_asks_miners_to_reconnect(
    regtest_node: ManagedNode, tmp_path_factory: pytest.TempPathFactory
) -> None:
    address = await wallet_address(regtest_node)
    app = await start_pool(pool_config(regtest_node, tmp_path_factory.mktemp("p"), address))
    assert app.server is not None
    client = await RawClient.connect(app.server.bound_ports[0])
    await client.handshake(f"{address}.bye")
    await app.stop()
    msg = await client.notification("client.reconnect")
    assert msg["id"] is None
    await client.close()


async def test_refresh_jobs_and_outside_blocks_reach_miners(
    regtest_node: ManagedNode, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A fresh job (new id, clean=false) every template_refresh_seconds; a block found
    elsewhere becomes a clean job at once (long-poll / poll), with the new previous hash."""
    address = await wallet_address(regtest_node)
    config = pool_config(regtest_node, tmp_path_factory.mktemp("p"), address)
    config = dataclasses.replace(
        config, node=dataclasses.replace(config.node, template_refresh_seconds=1.0)
    )
    app = await start_pool(config)
    assert app.server is not None and regtest_node.rpc is not None
    client = await RawClient.connect(app.server.bound_ports[0])
    try:
        _, first = await client.handshake(f"{address}.watch")
        refresh = await client.notification("mining.notify", timeout=5)
        assert refresh["params"][0] != first["params"][0]
        assert refresh["params"][8] is False and refresh["params"][1] == first["params"][1]
        started = time.monotonic()
        [new_hash] = await regtest_node.rpc.call("generatetoaddress", 1, address)
        while True:
            msg = await client.notification("mining.notify", timeout=5)
            if msg["params"][8] is True:
                break
        assert time.monotonic() - started < 3
        assert msg["params"][1] == prevhash_to_stratum(display_to_hash(new_hash))
    finally:
        await client.close()
        await app.stop()
