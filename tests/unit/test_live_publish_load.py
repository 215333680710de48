"""20 000 live workers in one process, the whole path on both backends: ``SharedLedger``
collects them on the event loop (``local_rows``: counters and hashrate meters with shares in
the last minute, ``LIVE_CHUNK`` at a time), the store's thread writes them, another process's
``SharedLedger`` reads and merges them into its snapshot. A ticker task measures the longest
time the loop was kept from running meanwhile (figures printed, run with -s): about 40 ms,
up to about 100 ms when one of the interpreter's full garbage-collection passes (over this
test's 20 000 meters) falls in. Wall time: a few seconds per backend."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_asyncio

from pool.api.live_merge import local_rows
from pool.config import LedgerConfig
from pool.hashrate import HashrateBook
from pool.ledger.aggregates import ShareRecord
from pool.ledger.shared import SharedLedger
from pool.ledger.store_thread import StoreThread
from pool.stats import PoolStats
from tests.pg_harness import PG_PASSWORD

WORKERS = 20_000
# the loop never waits this long for the publish (generous: a busy 2-core machine)
MAX_STALL_SECONDS = 0.5


def _no_shares(record: dict[str, Any]) -> ShareRecord:
    raise AssertionError("no shares in this test")


@pytest_asyncio.fixture(params=["sqlite", "postgresql"])
async def open_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Callable[[str], Any]]:
    """``open(journal_id)``: a StoreThread on this test's one database, opened."""
    made: list[StoreThread] = []
    pg_dsn = ""
    if request.param == "postgresql":
        server = request.getfixturevalue("postgres")
        pg_dsn = server.dsn(server.create_database())

    async def open_one(journal_id: str) -> StoreThread:
        pg = None
        if pg_dsn:
            from pool.ledger.pg import PgTarget

            pg = PgTarget(pg_dsn, PG_PASSWORD)
        store = StoreThread(tmp_path / "ledger.sqlite3", _no_shares, journal_id, pg=pg)
        await store.open()
        made.append(store)
        return store

    yield open_one
    for store in made:
        await store.close()


def busy_server(now: float) -> Any:
    """The parts of a StratumServer ``local_rows`` reads, with WORKERS connected workers that
    each had a share a second for the last minute."""
    stats, book = PoolStats(), HashrateBook(now - 120.0)
    for i in range(WORKERS):
        name, address = f"addr{i % 500}.rig{i}", f"addr{i % 500}"
        w = stats.worker(name, address)
        w.connections, w.difficulty, w.accepted, w.last_share = 1, 1.0, 60, now
        book.start_worker(name, address, now - 120.0)
        for t in range(0, 60, 6):
            book.add_share(worker=name, address=address, difficulty=6.0, now=now - t)
    return SimpleNamespace(stats=stats, hashrate=book)


class Ticker:
    """The longest gap between two turns of the loop while it runs."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            self.longest = max(self.longest, now - last)
            last = now

    def __enter__(self) -> Ticker:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def test_20000_live_workers_publish_without_stalling_the_loop(
    open_store: Callable[[str], Any],
) -> None:
    config = LedgerConfig(heartbeat_seconds=5.0)
    now = time.time()
    server = busy_server(now)
    store_w1, store_w0 = await open_store("w1"), await open_store("w0")
    w1 = SharedLedger(store_w1, config, 0, "w1")
    w0 = SharedLedger(store_w0, config, 0, "w0")
    w1.live_rows = lambda at: local_rows(server, at)
    await store_w1.heartbeat(w1.row(time.time()))
    await store_w0.heartbeat(w0.row(time.time()))

    with Ticker() as first_tick:
        started = time.perf_counter()
        first = await w1.publish_live()
        first_wall = time.perf_counter() - started
    assert first is not None and first.written == WORKERS and first.full
    with Ticker() as read_tick:
        started = time.perf_counter()
        await w0.refresh_live(time.time())
        read_wall = time.perf_counter() - started
    snapshot = w0.live
    assert len(snapshot.workers) == WORKERS
    some = snapshot.workers["addr7.rig7"]
    assert some.connections == 1 and dict(some.hashrate)[60] > 0
    # a tenth of them leave; the rest keep mining (their hashrates move: rewritten)
    for name in list(server.stats.workers)[::10]:
        server.stats.workers[name].connections = 0
    with Ticker() as again_tick:
        started = time.perf_counter()
        again = await w1.publish_live()
        again_wall = time.perf_counter() - started
    assert again is not None and not again.full
    await w0.refresh_live(time.time())
    online = sum(1 for w in w0.live.workers.values() if w.connections > 0)
    assert online == WORKERS - WORKERS // 10
    backend = "postgresql" if store_w1.where.startswith("PostgreSQL") else "sqlite"
    print(
        f"\n{backend}: {WORKERS} live workers: first publish {first_wall:.3f} s "
        f"(store thread {first.seconds:.3f} s, loop stalled at most "
        f"{first_tick.longest * 1000:.1f} ms); read+merge by another process {read_wall:.3f} s "
        f"(loop stalled at most {read_tick.longest * 1000:.1f} ms); next publish "
        f"({again.written} rows changed) {again_wall:.3f} s (loop stalled at most "
        f"{again_tick.longest * 1000:.1f} ms)"
    )
    for tick in (first_tick, read_tick, again_tick):
        assert tick.longest < MAX_STALL_SECONDS
    # a clean stop deletes them at once (the heartbeat is still fresh)
    await w1.forget_live()
    await w0.refresh_live(time.time())
    assert w0.live.workers == {}
