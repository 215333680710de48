"""The ledger store: migrations, exactly-once checkpoints, balances, blocks, payouts.

Tests taking ``store`` or ``make_store`` run on both backends: SQLite and a real PostgreSQL
(tests/pg_harness.py; those are skipped, with the reason, only where it is not installed)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pool.ledger.aggregates import Aggregates, BatchDelta
from pool.ledger.pps import UNITS_PER_SAT
from pool.ledger.store import (
    CONFIRMED,
    MIGRATIONS,
    ORPHANED,
    PAYOUT_CONFIRMED,
    PAYOUT_FAILED,
    PAYOUT_PENDING,
    PAYOUT_SENT,
    PENDING,
    REJECTED,
    SCHEMA_VERSION,
    Balance,
    Checkpoint,
    ShareRecord,
    Store,
    StoreError,
)
from tests.pg_harness import PG_PASSWORD, PgServer

BACKENDS = ["sqlite", "postgresql"]
MakeStore = Callable[..., Store]


def share(
    worker: str = "a.1", address: str = "addr-a", credit: int = 10, **kw: object
) -> ShareRecord:
    base: dict[str, object] = dict(
        time=120.0,
        worker=worker,
        address=address,
        difficulty=2.0,
        expected_blocks=0.01,
        credit_units=credit,
        fee_units=1,
    )
    base.update(kw)
    return ShareRecord(**base)  # type: ignore[arg-type]


@pytest.fixture(params=BACKENDS)
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeStore]:
    """``make(name, journal_id)``: a store (not opened) on this test's backend; the same name
    is the same database."""
    backend = request.param
    databases: dict[str, str] = {}
    made: list[Store] = []

    def make(name: str = "ledger", journal_id: str = "", **kw: Any) -> Store:
        if backend == "sqlite":
            store = Store(tmp_path / f"{name}.sqlite3", journal_id, **kw)
        else:
            from pool.ledger.pg import PgTarget

            server: PgServer = request.getfixturevalue("postgres")
            if name not in databases:
                databases[name] = server.create_database()
            store = Store(
                tmp_path / name,
                journal_id,
                PgTarget(server.dsn(databases[name]), PG_PASSWORD),
                **kw,
            )
        made.append(store)
        return store

    yield make
    for store in made:
        if store.db is not None:
            store.db.close()
            store.db = None
    if databases:
        server = request.getfixturevalue("postgres")
        for database in databases.values():
            server.drop_database(database)


@pytest.fixture
def store(make_store: MakeStore) -> Iterator[Store]:
    s = make_store()
    s.open()
    yield s
    s.close()


def test_new_database_is_migrated(store: Store) -> None:
    assert store.schema_version == SCHEMA_VERSION
    if store.backend == "sqlite":
        assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.checkpoint() is None


def test_database_from_a_newer_pool_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match="newer version"):
        Store(path).open()


def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable SQLite database"):
        Store(path).open()


def test_shares_and_checkpoint_commit_together(make_store: MakeStore) -> None:
    s = make_store()
    s.open()
    s.apply_share(share(credit=10), Checkpoint(1, 100))
    s.apply_share(share(credit=5, time=200.0), Checkpoint(1, 200))
    s.commit()
    s.apply_share(share(credit=7), Checkpoint(1, 300))  # applied, never committed: a crash
    s.db.close()  # type: ignore[union-attr]  # simulate the process dying (no commit)
    s.db = None
    again = make_store()
    again.open()
    assert again.checkpoint() == Checkpoint(1, 200)
    worker = again.worker("a.1")
    assert worker is not None
    assert worker["shares"] == 2 and worker["credit_units"] == 15
    assert worker["last_share"] == 200.0 and worker["first_share"] == 120.0
    assert again.balance("addr-a").credited_units == 15  # type: ignore[union-attr]
    assert again.totals() == {"shares": 2, "credit_units": 15, "fee_units": 2}
    again.close()


def test_each_journal_keeps_its_own_checkpoint_in_one_store(make_store: MakeStore) -> None:
    """Two writers (worker processes) apply their own journals into one store: each
    checkpoint is its own, and both writers' credits add up in the shared balances."""
    one, two = make_store(journal_id="w0"), make_store(journal_id="w1")
    one.open()
    two.open()
    one.apply_share(share(credit=10), Checkpoint(1, 100))
    one.commit()
    two.apply_share(share(credit=3), Checkpoint(4, 40))
    two.commit()
    assert one.checkpoint() == Checkpoint(1, 100)
    assert two.checkpoint() == Checkpoint(4, 40)
    alone = make_store()
    alone.open()
    assert alone.checkpoint() is None
    assert alone.balance("addr-a").credited_units == 13  # type: ignore[union-attr]
    for s in (one, two, alone):
        s.close()


