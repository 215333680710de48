"""Several writers on one store, on both backends: two ledgers (worker processes sharing a
SQLite file with ``shared=True``, or two instances on PostgreSQL) apply their own journals,
and each one's in-memory totals (what the API reads) show the whole pool after a reload;
heartbeat rows show both, a stopped one goes down. About 10 s."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pool.bitcoin import REGTEST
from pool.config import LedgerConfig
from pool.ledger.ledger import Ledger
from pool.ledger.shared import processes_view
from pool.ledger.store import Store
from tests.integration.test_ledger_thread import creds, share, wait_until

pytestmark = pytest.mark.integration

ADDRESS = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_two_writers_each_see_the_whole_pool(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    timing = dict(
        checkpoint_seconds=0.1,
        shared_refresh_seconds=0.2,
        heartbeat_seconds=0.5,
        storage_retry_seconds=0.05,
        storage_retry_max_seconds=0.5,
    )
    if backend == "postgresql":
        dsn = request.getfixturevalue("pg_database")
        config = LedgerConfig(backend="postgresql", dsn=dsn, **timing)  # type: ignore[arg-type]
        one = Ledger(config, tmp_path / "a", REGTEST, instance_id=1)
        two = Ledger(config, tmp_path / "b", REGTEST, instance_id=2)
    else:
        config = LedgerConfig(**timing)  # type: ignore[arg-type]
        one = Ledger(config, tmp_path, REGTEST, journal_id="w0", shared=True)
        two = Ledger(config, tmp_path, REGTEST, journal_id="w1", shared=True)
    await one.open()
    await two.open()
    who = creds(f"{ADDRESS}.rig")
    try:
        for _ in range(25):
            await one.on_share(share(who), who, time.time(), None)
        for _ in range(15):
            await two.on_share(share(who), who, time.time(), None)
        for ledger in (one, two):
            await wait_until(lambda ledger=ledger: ledger.aggregates.shares == 40, "totals", 30)
            await wait_until(lambda ledger=ledger: len(ledger.store.processes) == 2, "rows", 30)
        assert one.store.refreshes > 0 and two.store.refreshes > 0
        view = processes_view(two, time.time())
        assert view["pool_wide"]["processes_up"] == 2
        assert one.aggregates.balances[ADDRESS] == two.aggregates.balances[ADDRESS]
    finally:
        await one.close()
    try:
        await wait_until(
            lambda: processes_view(two, time.time())["pool_wide"]["processes_up"] == 1,
            "the stopped writer shown down",
            30,
        )
        assert (await two.store.run(Store.totals))["shares"] == 40
    finally:
        await two.close()
