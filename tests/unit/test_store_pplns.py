"""The store's PPLNS share log, block splits and crediting at maturity; SOLO blocks.

Real SQLite files; the expected credits are computed here with a loop of the test's own."""

from __future__ import annotations

import sqlite3
from fractions import Fraction
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from pool.ledger.aggregates import ShareRecord
from pool.ledger.pps import UNITS_PER_SAT
from pool.ledger.store import (
    CONFIRMED,
    MIGRATIONS,
    ORPHANED,
    PENDING,
    REJECTED,
    SCHEMA_VERSION,
    Checkpoint,
    Store,
)
from pool.ledger.store_pplns import PRUNE_EVERY, block_split, log_size
from tests.unit.test_store import MakeStore, make_store  # noqa: F401 (fixture)


def rec(
    address: str,
    difficulty: float,
    *,
    scheme: str = "pplns",
    block: str | None = None,
    window: Fraction | None = Fraction(10),
    reward_sat: int = 1_000,
    fee_bps: int = 100,
) -> ShareRecord:
    return ShareRecord(
        time=100.0,
        worker=f"{address}.w",
        address=address,
        difficulty=difficulty,
        expected_blocks=0.0,
        credit_units=0,
        fee_units=0,
        block_hash=block,
        block_height=5 if block else None,
        block_reward_sat=reward_sat if block else None,
        network_difficulty=5.0,
        scheme=scheme,
        fee_bps=fee_bps,
        pplns_window=window,
    )


@pytest.fixture
def store(make_store: MakeStore) -> Store:  # noqa: F811
    """On both backends (SQLite, a real PostgreSQL)."""
    s = make_store(pplns_max_rows=1000)
    s.open()
    yield s  # type: ignore[misc]
    s.close()


def credited(store: Store) -> dict[str, int]:
    """Balances with something credited (a share of 0 leaves a zero row, as under PPS)."""
    return {b.address: b.credited_units for b in store.balances() if b.credited_units}


def own_split(
    shares: list[tuple[str, float]], window: Fraction, reward: int, fee_bps: int
) -> dict[str, int]:
    """The test's own PPLNS: newest first, the straddling share partly, floor per address."""
    left = window
    weights: dict[str, Fraction] = {}
    for address, difficulty in reversed(shares):
        if left <= 0:
            break
        take = min(Fraction(difficulty), left)
        weights[address] = weights.get(address, Fraction(0)) + take
        left -= take
    net = Fraction(reward * (10_000 - fee_bps), 10_000)
    total = sum(weights.values())
    return {a: int(net * w / total) for a, w in weights.items()}


def test_block_split_is_snapshotted_and_credited_only_when_confirmed(store: Store) -> None:
    log = [("a", 4.0), ("b", 4.0), ("a", 3.0), ("c", 1.0)]
    records = [rec(a, d) for a, d in log[:-1]] + [rec("c", 1.0, block="aa" * 32)]
    # shares of other schemes do not enter the log
    records.insert(1, rec("z", 100.0, scheme="pps", window=None))
    store.apply_batch(records, Checkpoint(1, 10))
    store.commit()
    assert log_size(store.conn) == 4
    split = block_split(store.conn, "aa" * 32)
    assert split is not None
    expected = own_split(log, Fraction(10), 1_000 * UNITS_PER_SAT, 100)
    assert split["credits"] == expected
    # window 10: c1 + a3 + b4 + 2 of a's 4 -> a 5, b 4, c 1 of 990 sat net
    assert expected == {"a": 495 * UNITS_PER_SAT, "b": 396 * UNITS_PER_SAT, "c": 99 * UNITS_PER_SAT}
    assert store.block("aa" * 32)["scheme"] == "pplns"  # type: ignore[index]
    assert credited(store) == {}  # nothing before maturity
    assert store.set_block_status("aa" * 32, CONFIRMED, 100, 200.0, expect=PENDING)
    assert credited(store) == expected
    # a second confirmation (a replayed check) credits nothing more
    store.set_block_status("aa" * 32, CONFIRMED, 101, 201.0)
    assert credited(store) == expected


def test_orphaned_and_rejected_blocks_credit_nothing(store: Store) -> None:
    store.apply_batch(
        [rec("a", 2.0), rec("b", 2.0, block="bb" * 32), rec("a", 1.0, block="cc" * 32)],
        Checkpoint(1, 3),
    )
    assert store.set_block_status("bb" * 32, ORPHANED, -1, 10.0)
    assert store.set_block_status("cc" * 32, REJECTED, 0, 10.0)
    assert credited(store) == {}
    # an orphan that comes back (a reorg back) and matures is credited then, once
    assert store.set_block_status("bb" * 32, CONFIRMED, 100, 20.0, expect=ORPHANED)
    assert set(credited(store)) == {"a", "b"}