def test_rollback_discards_uncommitted_shares_and_their_checkpoint(store: Store) -> None:
    store.apply_share(share(credit=10), Checkpoint(1, 100))
    store.commit()
    store.apply_share(share(credit=7), Checkpoint(1, 200))  # e.g. half-applied, then failed
    store.rollback()
    store.set_block_status("ef" * 32, ORPHANED, -1, 1.0)  # a later own transaction commits
    store.commit()
    assert store.checkpoint() == Checkpoint(1, 100)
    assert store.totals() == {"shares": 1, "credit_units": 10, "fee_units": 1}


def test_share_minutes_and_luck_inputs(store: Store) -> None:
    store.apply_share(share(time=60.0), Checkpoint(1, 1))
    store.apply_share(share(time=119.0), Checkpoint(1, 2))
    store.apply_share(share(worker="b.1", address="addr-b", time=130.0), Checkpoint(1, 3))
    store.commit()
    rows = store.minutes(0)
    assert [(r["minute"], r["shares"]) for r in rows] == [(1, 2), (2, 1)]
    assert [r["shares"] for r in store.minutes(0, worker="b.1")] == [1]
    assert store.expected_blocks_since(120.0) == pytest.approx(0.01)
    assert store.expected_blocks_since(0.0) == pytest.approx(0.03)


def test_found_block_recorded_once_and_settled(store: Store) -> None:
    rec = share(
        block_hash="ab" * 32, block_height=7, block_reward_sat=5_000_000_000, network_difficulty=3.0
    )
    store.apply_share(rec, Checkpoint(1, 1))
    store.apply_share(rec, Checkpoint(1, 2))  # the same block twice: one row
    store.commit()
    [block] = store.blocks()
    assert block["status"] == "pending" and block["reward_sat"] == 5_000_000_000
    assert store.rewards_sat()["pending"] == 5_000_000_000
    store.set_block_status("ab" * 32, ORPHANED, -1, 500.0)
    assert store.rewards_sat() == {
        "pending": 0,
        "confirmed": 0,
        "orphaned": 5_000_000_000,
        "rejected": 0,
    }
    store.set_block_status("ab" * 32, CONFIRMED, 100, 600.0)
    assert store.blocks((CONFIRMED,))[0]["confirmations"] == 100
    assert store.blocks_found_since(0) == 1


def test_block_of_an_unjournaled_share_is_recorded_without_crediting_it(store: Store) -> None:
    store.apply_share(share(credit=10), Checkpoint(1, 10))  # an earlier share, not committed yet
    rec = share(
        credit=99,
        block_hash="cd" * 32,
        block_height=8,
        block_reward_sat=4_000,
        network_difficulty=2.0,
    )
    store.record_block(rec)
    store.record_block(rec)  # recorded once
    [block] = store.blocks()
    assert (block["hash"], block["height"], block["status"]) == ("cd" * 32, 8, "pending")
    assert store.rewards_sat()["pending"] == 4_000
    assert store.totals() == {"shares": 1, "credit_units": 10, "fee_units": 1}  # not credited
    assert store.checkpoint() == Checkpoint(1, 10)  # the earlier share was committed first
    with pytest.raises(ValueError, match="found a block"):
        store.record_block(share())


