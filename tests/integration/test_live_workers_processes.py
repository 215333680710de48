"""The API shows the whole pool's live workers: ``stratum-pool run`` with ``server.processes =
2`` (a supervisor, two real worker processes, a managed regtest bitcoind) and a miner on each
worker process submitting shares. The lead's API (worker process 0) shows the miner connected
only to worker process 1 online, with its connection and a hashrate, in /api/workers/<name>,
the worker list, the address view and /api/pool; once that miner disconnects it shows
offline within a few refreshes, and the lead's webhooks monitor (a real receiver on loopback)
sends worker_offline for it. On both backends (the processes' one SQLite file, a PostgreSQL).
Wall time: about 10 to 40 s per backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.harness import until, wait_for
from tests.integration.procs_harness import (
    Miner,
    SupervisedPool,
    miners_on_every_process,
    process_of,
    write_config,
)
from tests.unit.test_webhooks import HookReceiver

pytestmark = pytest.mark.integration

ADDRESS = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
OFFLINE_SECONDS = 2.0  # webhooks.worker_offline_seconds


async def get(port: int, path: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}{path}") as resp,
    ):
        body: dict[str, Any] = await resp.json()
        body["_status"] = resp.status
        return body


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_lead_api_shows_workers_of_every_process(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    # PostgreSQL: a real server from the test harness (tests/pg_harness.py), skipped with its
    # reason where it cannot be installed
    dsn = request.getfixturevalue("pg_database") if backend == "postgresql" else ""
    data_dir = tmp_path / "pool"
    config = write_config(tmp_path / "pool.toml", data_dir, dsn=dsn)
    receiver = await HookReceiver().start()
    with config.open("a") as f:  # ([ledger] is the file's last table)
        f.write(
            "heartbeat_seconds = 1.0\nshared_refresh_seconds = 0.2\nlive_workers_seconds = 0.3\n"
            f"\n[webhooks]\nenabled = true\nworker_offline_seconds = {OFFLINE_SECONDS}\n"
            f'check_seconds = 0.5\n\n[[webhooks.urls]]\nurl = "{receiver.url}"\n'
            'events = ["worker_offline", "worker_back"]\n'
        )
    pool = SupervisedPool(config, data_dir, tmp_path / "pool.log")
    miners: list[Miner] = []
    try:
        await pool.start()
        assert pool.api_port
        miners = await miners_on_every_process(pool.port, f"{ADDRESS}.lv-", per_process=1)
        lead = next(m for m in miners if process_of(m.extranonce1) == 0)
        other = next(m for m in miners if process_of(m.extranonce1) == 1)
        for miner in miners:
            miner.start(every=0.2)
        state: dict[str, Any] = {}

        async def both_online() -> bool:
            for miner in (lead, other):
                w = await get(pool.api_port, f"/api/workers/{miner.worker}")
                state[miner.worker] = w
                if not (
                    w["_status"] == 200
                    and w["online"]
                    and w["connections"] == 1
                    and w["hashrate"]["1m"] > 0
                    and w["shares"]["accepted"] > 0
                    and w["last_share"] is not None
                ):
                    return False
            return True

        await until(both_online, "both miners online on the lead's API", state)
        w = state[other.worker]
        assert w["difficulty"] is not None and w["difficulty"] > 0
        # the worker list, the address view and the pool count it too
        listed = await get(pool.api_port, "/api/workers?limit=1000")
        rows = {r["name"]: r for r in listed["workers"]}
        assert rows[other.worker]["online"] and rows[other.worker]["connections"] == 1
        address = await get(pool.api_port, f"/api/addresses/{ADDRESS}")
        assert address["_status"] == 200 and address["workers_online"] == 2, address
        assert address["hashrate"]["1m"] > 0
        pool_view = await get(pool.api_port, "/api/pool")
        assert pool_view["workers"] == 2, pool_view["workers"]
        history = await get(pool.api_port, f"/api/pool/history?worker={other.worker}")
        assert history["live"]["hashrate"] > 0, history["live"]

        await other.stop()
        miners.remove(other)

        async def offline() -> bool:
            w = await get(pool.api_port, f"/api/workers/{other.worker}")
            state["after"] = w
            return w["_status"] == 200 and not w["online"] and w["connections"] == 0

        await until(offline, "the disconnected miner shown offline", state, timeout=30)
        still = await get(pool.api_port, f"/api/workers/{lead.worker}")
        assert still["online"] and still["connections"] == 1
        assert lead.error is None

        # the lead's webhooks monitor saw the other process's worker go quiet
        def offline_events() -> list[dict[str, Any]]:
            return [h.json["data"] for h in receiver.hits if h.json["event"] == "worker_offline"]

        await wait_for(
            lambda: any(d["worker"] == other.worker for d in offline_events()),
            30,
            "worker_offline for the miner of worker process 1",
            offline_events,
        )
        event = next(d for d in offline_events() if d["worker"] == other.worker)
        assert event["address"] == ADDRESS and event["seconds_since_share"] >= OFFLINE_SECONDS
    finally:
        await receiver.stop()
        for miner in miners:
            await miner.stop()
        try:
            assert await pool.terminate() == 0, pool.tail()
        finally:
            pool.kill_all()
