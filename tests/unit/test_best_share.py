"""Best share difficulty: the in-memory book (pure) and the store's table (real SQLite): all
time and per block round, replayed any number of times, in any batching, with one answer."""

from __future__ import annotations

import random

from pool.best_share import BestShares
from pool.ledger.records import share_record_from
from pool.ledger.store import Checkpoint, ShareRecord, Store
from pool.ledger.store_best import load_best
from tests.unit.test_store import MakeStore, make_store  # noqa: F401 (fixture)


def rec(t: float, worker: str, d: float, block: bool = False) -> ShareRecord:
    address = worker.partition(".")[0]
    return ShareRecord(
        time=t,
        worker=worker,
        address=address,
        difficulty=0.001,
        expected_blocks=0.0,
        credit_units=0,
        fee_units=0,
        block_hash=f"{int(t):064x}" if block else None,
        block_height=1 if block else None,
        block_reward_sat=1 if block else None,
        network_difficulty=1.0 if block else None,
        share_difficulty=d,
    )


# Round 1: a.1 reaches 9, a.2 reaches 5, the block (b.1, 50) ends it; round 2: a.1 3, b.1 7.
RECORDS = [
    rec(1.0, "a.1", 2.0),
    rec(2.0, "a.1", 9.0),
    rec(3.0, "a.2", 5.0),
    rec(4.0, "b.1", 50.0, block=True),
    rec(5.0, "a.1", 3.0),
    rec(6.0, "b.1", 7.0),
    rec(7.0, "a.1", 0.0),  # an old record: no achieved difficulty
]


def expect(view: dict[str, object], best: float, round_best: float) -> None:
    assert (view["best_difficulty"], view["round_best_difficulty"]) == (best, round_best), view


def check(book: BestShares) -> None:
    expect(book.view(book.workers.get("a.1")), 9.0, 3.0)
    expect(book.view(book.workers.get("a.2")), 5.0, 0.0)
    expect(book.view(book.workers.get("b.1")), 50.0, 7.0)
    expect(book.view(book.addresses.get("a")), 9.0, 3.0)
    expect(book.view(book.addresses.get("b")), 50.0, 7.0)
    expect(book.view(book.pool), 50.0, 7.0)
    assert book.round_started == 4.0
    assert book.view(book.workers.get("a.1"))["best_at"] == 2.0


def test_in_memory_book() -> None:
    book = BestShares()
    for r in RECORDS:
        book.observe(r.worker, r.address, r.share_difficulty, r.time)
        if r.block_hash:
            book.end_round(r.time)
    check(book)
    expect(book.view(None), 0.0, 0.0)


def _apply(store: Store, batches: list[list[ShareRecord]]) -> None:
    for i, batch in enumerate(batches):
        store.apply_batch(batch, Checkpoint(0, i + 1))
    store.commit()


def test_store_keeps_it_and_replays_are_harmless(make_store: MakeStore) -> None:  # noqa: F811
    """On both backends (SQLite, a real PostgreSQL)."""
    store = make_store("ledger")
    store.open()
    try:
        _apply(store, [RECORDS])
        book = BestShares()
        book.load(*load_best(store))
        check(book)
        # the journal replayed after a crash, cut into other batches, twice: the same answer
        rng = random.Random(7)
        for _ in range(3):
            cuts = sorted(rng.sample(range(1, len(RECORDS)), 3))
            parts = [RECORDS[a:b] for a, b in zip([0, *cuts], [*cuts, len(RECORDS)], strict=True)]
            _apply(store, parts)
        again = BestShares()
        again.load(*load_best(store))
        check(again)
    finally:
        store.close()
    # a fresh process opening the same file
    reopened = make_store("ledger")
    reopened.open()
    try:
        book = BestShares()
        book.load(*load_best(reopened))
        check(book)
    finally:
        reopened.close()


def test_journal_records_without_the_field_read_as_zero() -> None:
    base = {
        "time": 1.0,
        "worker": "a.1",
        "address": "a",
        "difficulty": 1.0,
        "target": (1 << 240).to_bytes(32, "big"),
        "credit": 0,
        "fee": 0,
    }
    assert share_record_from(base).share_difficulty == 0.0
    assert share_record_from({**base, "share_difficulty": 4.5}).share_difficulty == 4.5