def test_payout_moves_exact_amounts(store: Store) -> None:
    store.apply_share(share(credit=5 * UNITS_PER_SAT + 123), Checkpoint(1, 1))
    store.apply_share(
        share(worker="b.1", address="addr-b", credit=9 * UNITS_PER_SAT), Checkpoint(1, 2)
    )
    total = store.create_payout("p1", [("addr-a", 5), ("addr-b", 9)], 1000.0)
    assert total == 14
    assert store.balance("addr-a").pending_units == 5 * UNITS_PER_SAT  # type: ignore[union-attr]
    assert store.balance("addr-a").balance_units == 123  # type: ignore[union-attr]
    assert store.checkpoint() == Checkpoint(1, 2)  # shares were committed first
    store.finish_payout("p1", PAYOUT_SENT, 1001.0, txid="t" * 64)
    bal = store.balance("addr-a")
    assert bal is not None and bal.paid_units == 5 * UNITS_PER_SAT and bal.pending_units == 0
    assert bal.balance_units == 123  # the sub-satoshi rest stays
    store.finish_payout("p1", PAYOUT_CONFIRMED, 1002.0)
    [payout] = store.payouts()
    assert payout["status"] == PAYOUT_CONFIRMED and payout["txid"] == "t" * 64
    assert payout["items"] == [
        {"address": "addr-a", "amount_sat": 5},
        {"address": "addr-b", "amount_sat": 9},
    ]
    assert [p["id"] for p in store.payouts(address="addr-b")] == ["p1"]
    with pytest.raises(StoreError, match="cannot go from"):
        store.finish_payout("p1", PAYOUT_FAILED, 1003.0)


def test_failed_payout_and_removed_item_return_the_amounts(store: Store) -> None:
    store.apply_share(share(credit=5 * UNITS_PER_SAT), Checkpoint(1, 1))
    store.apply_share(
        share(worker="b.1", address="addr-b", credit=3 * UNITS_PER_SAT), Checkpoint(1, 2)
    )
    store.create_payout("p1", [("addr-a", 5), ("addr-b", 3)], 1.0)
    store.remove_payout_item("p1", "addr-b", 2.0, "bad address")
    assert store.balance("addr-b").balance_units == 3 * UNITS_PER_SAT  # type: ignore[union-attr]
    assert store.payouts()[0]["total_sat"] == 5
    store.finish_payout("p1", PAYOUT_FAILED, 3.0, error="insufficient funds")
    assert store.balance("addr-a").balance_units == 5 * UNITS_PER_SAT  # type: ignore[union-attr]
    assert store.payouts((PAYOUT_PENDING,)) == []


def test_payout_beyond_the_balance_is_refused_and_rolled_back(store: Store) -> None:
    store.apply_share(share(credit=5 * UNITS_PER_SAT), Checkpoint(1, 1))
    with pytest.raises(StoreError, match="cannot pay"):
        store.create_payout("p1", [("addr-a", 6)], 1.0)
    assert store.payouts() == []
    assert store.balance("addr-a").pending_units == 0  # type: ignore[union-attr]
    assert store.totals()["credit_units"] == 5 * UNITS_PER_SAT  # the share survived the rollback


# -- batches, the in-memory aggregates, rejected blocks, the one-thread rule -----------------------


def block_share(block_hash: str, **kw: object) -> ShareRecord:
    return share(
        block_hash=block_hash,
        block_height=9,
        block_reward_sat=3_000,
        network_difficulty=2.0,
        **kw,
    )


def mixed_shares() -> list[ShareRecord]:
    """Shares of three workers (two addresses) over three minutes, one of them a block."""
    out = []
    for i in range(30):
        worker, address = [("a.1", "addr-a"), ("a.2", "addr-a"), ("b.1", "addr-b")][i % 3]
        out.append(
            share(
                worker=worker,
                address=address,
                credit=1000 + i,
                time=60.0 + 5.5 * i,
                difficulty=0.5 + i / 8,
                expected_blocks=0.001 * (i + 1),
            )
        )
    out[7] = block_share("ee" * 32, worker="a.2", address="addr-a", time=100.0)
    return out


def assert_same(agg: Aggregates, loaded: Aggregates) -> None:
    assert agg.workers == loaded.workers  # exact, floats included
    assert agg.names() == loaded.names() == sorted(loaded.workers)
    assert agg.balances == loaded.balances
    assert agg.blocks == loaded.blocks
    assert agg.totals() == loaded.totals()
    assert agg.reserve() == loaded.reserve()
    same_minutes(agg.pool_minutes(0), loaded.pool_minutes(0))
    assert agg.expected_all == pytest.approx(loaded.expected_all)


