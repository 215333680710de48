"""The API with 20 000 known workers: bounded pages, bounded /metrics, and no long stall of the
event loop while clients poll (real ledger: journal, SQLite on its thread, real HTTP).

The Stratum side is a stand-in holding the server's live counters (``PoolStats``,
``HashrateBook``): no bitcoind is needed. Before the API read snapshots, one GET /api/workers
with 20 000 workers held the loop for over a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from pool.api.collect import METRICS_TOP_WORKERS
from pool.api.server import ApiServer
from pool.best_share import BestShares
from pool.bitcoin import REGTEST
from pool.bitcoin.address import encode_segwit
from pool.config import ApiConfig, Config, LedgerConfig
from pool.hashrate import HashrateBook
from pool.ledger.ledger import Ledger
from pool.ledger.store import Store
from pool.stats import PoolStats
from tests.integration.test_dashboard import Dom, chromium
from tests.integration.test_ledger_thread import creds, share
from tests.unit.test_metrics import parse_exposition

pytestmark = pytest.mark.integration

WORKERS = 20_000
LIVE_ONLY = 50  # connected and authorized, no accepted share yet: not in the ledger
METERED = 300  # workers with a hashrate meter (6 KB each)
ADDRESSES = [encode_segwit("bcrt", 0, bytes([i]) * 20) for i in range(4)]
NAMES = sorted(f"{ADDRESSES[i % 4]}.w{i:05d}" for i in range(WORKERS))
LIVE_NAMES = sorted(f"{ADDRESSES[0]}.live{i:03d}" for i in range(LIVE_ONLY))
ALL = sorted(NAMES + LIVE_NAMES)
MAX_STALL = 0.25  # seconds: generous for a shared 2-core machine; the old API stalled > 1 s


class StandInServer:
    """What the API reads of the Stratum server."""

    def __init__(self, now: float) -> None:
        self.stats = PoolStats()
        self.hashrate = HashrateBook(now)
        self.sessions: dict[int, Any] = {}
        self.jobs = SimpleNamespace(current=None)
        self.banned_ips: set[str] = set()
        self.banned_workers: set[str] = set()
        self.port_list: list[dict[str, Any]] = [{"port": 3333, "name": "", "tls": False}]
        self.ctx = SimpleNamespace(best=BestShares())

    def temp_bans(self) -> list[Any]:
        return []


@pytest_asyncio.fixture(scope="module")
async def crowded(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, Any]]:
    tmp: Path = tmp_path_factory.mktemp("api-crowded")
    ledger = Ledger(LedgerConfig(journal_fsync="never"), tmp / "ledger", REGTEST)
    await ledger.open()
    now = time.time()
    server = StandInServer(now - 60)
    app = SimpleNamespace(
        config=Config(api=ApiConfig(port=0)),
        server=server,
        ledger=ledger,
        network=REGTEST,
        rpc=None,
        watcher_task=None,
        chain_sim=None,
    )
    api = ApiServer(app)  # type: ignore[arg-type]
    try:
        for start in range(0, WORKERS, 2000):  # journaled in big batches, like a busy pool
            chunk = [creds(n) for n in NAMES[start : start + 2000]]
            await asyncio.gather(
                *(ledger.on_share(share(c, difficulty=1e-12), c, now - 30, None) for c in chunk)
            )
        await ledger.commit()
        for i, name in enumerate(NAMES + LIVE_NAMES):
            address = name.partition(".")[0]
            stats = server.stats.worker(name, address)
            stats.connections = 1
            if name in LIVE_NAMES:
                continue
            stats.accepted = 1
            stats.accepted_work = 1e-3 * (1 + i % 997)
            if i < METERED:
                server.hashrate.add_share(worker=name, address=address, difficulty=1.0, now=now)
        port = await api.start()
        async with aiohttp.ClientSession() as http:
            yield {"base": f"http://127.0.0.1:{port}", "http": http, "app": app, "api": api}
    finally:
        await api.stop()
        await ledger.close()


async def get(crowded: dict[str, Any], path: str) -> Any:
    async with crowded["http"].get(crowded["base"] + path) as resp:
        assert resp.status == 200, await resp.text()
        if resp.content_type == "application/json":
            return await resp.json()
        return await resp.text()


async def test_workers_page_through_every_known_worker(crowded: dict[str, Any]) -> None:
    first = await get(crowded, "/api/workers")
    assert first["total"] == len(ALL) and first["count"] == 100 and first["next_offset"] == 100
    assert [w["name"] for w in first["workers"]] == ALL[:100]
    seen: list[str] = []
    offset: int | None = 0
    while offset is not None:
        page = await get(crowded, f"/api/workers?limit=1000&offset={offset}")
        assert page["count"] <= 1000
        seen += [w["name"] for w in page["workers"]]
        offset = page["next_offset"]
    assert seen == ALL  # each once, in name order, ledger and live-only workers together
    live = await get(crowded, f"/api/workers?limit=1&offset={ALL.index(LIVE_NAMES[0])}")
    [w] = live["workers"]
    assert w["online"] and w["ledger"]["shares"] == 0
    ledger = crowded["app"].ledger
    stored = await ledger.store.run(Store.worker, NAMES[7])
    one = await get(crowded, f"/api/workers/{NAMES[7]}")
    assert one["ledger"]["shares"] == stored["shares"] == 1
    assert one["ledger"]["earned_units"] == stored["credit_units"]


async def test_address_page_is_bounded(crowded: dict[str, Any]) -> None:
    address = ADDRESSES[0]
    mine = sorted(n for n in ALL if n.startswith(address + "."))
    page = await get(crowded, f"/api/addresses/{address}")
    assert page["workers_total"] == len(mine) == WORKERS // 4 + LIVE_ONLY
    assert [w["name"] for w in page["workers"]] == mine[:100]
    page = await get(crowded, f"/api/addresses/{address}?limit=1000&offset=5000")
    assert [w["name"] for w in page["workers"]] == mine[5000:6000]


async def test_pool_totals_come_from_memory_and_agree(crowded: dict[str, Any]) -> None:
    pool = await get(crowded, "/api/pool")
    totals = await crowded["app"].ledger.store.run(Store.totals)
    assert pool["ledger"]["shares"] == totals["shares"] == WORKERS
    assert pool["reserve"]["credits_units"] == totals["credit_units"]
    assert pool["workers"] == WORKERS + LIVE_ONLY  # online


async def test_metrics_are_bounded_and_rendered_once_a_second(crowded: dict[str, Any]) -> None:
    families = parse_exposition(await get(crowded, "/metrics"))
    per_worker = families["stratum_pool_worker_shares_total"].samples
    workers = {labels["worker"] for _, labels, _ in per_worker}
    assert len(workers) == METRICS_TOP_WORKERS
    omitted = families["stratum_pool_metrics_workers_omitted"].value()
    assert omitted == WORKERS + LIVE_ONLY - METRICS_TOP_WORKERS
    hashrate = families["stratum_pool_worker_hashrate_hashes_per_second"].samples
    assert len(hashrate) <= 3 * METRICS_TOP_WORKERS
    # the most accepted work: the top of the ranking
    stats = crowded["app"].server.stats
    best = max(stats.workers.values(), key=lambda w: w.accepted_work).accepted_work
    assert all(stats.workers[w].accepted_work >= best * 0.9 for w in workers)
    # a storm of scrapes costs one render per second: the same text comes back
    text = await get(crowded, "/metrics")
    stats.accepted += 1000
    assert await get(crowded, "/metrics") == text
    assert families["stratum_pool_ledger_backlog_records"].value() == 0


async def test_polling_clients_never_stall_the_loop(crowded: dict[str, Any]) -> None:
    """10 clients polling /api/workers, /api/pool and /metrics in a loop: the event loop (which
    would also serve the miners) is never held for long."""
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    stop = asyncio.Event()

    async def probe() -> None:
        while not stop.is_set():
            t0 = loop.time()
            await asyncio.sleep(0.002)
            lags.append(loop.time() - t0 - 0.002)

    async def client(i: int) -> int:
        paths = ["/api/workers", f"/api/workers?limit=1000&offset={i * 1000}", "/api/pool"]
        paths.append("/metrics")
        done = 0
        for round_ in range(12):
            # the bodies are not parsed: a client's JSON decoding would stall this same loop
            url = crowded["base"] + paths[(i + round_) % len(paths)]
            async with crowded["http"].get(url) as resp:
                assert resp.status == 200
                await resp.read()
            done += 1
        return done

    probing = asyncio.create_task(probe())
    crowded["api"].views._directory = None  # the first request rebuilds the directory
    started = time.monotonic()
    answered = sum(await asyncio.gather(*(client(i) for i in range(10))))
    elapsed = time.monotonic() - started
    stop.set()
    await probing
    assert answered == 120
    lags.sort()
    assert lags and lags[-1] < MAX_STALL, (lags[-5:], elapsed)


async def test_dashboard_shows_one_page_of_workers(crowded: dict[str, Any], tmp_path: Path) -> None:
    dom = Dom((await chromium(crowded["base"] + "/", tmp_path, "--dump-dom")).decode())
    assert "hidden" in dom.by_id("error").attrs, dom.by_id("error").text
    rows = [e.attrs["data-worker"] for e in dom.find("tr") if "data-worker" in e.attrs]
    assert rows == ALL[:100]
    assert "hidden" not in dom.by_id("workers-pager").attrs
    assert dom.by_id("workers-range").text == f"1–100 of {len(ALL)}"
    assert dom.by_id("workers-count").text == f"({len(ALL)})"
