"""The API tests' pool: two bundled miners on a pool with the HTTP API (and admin token) on.

Used by ``test_api.py`` (the numbers) and ``test_api_admin.py`` (admin endpoints, /healthz).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import aiohttp

from pool.api.server import ApiServer
from pool.app import PoolApp
from pool.config import ApiConfig, ChainConfig, LedgerConfig, PortConfig, SimulationConfig
from pool.ledger.store import Store
from pool.miner import Miner, MinerOptions
from pool.node.managed import ManagedNode
from tests.integration.harness import pool_config, start_pool, wait_for, wallet_address

P = ParamSpec("P")
T = TypeVar("T")

TOKEN_ENV = "STRATUM_POOL_TEST_API_TOKEN"
TOKEN = "test-" + secrets.token_hex(16)
DIFFICULTY = 5e-7  # fixed (vardiff off): 2147 hashes per share
RATES = (100_000.0, 200_000.0)  # hashes/s per miner: ~47 and ~93 shares/s
MINING_SECONDS = 20.0
# Blocks stay rare (~0.1 expected), so the PPS credits (~5 BTC) fit the node wallet's funds.
SIM_DIFFICULTY = 0.01
FEE_BPS = 200
REGTEST_HALVING = 150
COIN = 100_000_000


@dataclasses.dataclass
class Mined:
    app: PoolApp
    api: ApiServer
    http: aiohttp.ClientSession
    base: str
    addresses: list[str]
    names: list[str]
    miners: list[Miner]
    summaries: list[dict[str, Any]]
    journal_dir: Path
    # taken while the miners ran
    workers_during: dict[str, Any]
    pool_during: dict[str, Any]
    times: tuple[float, float]
    hashes: list[tuple[int, int]]
    started: dict[str, float]

    async def stored(
        self, fn: Callable[Concatenate[Store, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """A read of the ledger store itself (on the store's thread), e.g.
        ``await m.stored(Store.totals)``: what the API's in-memory numbers must equal."""
        assert self.app.ledger is not None
        return await self.app.ledger.store.run(fn, *args, **kwargs)


def api_config(base: Any) -> Any:
    return dataclasses.replace(
        base,
        chain=ChainConfig(
            simulation=SimulationConfig(enabled=True, initial_difficulty=SIM_DIFFICULTY)
        ),
        ledger=LedgerConfig(
            fee_bps=FEE_BPS,
            payout_threshold_sat=1000,
            payout_interval_seconds=0,
            payout_fee_rate_sat_vb=2.0,
            block_check_seconds=1.0,
        ),
        api=ApiConfig(port=0, admin_token_env=TOKEN_ENV),
    )


async def get(m: Mined, path: str, **headers: str) -> tuple[int, Any]:
    async with m.http.get(m.base + path, headers=headers) as resp:
        return resp.status, await resp.json()


async def post(m: Mined, path: str, body: Any = None, token: str | None = TOKEN) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with m.http.post(m.base + path, json=body, headers=headers) as resp:
        return resp.status, await resp.json()


def by_name(workers: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {w["name"]: w for w in workers["workers"]}


@contextlib.asynccontextmanager
async def mined_pool(
    regtest_node: ManagedNode, tmp: Path, mining_seconds: float = MINING_SECONDS
) -> AsyncIterator[Mined]:
    """A pool with the API; two miners ran for ``mining_seconds``; the API was read meanwhile."""
    payout = await wallet_address(regtest_node)
    addresses = [await wallet_address(regtest_node) for _ in range(2)]
    ports = (
        PortConfig(port=0, start_difficulty=DIFFICULTY, min_difficulty=1e-9, max_difficulty=1e6),
    )
    os.environ[TOKEN_ENV] = TOKEN
    app = await start_pool(api_config(pool_config(regtest_node, tmp, payout, ports=ports)))
    api = ApiServer(app, sample_seconds=1.0, cache_seconds=0.0)  # exact: no snapshot reused
    http = aiohttp.ClientSession()
    try:
        port = await api.start()
        server = app.server
        assert server is not None
        names = [f"{addresses[i]}.rig{i}" for i in range(2)]
        miners = [
            Miner(
                MinerOptions(
                    host="127.0.0.1", port=server.bound_ports[0], user=names[i], hashrate=RATES[i]
                )
            )
            for i in range(2)
        ]
        tasks = [asyncio.create_task(m.run()) for m in miners]
        await wait_for(
            lambda: all(
                n in server.stats.workers and server.stats.workers[n].connections for n in names
            ),
            15,
            "both miners authorized",
        )
        await asyncio.sleep(mining_seconds)
        base = f"http://127.0.0.1:{port}"
        t0, h0 = time.time(), [m.stats.hashes for m in miners]
        async with http.get(base + "/api/workers") as resp:
            workers_during = await resp.json()
        t1, h1 = time.time(), [m.stats.hashes for m in miners]
        async with http.get(base + "/api/pool") as resp:
            pool_during = await resp.json()
        started = {n: meter.started for n in names if (meter := server.hashrate.worker(n))}
        for m in miners:
            m.stopping.set()
        summaries = list(await asyncio.gather(*tasks))
        await wait_for(lambda: not server.sessions, 10, "the pool to close the miners' sessions")
        yield Mined(
            app=app,
            api=api,
            http=http,
            base=base,
            addresses=addresses,
            names=names,
            miners=miners,
            summaries=summaries,
            journal_dir=tmp / "ledger" / "journal",
            workers_during=workers_during,
            pool_during=pool_during,
            times=(t0, t1),
            hashes=list(zip(h0, h1, strict=True)),
            started=started,
        )
    finally:
        await http.close()
        await api.stop()
        await app.stop()
        os.environ.pop(TOKEN_ENV, None)