def same_minutes(got: list[dict[str, float]], want: list[dict[str, float]]) -> None:
    """Per-minute rows: the same minutes and shares, the float sums up to rounding."""
    assert [(r["minute"], r["shares"]) for r in got] == [(r["minute"], r["shares"]) for r in want]
    for g, w in zip(got, want, strict=True):
        assert g["difficulty_sum"] == pytest.approx(w["difficulty_sum"])
        assert g["expected_blocks"] == pytest.approx(w["expected_blocks"])


def test_a_batch_is_the_same_as_its_shares_one_by_one(make_store: MakeStore) -> None:
    records = mixed_shares()
    one = make_store("one")
    one.open()
    for i, rec in enumerate(records):
        one.apply_share(rec, Checkpoint(1, i + 1))
    one.commit()
    batched = make_store("batched")
    batched.open()
    batched.apply_batch(records[:10], Checkpoint(1, 10))
    batched.apply_batch(records[10:], Checkpoint(1, 30))
    batched.commit()
    for s in (one, batched):
        assert s.checkpoint() == Checkpoint(1, 30)
    assert one.workers() == batched.workers()
    assert one.balances() == batched.balances()
    assert (
        one.totals()
        == batched.totals()
        == {
            "shares": 30,
            "credit_units": sum(r.credit_units for r in records),
            "fee_units": 30,
        }
    )
    assert one.minutes(0) == batched.minutes(0)
    assert one.minutes(0, worker="a.2") == batched.minutes(0, worker="a.2")
    assert one.blocks() == batched.blocks()
    one.close()
    batched.close()


def test_aggregates_follow_the_store_exactly(store: Store) -> None:
    """What the loop reads in memory equals what the store holds: loaded at start, then
    merged from each batch's delta and each changed block or balance."""
    store.apply_share(share(time=30.0), Checkpoint(1, 1))
    store.commit()
    agg = store.load_aggregates(now=1000.0)
    records = mixed_shares()
    for i in range(0, 30, 7):
        agg.merge(store.apply_batch(records[i : i + 7], Checkpoint(2, i + 7)))
    assert_same(agg, store.load_aggregates(now=1000.0))
    # a block changes, a payout moves amounts: the rows come back and are set
    assert store.set_block_status("ee" * 32, CONFIRMED, 100, 500.0)
    agg.set_block(store.block("ee" * 32))  # type: ignore[arg-type]
    agg.merge(store.apply_share(share(credit=5 * UNITS_PER_SAT), Checkpoint(3, 1)))
    store.create_payout("p1", [("addr-a", 5)], 600.0)
    agg.set_balances(store.balances_of(["addr-a"]))
    assert agg.balances["addr-a"].pending_units == 5 * UNITS_PER_SAT
    assert_same(agg, store.load_aggregates(now=1000.0))
    # reads
    assert agg.workers_of("addr-a") == ["a.1", "a.2"]
    assert agg.recent_blocks(10) == store.blocks()
    assert agg.luck(1000.0)["all"]["found_blocks"] == store.blocks_found_since(0) == 1
    assert agg.expected_blocks_since(120.0) == pytest.approx(store.expected_blocks_since(120.0))
    same_minutes(agg.pool_minutes(2), store.minutes(2))


