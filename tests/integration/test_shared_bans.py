"""Bans shared through the ledger store by ``stratum-pool run --processes 2`` (the one SQLite
file, or one PostgreSQL database): real supervisor, workers, regtest bitcoind, loopback
sockets from addresses of the test's own.

- an operator's worker ban and IP ban made through the admin API (served by worker 0) drop a
  miner connected to worker 1 and refuse that IP there, within a few seconds;
- a temporary IP ban worker 1 gives an invalid-share flood refuses that IP on the other
  worker too; the operator's unban (on worker 0) lifts it on both;
- the temporary ban is in the store's ``bans`` table with its end time, and is enforced
  again by both workers after a restart of the pool.

Wall time: about 20 to 40 seconds per backend on a busy 2-core machine (two pool starts).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.harness import RawClient, wait_for
from tests.integration.procs_harness import (
    Miner,
    SupervisedPool,
    open_store,
    process_of,
    write_config,
)
from tests.reliability.node_harness import named

pytestmark = pytest.mark.integration

ADDRESS = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
TOKEN = "shared-bans-test-token"
REFRESH = 0.5  # ledger.shared_refresh_seconds
FLOODER, BANNED_IP = "127.0.0.2", "127.0.0.5"


async def connect_from(port: int, ip: str) -> RawClient:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(ip, 0))
    return RawClient(reader, writer)


async def refused(port: int, ip: str) -> bool:
    """True when a connection from ``ip`` is closed before any answer (refused at accept)."""
    client = await connect_from(port, ip)
    client.send(1, "mining.subscribe", ["probe/1"])
    try:
        async with asyncio.timeout(10):
            data = await client.reader.read(1 << 16)
    except (ConnectionError, TimeoutError):
        data = b""
    client.writer.close()
    return data == b""


async def landed_on(port: int, ip: str, worker: int) -> RawClient:
    """A subscribed connection from ``ip`` that the kernel gave to worker ``worker``."""
    for _ in range(64):
        client = await connect_from(port, ip)
        client.send(1, "mining.subscribe", ["test/1"])
        sub = await client.response(1)
        client.extranonce1 = bytes.fromhex(sub["result"][1])
        if process_of(client.extranonce1) == worker:
            return client
        await client.close()
    raise AssertionError(f"64 connections from {ip} never reached worker {worker}")


async def admin(pool: SupervisedPool, path: str, body: dict[str, str]) -> dict[str, Any]:
    url = f"http://127.0.0.1:{pool.api_port}/api/admin/{path}"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers={"Authorization": f"Bearer {TOKEN}"}) as resp,
    ):
        assert resp.status == 200, await resp.text()
        answer: dict[str, Any] = await resp.json()
        return answer


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_bans_reach_every_worker_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str, request: pytest.FixtureRequest
) -> None:
    # PostgreSQL: a real server from the test harness (tests/pg_harness.py), skipped with its
    # reason where it cannot be installed
    dsn = request.getfixturevalue("pg_database") if backend == "postgresql" else ""
    monkeypatch.setenv("POOL_API_TOKEN", TOKEN)
    data_dir = tmp_path / "pool"
    config = write_config(tmp_path / "pool.toml", data_dir, dsn=dsn)
    with config.open("a") as f:  # [ledger] is the file's last section
        f.write(
            f"shared_refresh_seconds = {REFRESH}\n\n"
            "[limits]\nban_strikes = 1\nban_seconds = 600.0\n"
        )
    pool = SupervisedPool(config, data_dir, tmp_path / "pool.log")
    await pool.start()
    miner: Miner | None = None
    try:
        assert pool.started_workers() == {"w0", "w1"}
        port = pool.port
        # a miner on worker 1; the API (and so the operator's ban) is worker 0's
        for n in range(64):
            miner = await Miner.connect(port, f"{ADDRESS}.victim{n}")
            if process_of(miner.extranonce1) == 1:
                break
            await miner.stop()
            miner = None
        assert miner is not None, "no connection reached worker 1"
        miner.start(every=0.2)
        await wait_for(lambda: len(miner.accepted) >= 1, 60, "a share accepted on worker 1")

        # 1. the operator bans the worker on worker 0: worker 1 drops its connection
        started = time.monotonic()
        answer = await admin(pool, "ban", {"worker": miner.worker})
        assert answer["dropped"] == 0  # not connected to worker 0
        await wait_for(
            lambda: miner is not None and miner.error is not None,
            30,
            "worker 1 drops the banned worker",
        )
        worker_ban_seconds = time.monotonic() - started
        applied = [e for e in named(pool.log, "shared_bans_applied") if e.get("worker") == "w1"]
        assert applied and applied[0]["dropped"] == 1

        # 2. an IP ban: refused by both workers
        offset = pool.log.stat().st_size
        started = time.monotonic()
        await admin(pool, "ban", {"ip": BANNED_IP})

        def refusals(reason: str, ip: str) -> set[str]:
            return {
                str(e.get("worker"))
                for e in named(pool.log, "connection_refused", since=offset)
                if e.get("peer") == ip and reason in str(e.get("reason"))
            }

        async def refused_everywhere(ip: str, reason: str) -> None:
            deadline = time.monotonic() + 30
            while refusals(reason, ip) != {"w0", "w1"}:
                assert time.monotonic() < deadline, refusals(reason, ip)
                if not await refused(port, ip):
                    await asyncio.sleep(0.1)  # not yet applied there: tried again

        await refused_everywhere(BANNED_IP, "banned IP")
        ip_ban_seconds = time.monotonic() - started

        # 3. an invalid-share flood on worker 1: its temporary ban refuses the IP on both
        flooder = await landed_on(port, FLOODER, 1)
        flooder.send(2, "mining.authorize", [f"{ADDRESS}.flood", "x"])
        bad = [
            json.dumps(
                {
                    "id": 10 + i,
                    "method": "mining.submit",
                    "params": [f"{ADDRESS}.flood", "feed", "00000000", "00000000", f"{i:08x}"],
                }
            )
            for i in range(1000)
        ]
        offset = pool.log.stat().st_size
        started = time.monotonic()
        flooder.send_raw(("\n".join(bad) + "\n").encode())
        with pytest.raises(ConnectionError):
            while True:  # read until the pool drops the flood
                await flooder.next_message(timeout=30)
        await wait_for(
            lambda: any(
                e["ip"] == FLOODER and e.get("worker") == "w1"
                for e in named(pool.log, "ip_temp_banned", since=offset)
            ),
            30,
            "worker 1 bans the flooder",
        )
        await refused_everywhere(FLOODER, "temporarily banned")
        temp_ban_seconds = time.monotonic() - started
        store = open_store(data_dir / "ledger", dsn)
        try:
            rows = {(r["kind"], r["ban_key"]): r for r in store.bans_since(0)}
        finally:
            store.close()
        temp = rows[("temp_ip", FLOODER)]
        assert not temp["lifted"] and temp["until_at"] > time.time() + 500  # in the table
        assert temp["set_by"].endswith("process w1")
        assert rows[("ip", BANNED_IP)]["until_at"] is None
        assert rows[("worker", miner.worker)]["set_by"].endswith("process w0")

        # 4. the pool restarts: the temporary ban (in memory only, before) is back from the table
        assert await pool.terminate() == 0, pool.tail()
        offset = pool.log.stat().st_size
        await pool.start()
        port = pool.port
        await refused_everywhere(FLOODER, "temporarily banned")
        loaded = named(pool.log, "shared_bans_loaded", since=offset)
        assert {e.get("worker") for e in loaded} == {"w0", "w1"}
        assert all(e["temporary"] == 1 and e["ips"] == 1 and e["workers"] == 1 for e in loaded)

        # 5. the operator lifts it on worker 0: both workers admit the IP again
        answer = await admin(pool, "unban", {"ip": FLOODER})
        assert answer["temporary"] == []
        seen: set[int] = set()
        deadline = time.monotonic() + 30
        while seen != {0, 1}:  # admitted (subscribed) by both workers
            assert time.monotonic() < deadline, seen
            client = await connect_from(port, FLOODER)
            client.send(1, "mining.subscribe", ["test/1"])
            try:
                sub = await client.response(1)
                seen.add(process_of(bytes.fromhex(sub["result"][1])))
            except (ConnectionError, TimeoutError):
                await asyncio.sleep(0.1)  # still banned there: tried again
            finally:
                await client.close()
        print(
            f"\nshared bans, 2 processes, refresh {REFRESH} s: worker ban drop "
            f"{worker_ban_seconds:.2f} s, IP ban on both {ip_ban_seconds:.2f} s, "
            f"temporary ban on both {temp_ban_seconds:.2f} s"
        )
    finally:
        if miner is not None:
            await miner.stop()
        pool.kill_all()
