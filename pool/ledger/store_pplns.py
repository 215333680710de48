"""The store's PPLNS share log and block splits (SQL only; the maths is ``pool.ledger.pplns``).

Tables (migration 3, ``store.MIGRATIONS``):

* ``pplns_shares``: every share accepted on a pplns port, in journal order (``seq``), with
  its payout address and difficulty. Bounded: shares that can no longer fall in any future
  window are pruned (``prune``), and at most ``max_rows`` are kept.
* ``pplns_blocks`` / ``pplns_credits``: a block found on a pplns port snapshots the window
  ending at its share when its record is applied: the per-address credits (rounded down),
  the fee and the rounding remainder. They are credited to ``balances`` only when the block
  is confirmed (``credit_block``, in the transaction that confirms it), once: ``credited``
  marks it. An orphaned or rejected block credits nothing.

Everything runs on the store's connection inside the store's transactions, so the log, the
splits and the shares' aggregates commit together with the journal checkpoint: a replay after
a crash rebuilds exactly what was lost, and nothing is credited twice.

Portable SQL (SQLite and PostgreSQL): ``?`` placeholders, ``ON CONFLICT ... DO NOTHING``.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import structlog

from pool.ledger.aggregates import Balance, ShareRecord
from pool.ledger.dialect import Connection
from pool.ledger.pplns import pplns_credits
from pool.ledger.pps import UNITS_PER_SAT, Scheme

log = structlog.get_logger("pool.ledger")

PPLNS_LOG_LOCK = 0x504C4E53  # PostgreSQL advisory lock key: appends to the PPLNS log
READ_PAGE_ROWS = 4096  # the share log is read newest first in pages of this many rows

MIGRATION = """
    CREATE TABLE pplns_shares (
        seq INTEGER PRIMARY KEY,
        address TEXT NOT NULL,
        worker TEXT NOT NULL,
        difficulty REAL NOT NULL,
        time REAL NOT NULL,
        cum REAL NOT NULL
    );
    CREATE INDEX pplns_shares_cum ON pplns_shares (cum);
    CREATE TABLE pplns_blocks (
        hash TEXT PRIMARY KEY,
        window_units TEXT NOT NULL,
        window_used TEXT NOT NULL,
        shares INTEGER NOT NULL,
        reward_units INTEGER NOT NULL,
        fee_bps INTEGER NOT NULL,
        fee_units INTEGER NOT NULL,
        remainder_units INTEGER NOT NULL,
        credited INTEGER NOT NULL DEFAULT 0,
        credited_at REAL
    );
    CREATE TABLE pplns_credits (
        hash TEXT NOT NULL,
        address TEXT NOT NULL,
        credit_units INTEGER NOT NULL,
        PRIMARY KEY (hash, address)
    );
    CREATE INDEX pplns_credits_address ON pplns_credits (address);
    ALTER TABLE blocks ADD COLUMN scheme TEXT NOT NULL DEFAULT ''
