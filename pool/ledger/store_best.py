"""Best share difficulty in the ledger store: the ``best_shares`` table (portable SQL).

One row per (scope, name): scope ``worker`` (name = the worker), ``address`` or ``pool`` (name
""); the all-time best achieved difficulty and when, and the best of the current block round
and when. ``apply_best`` runs inside the store's apply transaction with the same journal
records, so the table is exactly as durable as the shares (committed with their checkpoint)
and a replay is harmless: every update is a maximum, and a round ends at the time of a block's
share (rows whose round best is not later than that are reset), whichever batch it arrives in.
The meta key ``best_round_start`` holds the time the current round began.

Records written before the journal carried ``share_difficulty`` read as 0 and are skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pool.best_share import ADDRESS, POOL, WORKER, finite
from pool.ledger.aggregates import ShareRecord

if TYPE_CHECKING:
    from pool.ledger.store import Store

MIGRATION = """
    CREATE TABLE best_shares (
        scope TEXT NOT NULL,
        name TEXT NOT NULL,
        best REAL NOT NULL DEFAULT 0,
        best_at REAL,
        round_best REAL NOT NULL DEFAULT 0,
        round_best_at REAL,
        PRIMARY KEY (scope, name)
    )
"""
ROUND_KEY = "best_round_start"

_UPSERT = """
    INSERT INTO best_shares (scope, name, best, best_at, round_best, round_best_at)
    VALUES (?, ?, ?, ?, ?, ?)
    ON CONFLICT (scope, name) DO UPDATE SET
        best = CASE WHEN excluded.best > best_shares.best
                    THEN excluded.best ELSE best_shares.best END,
        best_at = CASE WHEN excluded.best > best_shares.best
                       THEN excluded.best_at ELSE best_shares.best_at END,
        round_best = CASE WHEN excluded.round_best > best_shares.round_best
                          THEN excluded.round_best ELSE best_shares.round_best END,
        round_best_at = CASE WHEN excluded.round_best > best_shares.round_best
                             THEN excluded.round_best_at ELSE best_shares.round_best_at END
"""
_RESET_ROUND = """
    UPDATE best_shares SET round_best = 0, round_best_at = NULL
    WHERE round_best_at IS NOT NULL AND round_best_at <= ?
"""

BestRow = tuple[str, str, float, float | None, float, float | None]


def round_start(store: Store) -> float:
    raw = store.get_meta(ROUND_KEY)
    return float(raw) if raw else 0.0


def apply_best(store: Store, records: Sequence[ShareRecord]) -> None:
    """Fold the batch's achieved difficulties into ``best_shares`` (in the open transaction)."""
    ended = max((r.time for r in records if r.block_hash is not None), default=None)
    acc: dict[tuple[str, str], list[float]] = {}  # [best, at, round_best, round_at]
    for rec in records:
        difficulty = finite(rec.share_difficulty)
        if difficulty <= 0:
            continue
        in_round = ended is None or rec.time > ended
        for key in ((WORKER, rec.worker), (ADDRESS, rec.address), (POOL, "")):
            row = acc.get(key)
            if row is None:
                row = acc[key] = [0.0, 0.0, 0.0, 0.0]
            if difficulty > row[0]:
                row[0], row[1] = difficulty, rec.time
            if in_round and difficulty > row[2]:
                row[2], row[3] = difficulty, rec.time
    db = store.conn
    if ended is not None:
        db.execute(_RESET_ROUND, (ended,))
        if ended > round_start(store):
            store._set_meta(ROUND_KEY, repr(ended))
    if acc:
        db.executemany(
            _UPSERT,
            [
                (scope, name, b, at, rb, rat if rb > 0 else None)
                for (scope, name), (b, at, rb, rat) in acc.items()
            ],
        )


def load_best(store: Store) -> tuple[list[BestRow], float]:
    """Every row and the current round's start (read once, at start)."""
    rows: list[BestRow] = [
        (
            str(r[0]),
            str(r[1]),
            float(r[2]),
            None if r[3] is None else float(r[3]),
            float(r[4]),
            None if r[5] is None else float(r[5]),
        )
        for r in store.conn.execute(
            "SELECT scope, name, best, best_at, round_best, round_best_at FROM best_shares"
        )
    ]
    return rows, round_start(store)