def test_luck_windows_from_minutes_and_hours() -> None:
    minutes = 3 * 24 * 60  # three days, one share a minute, each 0.001 of a block
    records = [share(time=60.0 * m + 1, expected_blocks=0.001, credit=1) for m in range(minutes)]
    agg = Aggregates()
    agg.merge(BatchDelta.of(records))
    now = 60.0 * minutes - 0.5
    luck = agg.luck(now)
    assert luck["1h"]["expected_blocks"] == pytest.approx(0.001 * 61)  # minutes 60*.. partial
    assert luck["24h"]["expected_blocks"] == pytest.approx(0.001 * (24 * 60 + 1))
    assert luck["7d"]["expected_blocks"] == pytest.approx(0.001 * minutes)
    assert luck["all"]["expected_blocks"] == pytest.approx(0.001 * minutes)
    assert luck["all"]["found_blocks"] == 0 and luck["all"]["luck"] is None
    for since in (0.0, 59.0, 3600.0 * 5 + 17, now - 3600 * 24):
        direct = sum(0.001 for m in range(minutes) if m >= int(since // 60))
        assert agg.expected_blocks_since(since) == pytest.approx(direct), since


def test_a_rejected_block_is_never_counted(store: Store) -> None:
    assert store.record_block(block_share("aa" * 32), REJECTED) is not None
    store.apply_share(block_share("bb" * 32), Checkpoint(1, 1))
    # a replay of the rejected block's share leaves it rejected
    store.apply_share(block_share("aa" * 32), Checkpoint(1, 2))
    store.commit()
    status = {b["hash"]: b["status"] for b in store.blocks()}
    assert status == {"aa" * 32: REJECTED, "bb" * 32: PENDING}
    assert store.rewards_sat()[REJECTED] == 3_000 and store.rewards_sat()[PENDING] == 3_000
    assert store.blocks_found_since(0) == 1
    agg = store.load_aggregates(now=200.0)
    assert agg.reserve().rewards_earned_units == 3_000 * UNITS_PER_SAT
    assert agg.block_counts()[REJECTED] == 1 and agg.luck(200.0)["all"]["found_blocks"] == 1


def test_block_status_changes_only_from_the_expected_status(store: Store) -> None:
    store.apply_share(block_share("cc" * 32), Checkpoint(1, 1))
    assert store.set_block_status("cc" * 32, REJECTED, 0, 5.0, expect=PENDING)
    # a check that read it as pending earlier must not overwrite the rejection
    assert not store.set_block_status("cc" * 32, ORPHANED, -1, 6.0, expect=PENDING)
    assert store.block("cc" * 32)["status"] == REJECTED  # type: ignore[index]
    assert not store.set_block_status("dd" * 32, ORPHANED, -1, 6.0)  # no such block
    with pytest.raises(ValueError, match="unknown block status"):
        store.set_block_status("cc" * 32, "lost", 0, 7.0)


def test_a_first_version_database_gets_the_new_indexes(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    for statement in MIGRATIONS[0].split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO balances (address, credited_units) VALUES ('addr-a', 7)")
    db.close()
    s = Store(path)
    s.open()
    assert s.schema_version == SCHEMA_VERSION == len(MIGRATIONS)
    indexes = {r[0] for r in s.conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    tables = {r[0] for r in s.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "best_shares" in tables  # migration 3
    assert {"share_minutes_worker", "workers_address", "blocks_height"} <= indexes
    assert s.balance("addr-a") == Balance("addr-a", 7, 0, 0)
    s.close()


def test_the_store_is_used_by_one_thread_only(tmp_path: Path) -> None:
    store = Store(tmp_path / "ledger.sqlite3")
    store.open()
    errors: list[BaseException] = []

    def other() -> None:
        try:
            store.totals()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert len(errors) == 1 and isinstance(errors[0], sqlite3.ProgrammingError)
    store.close()


def test_address_minutes_sum_the_address_workers(store: Store) -> None:
    records = mixed_shares()
    store.apply_batch(records, Checkpoint(1, 30))
    rows = store.address_minutes(0, "addr-a")
    expected: dict[int, int] = {}
    for r in records:
        if r.address == "addr-a":
            expected[int(r.time // 60)] = expected.get(int(r.time // 60), 0) + 1
    assert {r["minute"]: r["shares"] for r in rows} == expected
    assert store.address_minutes(0, "addr-z") == []


def test_many_workers_of_one_address_arrive_in_any_order() -> None:
    names = [f"addr-a.w{(i * 7919) % 20_000:05d}" for i in range(20_000)]  # shuffled
    records = [share(worker=n) for n in names]
    agg = Aggregates()
    for i in range(0, len(records), 100):
        agg.merge(BatchDelta.of(records[i : i + 100]))
    assert list(agg.workers_of("addr-a")) == sorted(names) == agg.names()
    assert agg.workers_of("addr-z") == ()


def test_writers_starting_at_once_migrate_once(make_store: MakeStore) -> None:
    """Worker processes (or instances) starting at once on one store: each migration runs
    once (SQLite: the version read again under the write lock; PostgreSQL: an advisory
    lock)."""
    stores = [make_store("ledger", f"w{i}") for i in range(4)]
    errors: list[BaseException] = []
    versions: list[int] = []
    start = threading.Barrier(len(stores))

    def open_store(store: Store) -> None:
        start.wait()
        try:
            store.open()
            versions.append(store.schema_version)
            store.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_store, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert versions == [SCHEMA_VERSION] * 4
