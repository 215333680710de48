"""The SQLite ledger store: migrations, exactly-once checkpoints, balances, blocks, payouts."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from pool.ledger.pps import UNITS_PER_SAT
from pool.ledger.store import (
    CONFIRMED,
    ORPHANED,
    PAYOUT_CONFIRMED,
    PAYOUT_FAILED,
    PAYOUT_PENDING,
    PAYOUT_SENT,
    SCHEMA_VERSION,
    Checkpoint,
    ShareRecord,
    Store,
    StoreError,
)


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


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "ledger.sqlite3")
    s.open()
    yield s  # type: ignore[misc]
    s.close()


def test_new_database_is_migrated_and_in_wal_mode(store: Store) -> None:
    assert store.schema_version == SCHEMA_VERSION
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


def test_shares_and_checkpoint_commit_together(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    s = Store(path)
    s.open()
    s.apply_share(share(credit=10), Checkpoint(1, 100))
    s.apply_share(share(credit=5, time=200.0), Checkpoint(1, 200))
    s.commit()
    s.apply_share(share(credit=7), Checkpoint(1, 300))  # applied, never committed: a crash
    s.db.close()  # type: ignore[union-attr]  # simulate the process dying (no commit)
    s.db = None
    again = Store(path)
    again.open()
    assert again.checkpoint() == Checkpoint(1, 200)
    worker = again.worker("a.1")
    assert worker is not None
    assert worker["shares"] == 2 and worker["credit_units"] == 15
    assert worker["last_share"] == 200.0 and worker["first_share"] == 120.0
    assert again.balance("addr-a").credited_units == 15  # type: ignore[union-attr]
    assert again.totals() == {"shares": 2, "credit_units": 15, "fee_units": 2}
    again.close()


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
    assert store.rewards_sat() == {"pending": 0, "confirmed": 0, "orphaned": 5_000_000_000}
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