def test_rollback_undoes_log_and_split_and_replay_rebuilds_them_once(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    s = Store(path)
    s.open()
    s.apply_batch([rec("a", 3.0)], Checkpoint(1, 1))
    s.commit()
    batch = [rec("b", 5.0), rec("a", 1.0, block="dd" * 32)]
    s.apply_batch(batch, Checkpoint(1, 3))
    s.rollback()  # a crash before the commit
    assert log_size(s.conn) == 1 and block_split(s.conn, "dd" * 32) is None
    s.apply_batch(batch, Checkpoint(1, 3))  # the replay
    s.commit()
    s.close()
    s = Store(path)
    s.open()
    assert log_size(s.conn) == 3
    split = block_split(s.conn, "dd" * 32)
    assert split is not None
    assert split["credits"] == own_split(
        [("a", 3.0), ("b", 5.0), ("a", 1.0)], Fraction(10), 1_000 * UNITS_PER_SAT, 100
    )
    s.close()


def test_solo_block_is_nobodys_and_outside_the_reserve(store: Store) -> None:
    store.apply_batch(
        [
            rec("s", 1.0, scheme="solo", window=None),
            rec("s", 1.0, scheme="solo", window=None, block="ee" * 32, reward_sat=5_000),
        ],
        Checkpoint(1, 2),
    )
    assert store.set_block_status("ee" * 32, CONFIRMED, 100, 10.0)
    assert credited(store) == {} and log_size(store.conn) == 0
    agg = store.load_aggregates(now=10.0)
    assert agg.blocks["ee" * 32]["scheme"] == "solo"
    assert agg.reserve().rewards_earned_units == 0
    assert agg.workers["s.w"].shares == 2  # counted in the worker's stats


def test_log_is_pruned_to_what_future_windows_can_reach(tmp_path: Path) -> None:
    s = Store(tmp_path / "ledger.sqlite3", pplns_max_rows=1000)
    s.open()
    window = Fraction(10)  # keeps PRUNE_MARGIN (4) x 10 = 40 units, 40 shares of 1
    for i in range(5):
        s.apply_batch([rec("a", 1.0, window=window) for _ in range(2000)], Checkpoint(1, i + 1))
    s.commit()
    assert 40 <= log_size(s.conn) <= 40 + PRUNE_EVERY  # pruned as it goes
    s.pplns.prune(s.conn, [rec("a", 1.0, window=window)])
    assert log_size(s.conn) == 40
    s.close()
    # the row bound: a window far larger than the log keeps only max_rows
    s = Store(tmp_path / "other.sqlite3", pplns_max_rows=1000)
    s.open()
    s.apply_batch([rec("a", 1.0, window=Fraction(10**9)) for _ in range(5000)], Checkpoint(1, 1))
    s.pplns.prune(s.conn, [rec("a", 1.0, window=Fraction(10**9))])
    assert log_size(s.conn) == 1000
    s.close()


def test_a_second_version_database_gets_the_pplns_tables(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    for migration in MIGRATIONS[:2]:
        for statement in migration.split(";"):
            if statement.strip():
                db.execute(statement)
    db.execute("PRAGMA user_version = 2")
    db.execute(
        "INSERT INTO blocks (hash, height, worker, address, reward_sat, network_difficulty, "
        "found_at, status, confirmations, updated_at) "
        "VALUES ('ff', 3, 'a.1', 'addr-a', 100, 1.0, 1.0, 'pending', 0, 1.0)"
    )
    db.close()
    s = Store(path)
    s.open()
    assert s.schema_version == SCHEMA_VERSION  # and every later migration
    old = s.block("ff")
    assert old is not None and old["scheme"] == ""  # read as the ledger's scheme
    assert s.load_aggregates(now=5.0).reserve().rewards_earned_units == 100 * UNITS_PER_SAT
    s.close()


def test_two_journals_append_to_one_log(make_store: MakeStore) -> None:  # noqa: F811
    """Worker processes: one store per journal on one database; their shares interleave in
    the log in the order their write transactions commit, never on the same sequence."""
    first, second = make_store("ledger", "w1"), make_store("ledger", "w2")
    first.open()
    second.open()
    first.apply_batch([rec("a", 2.0), rec("a", 2.0)], Checkpoint(1, 2))
    first.commit()
    second.apply_batch([rec("b", 3.0)], Checkpoint(1, 1))
    second.commit()
    first.apply_batch([rec("a", 4.0, block="ab" * 32)], Checkpoint(1, 3))
    first.commit()
    split = block_split(first.conn, "ab" * 32)
    assert split is not None
    assert split["credits"] == own_split(
        [("a", 2.0), ("a", 2.0), ("b", 3.0), ("a", 4.0)], Fraction(10), 1_000 * UNITS_PER_SAT, 100
    )
    assert split["window_used"] == "10" and split["shares"] == 4  # the oldest straddles
    assert log_size(first.conn) == 4
    first.close()
    second.close()


def test_a_window_cut_short_by_the_row_bound_is_logged(tmp_path: Path) -> None:
    s = Store(tmp_path / "ledger.sqlite3", pplns_max_rows=1000)
    s.open()
    big = Fraction(10**6)
    s.apply_batch([rec("a", 1.0, window=big) for _ in range(3000)], Checkpoint(1, 1))
    s.pplns.prune(s.conn, [rec("a", 1.0, window=big)])
    with capture_logs() as logs:
        s.apply_batch([rec("b", 1.0, window=big, block="ac" * 32)], Checkpoint(1, 2))
    [short] = [e for e in logs if e["event"] == "pplns_window_short"]
    assert short["log_level"] == "warning" and short["shares"] == 1001
    assert "pplns_max_log_shares" in short["note"]
    s.close()
