"""The ledger on a real PostgreSQL (tests/pg_harness.py): the server stopped and started
under load (a storage fault that recovers by itself, every share credited once), two
writers (instances) applying their own journals into one database and each seeing the whole
pool, an instance_id already live refused, migrations run once by two pools starting at once,
a newer schema refused, a wrong password a clear error. About 30 s."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psycopg
import pytest

from pool.bitcoin import REGTEST
from pool.config import LedgerConfig
from pool.ledger.ledger import Ledger, LedgerError
from pool.ledger.pg import PgTarget
from pool.ledger.store import SCHEMA_VERSION, Store, StoreError, StoreFault
from tests.integration.test_ledger_thread import creds, share, wait_until
from tests.pg_harness import PG_PASSWORD, PgServer

pytestmark = pytest.mark.integration

ADDRESS = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
OTHER = "bcrt1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qzf4jry"


def pg_config(dsn: str, **kw: object) -> LedgerConfig:
    base: dict[str, object] = dict(
        backend="postgresql",
        dsn=dsn,
        checkpoint_seconds=0.1,
        storage_retry_seconds=0.05,
        storage_retry_max_seconds=0.5,
        shared_refresh_seconds=0.2,
        heartbeat_seconds=0.5,
    )
    base.update(kw)
    return LedgerConfig(**base)  # type: ignore[arg-type]


async def test_a_postgresql_restart_degrades_the_store_and_it_recovers(
    pg_database: str, postgres: PgServer, tmp_path: Path
) -> None:
    config = pg_config(pg_database)
    ledger = Ledger(config, tmp_path, REGTEST)
    await ledger.open()
    who = creds(f"{ADDRESS}.rig")
    count = 0
    try:
        for _ in range(5):
            await ledger.on_share(share(who), who, time.time(), None)
            count += 1
        await wait_until(lambda: ledger.aggregates.shares == count, "the first shares", 60)
        postgres.stop("immediate")  # like a crash of the database server
        try:
            for _ in range(7):  # the journal still takes them: acknowledged
                await ledger.on_share(share(who), who, time.time(), None)
                count += 1
            await wait_until(lambda: ledger.store.broken is not None, "the store degraded", 60)
            assert "still journaled and acknowledged" in (ledger.degraded or "")
            await asyncio.sleep(0.5)  # a few failed retries while the server is down
            assert ledger.store.broken is not None and ledger.store.recoveries == 0
            await ledger.on_share(share(who), who, time.time(), None)
            count += 1
        finally:
            postgres.start()
        await wait_until(lambda: ledger.store.broken is None, "the recovery", 60)
        assert ledger.health()["store_recoveries"] >= 1
        await wait_until(lambda: ledger.aggregates.shares == count, "every share", 60)
        await ledger.commit()
        assert (await ledger.store.run(Store.totals))["shares"] == count
    finally:
        await ledger.close()
    again = Ledger(config, tmp_path, REGTEST)  # a restart replays nothing twice
    await again.open()
    try:
        assert again.replayed == 0
        assert (await again.store.run(Store.totals))["shares"] == count
    finally:
        await again.close()


async def test_two_instances_write_one_database_and_see_the_whole_pool(
    pg_database: str, tmp_path: Path
) -> None:
    config = pg_config(pg_database)
    one = Ledger(config, tmp_path / "one", REGTEST, instance_id=1)
    two = Ledger(config, tmp_path / "two", REGTEST, instance_id=2)
    await one.open()
    await two.open()
    a, b = creds(f"{ADDRESS}.one"), creds(f"{OTHER}.two")
    try:
        for i in range(40):  # interleaved, both on one shared address too
            await one.on_share(share(a), a, time.time(), None)
            await two.on_share(share(b if i % 2 else a), b if i % 2 else a, time.time(), None)
        for ledger in (one, two):
            await wait_until(
                lambda ledger=ledger: ledger.aggregates.shares == 80, "the pool-wide totals", 30
            )
            await wait_until(
                lambda ledger=ledger: len(ledger.store.processes) == 2, "both processes", 30
            )
        assert {p["instance_id"] for p in one.shared.view(time.time())} == {1, 2}
        assert all(p["up"] for p in two.shared.view(time.time()))
        totals = await one.store.run(Store.totals)
        assert totals["shares"] == 80
        assert one.store.applied == two.store.applied == 40  # each applied its own journal
        balances = {bal.address: bal.credited_units for bal in await two.store.run(Store.balances)}
        assert set(balances) == {ADDRESS, OTHER}
        # the same instance_id while the first is alive: refused (one checkpoint per writer)
        twin = Ledger(config, tmp_path / "twin", REGTEST, instance_id=1)
        twin.shared.pid = -1  # another process (pid) of this host
        with pytest.raises(LedgerError, match=r"instance_id 1 .* is in use"):
            await twin.open()
    finally:
        await one.close()
        await two.close()
    again = Ledger(config, tmp_path / "one", REGTEST, instance_id=1)
    await again.open()  # the heartbeat is its own, not another live process's
    try:
        assert again.replayed == 0
        assert (await again.store.run(Store.totals))["shares"] == 80
    finally:
        await again.close()


def test_a_newer_schema_is_refused_and_a_wrong_password_is_clear(pg_database: str) -> None:
    store = Store(Path("unused"), "", PgTarget(pg_database, PG_PASSWORD))
    store.open()
    store.conn.execute("UPDATE pool_schema SET version = ? WHERE id = 1", (SCHEMA_VERSION + 1,))
    store.close()
    with pytest.raises(StoreError, match="newer version"):
        Store(Path("unused"), "", PgTarget(pg_database, PG_PASSWORD)).open()
    with pytest.raises(StoreFault, match="cannot connect to PostgreSQL") as info:
        Store(Path("unused"), "", PgTarget(pg_database, "not-the-password")).open()
    assert "not-the-password" not in str(info.value)
    with psycopg.connect(pg_database, password=PG_PASSWORD) as conn:
        assert conn.execute("SELECT version FROM pool_schema").fetchone() == (SCHEMA_VERSION + 1,)