"""

# How much more than the current window the log keeps when pruning: a later block's window
# is factor x ITS network difficulty, so the log keeps room for the difficulty to rise up to
# this factor (Bitcoin's retarget clamp) before that block.
PRUNE_MARGIN = 4
PRUNE_EVERY = 1024  # shares logged between two pruning passes (each one indexed DELETE)


class PplnsLog:
    """The PPLNS side of one store (one connection, one thread)."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self._since_prune = 0

    @staticmethod
    def _last(db: Connection) -> tuple[int, float]:
        """The newest share's sequence number and running total (0, 0.0 for an empty log).
        Read in the writing transaction, once per batch: several stores (one per journal, in
        worker processes) may append to one log, their write transactions one at a time.
        ``cum`` (the log's running difficulty total, a float) only serves pruning; splits
        sum the exact difficulties."""
        if getattr(db, "backend", "sqlite") == "postgresql":
            # SQLite's BEGIN IMMEDIATE makes writers take turns; PostgreSQL's row locks do
            # not cover "the newest row": writers (instances) take turns here until commit
            db.execute("SELECT pg_advisory_xact_lock(?)", (PPLNS_LOG_LOCK,))
        row = db.execute("SELECT seq, cum FROM pplns_shares ORDER BY seq DESC LIMIT 1").fetchone()
        return (int(row[0]), float(row[1])) if row is not None else (0, 0.0)

    def apply(self, db: Connection, records: Sequence[ShareRecord]) -> None:
        """Log the batch's pplns shares in order; snapshot the split of each pplns block
        (its window ends at its own share). Call after the blocks were inserted."""
        pending: list[tuple[int, str, str, float, float, float]] = []
        last: tuple[int, float] | None = None
        for rec in records:
            if rec.scheme != Scheme.PPLNS:
                continue
            if last is None:
                last = self._last(db)
            seq, cum = last[0] + 1, last[1] + rec.difficulty
            last = (seq, cum)
            pending.append((seq, rec.address, rec.worker, rec.difficulty, rec.time, cum))
            if rec.block_hash is not None:
                self._flush(db, pending)
                pending = []
                self.snapshot(db, rec, seq)
        self._flush(db, pending)
        if self._since_prune >= PRUNE_EVERY:
            self.prune(db, records)

    def _flush(self, db: Connection, rows: list[tuple[int, str, str, float, float, float]]) -> None:
        if rows:
            db.executemany(
                "INSERT INTO pplns_shares (seq, address, worker, difficulty, time, cum) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            self._since_prune += len(rows)

    def snapshot(self, db: Connection, rec: ShareRecord, last_seq: int | None) -> None:
        """The split of ``rec``'s block over the window ending at share ``last_seq`` (None:
        the newest logged share, for a block whose share was never journaled). A block
        already split is left as it is."""
        assert rec.block_hash is not None and rec.block_reward_sat is not None
        window = rec.pplns_window
        if window is None or window <= 0:
            raise ValueError(f"pplns block {rec.block_hash} carries no window")
        if db.execute("SELECT 1 FROM pplns_blocks WHERE hash = ?", (rec.block_hash,)).fetchone():
            return
        shares: list[tuple[str, float]] = []
        # read newest first only as far as the window reaches, a page at a time (both
        # backends; PostgreSQL's driver would fetch a whole unbounded result): a float sum with
        # a margin (reading a few shares too many changes nothing: the split stops exactly)
        enough = float(window) * (1 + 1e-6)
        gathered = 0.0
        below = last_seq + 1 if last_seq is not None else None
        while gathered < enough:
            if below is None:
                page = db.execute(
                    "SELECT seq, address, difficulty FROM pplns_shares ORDER BY seq DESC LIMIT ?",
                    (READ_PAGE_ROWS,),
                ).fetchall()
            else:
                page = db.execute(
                    "SELECT seq, address, difficulty FROM pplns_shares WHERE seq < ? "
                    "ORDER BY seq DESC LIMIT ?",
                    (below, READ_PAGE_ROWS),
                ).fetchall()
            for seq, address, difficulty in page:
                shares.append((str(address), float(difficulty)))
                gathered += float(difficulty)
                below = int(seq)
                if gathered >= enough:
                    break
            if len(page) < READ_PAGE_ROWS:
                break
        shares.reverse()
        reward = rec.block_reward_sat * UNITS_PER_SAT
        split = pplns_credits(shares, window, reward, rec.fee_bps)
        if split.window < window:  # the whole log was paid: say why it was short
            capped = len(shares) >= self.max_rows
            (log.warning if capped else log.info)(
                "pplns_window_short",
                hash=rec.block_hash,
                window_units=float(window),
                log_units=float(split.window),
                shares=split.shares,
                note=(
                    "the share log is at ledger.pplns_max_log_shares: raise it or the share "
                    "difficulty"
                    if capped
                    else "fewer pplns shares than the window so far: they share the reward"
                ),
            )
        db.execute(
            "INSERT INTO pplns_blocks (hash, window_units, window_used, shares, reward_units, "
            "fee_bps, fee_units, remainder_units) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (hash) DO NOTHING",
            (
                rec.block_hash,
                str(Fraction(window)),
                str(split.window),
                split.shares,
                reward,
                rec.fee_bps,
                split.fee,
                split.remainder,
            ),
        )
        db.executemany(
            "INSERT INTO pplns_credits (hash, address, credit_units) VALUES (?, ?, ?) "
            "ON CONFLICT (hash, address) DO NOTHING",
            [(rec.block_hash, a, units) for a, units in sorted(split.credits.items())],
        )

    def prune(self, db: Connection, records: Sequence[ShareRecord]) -> int:
        """Drop the shares no future window can reach (kept: the newest shares weighing
        PRUNE_MARGIN x the newest window) and any beyond ``max_rows``. Returns the count."""
        self._since_prune = 0
        keep_units = max(
            (
                Fraction(r.pplns_window) * PRUNE_MARGIN
                for r in records
                if r.pplns_window is not None and r.scheme == Scheme.PPLNS
            ),
            default=None,
        )
        removed = 0
        newest, newest_cum = self._last(db)
        if keep_units is not None:
            # share i is out of reach once the shares after it (newest_cum - cum_i) weigh
            # keep_units or more
            removed += db.execute(
                "DELETE FROM pplns_shares WHERE cum <= ?", (newest_cum - float(keep_units),)
            ).rowcount
        removed += db.execute(
            "DELETE FROM pplns_shares WHERE seq <= ?", (newest - self.max_rows,)
        ).rowcount
        return int(removed)


def set_block_scheme(db: Connection, row: dict[str, Any], scheme: str) -> None:
    """Mark a newly inserted block row with the scheme of the port that found it ("": the
    ledger's, as in rows from before schemes per port)."""
    if scheme:
        db.execute("UPDATE blocks SET scheme = ? WHERE hash = ?", (scheme, row["hash"]))
    row["scheme"] = scheme


def credit_block(db: Connection, block_hash: str, now: float) -> list[str]:
    """Credit a confirmed pplns block's split to the balances, once (inside the caller's
    transaction, the one that confirms the block). Returns the credited addresses."""
    changed = db.execute(
        "UPDATE pplns_blocks SET credited = 1, credited_at = ? WHERE hash = ? AND credited = 0",
        (now, block_hash),
    ).rowcount
    if not changed:
        return []
    rows = db.execute(
        "SELECT address, credit_units FROM pplns_credits WHERE hash = ? ORDER BY address",
        (block_hash,),
    ).fetchall()
    db.executemany(
        "INSERT INTO balances (address, credited_units) VALUES (?, ?) "
        "ON CONFLICT (address) DO UPDATE SET "
        "credited_units = balances.credited_units + excluded.credited_units",
        [(str(r[0]), int(r[1])) for r in rows if int(r[1]) > 0],
    )
    return [str(r[0]) for r in rows]


def block_split(db: Connection, block_hash: str) -> dict[str, Any] | None:
    """A pplns block's split: its summary and per-address credits (None: not a pplns block)."""
    names = (
        "hash",
        "window_units",
        "window_used",
        "shares",
        "reward_units",
        "fee_bps",
        "fee_units",
        "remainder_units",
        "credited",
        "credited_at",
    )
    row = db.execute(
        f"SELECT {', '.join(names)} FROM pplns_blocks WHERE hash = ?", (block_hash,)
    ).fetchone()
    if row is None:
        return None
    out: dict[str, Any] = dict(zip(names, tuple(row), strict=True))
    out["credits"] = {
        str(a): int(u)
        for a, u in db.execute(
            "SELECT address, credit_units FROM pplns_credits WHERE hash = ? ORDER BY address",
            (block_hash,),
        )
    }
    return out


def balances_of(db: Connection, addresses: Sequence[str]) -> list[Balance]:
    out = []
    for address in dict.fromkeys(addresses):
        r = db.execute(
            "SELECT address, credited_units, paid_units, pending_units FROM balances "
            "WHERE address = ?",
            (address,),
        ).fetchone()
        if r is not None:
            out.append(Balance(str(r[0]), int(r[1]), int(r[2]), int(r[3])))
    return out


def log_size(db: Connection) -> int:
    return int(db.execute("SELECT COUNT(*) FROM pplns_shares").fetchone()[0])
