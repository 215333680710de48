"""The ledger store: SQLite in WAL mode (the embedded default).

What it keeps: per-worker share aggregates, per-minute share buckets (hashrate history and
luck), per-address balances, found blocks, payouts, and the checkpoint into the share journal.

Exactly once: share records are applied to the store inside an open transaction, a batch at a
time (``apply_batch``: one upsert per worker, address and minute of the batch, not per share);
``commit`` writes the aggregates together with the journal position just after the last applied
record, in ONE transaction. After a crash the journal is replayed from that position, so a share
is credited once whether the crash came before or after the commit.

Threads: a ``Store`` is used by one thread only (the ledger runs it on a thread of its own,
``pool.ledger.store_thread``); what changed comes back as values (``BatchDelta``, rows) for
the in-memory ``Aggregates`` the event loop reads.

Amounts: ``*_units`` columns are micro-satoshis (see ``pool.ledger.pps``), ``*_sat`` columns
whole satoshis. The schema is versioned with ``PRAGMA user_version`` and migrated forward on
open; a database from a newer version of the pool is refused, never touched.

PostgreSQL (``[ledger] backend = "postgresql"``): the same SQL, rewritten at run time by
``pool.ledger.dialect`` and run through ``pool.ledger.pg.PgConnection`` (the schema version is
a row there, migrations run under an advisory lock). Several writers (processes, instances)
then apply their own journals into one database, each with its own checkpoint.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pool.ledger.aggregates import (
    BLOCK_STATUSES,
    CONFIRMED,
    KEEP_MINUTES,
    ORPHANED,
    PENDING,
    REJECTED,
    Aggregates,
    Balance,
    BatchDelta,
    Checkpoint,
    MinuteTotals,
    ShareRecord,
    WorkerTotals,
)
from pool.ledger.dialect import Connection
from pool.ledger.store_bans import BanRows
from pool.ledger.store_best import apply_best
from pool.ledger.store_chain_sim import ChainSimRows
from pool.ledger.store_payouts import (
    PAYOUT_CONFIRMED,
    PAYOUT_FAILED,
    PAYOUT_PENDING,
    PAYOUT_SENT,
    PayoutRows,
    StoreError,
    StoreFault,
)
from pool.ledger.store_pplns import PplnsLog, credit_block, set_block_scheme
from pool.ledger.store_processes import ProcessRows
from pool.ledger.store_schema import (
    _UPSERT_BALANCE,
    _UPSERT_MINUTE,
    _UPSERT_WORKER,
    BUSY_TIMEOUT_SECONDS,
    MIGRATIONS,
    SCHEMA_VERSION,
    WAL_SWITCH_ATTEMPTS,
)

if TYPE_CHECKING:
    from pool.ledger.pg import PgConnection, PgTarget

__all__ = [
    "BLOCK_STATUSES",
    "CONFIRMED",
    "MIGRATIONS",
    "ORPHANED",
    "PAYOUT_CONFIRMED",
    "PAYOUT_FAILED",
    "PAYOUT_PENDING",
    "PAYOUT_SENT",
    "PENDING",
    "REJECTED",
    "SCHEMA_VERSION",
    "Balance",
    "Checkpoint",
    "ShareRecord",
    "Store",
    "StoreError",
    "StoreFault",
]


class Store(PayoutRows, ProcessRows, BanRows, ChainSimRows):
    def __init__(
        self,
        path: Path,
        journal_id: str = "",
        pg: PgTarget | None = None,
        *,
        pplns_max_rows: int = 2_000_000,
        busy_timeout_seconds: float = BUSY_TIMEOUT_SECONDS,
    ) -> None:
        """``journal_id`` names the journal whose checkpoint this store keeps ("" the pool's
        only journal): several writers (processes, instances) each apply their own journal
        into one store, each with its own checkpoint. ``pg``: the PostgreSQL database to use
        instead of the SQLite file at ``path``."""
        self.path = path
        self.journal_id = journal_id
        self.pg = pg
        self._checkpoint_key = f"checkpoint:{journal_id}" if journal_id else "checkpoint"
        self.db: Connection | None = None
        self._applied_to: Checkpoint | None = None
        self.pplns = PplnsLog(pplns_max_rows)
        self.busy_timeout_seconds = busy_timeout_seconds

    @property
    def where(self) -> str:
        """The database, for logs and errors (never a password)."""
        if self.pg is None:
            return str(self.path)
        from pool.ledger.pg import describe

        return f"PostgreSQL {describe(self.pg.dsn)}"

    @property
    def backend(self) -> str:
        return "sqlite" if self.pg is None else "postgresql"

    def _pg_conn(self) -> PgConnection:
        from pool.ledger.pg import PgConnection

        assert isinstance(self.db, PgConnection)
        return self.db

    # -- lifecycle ------------------------------------------------------------------------------
    def open(self) -> None:
        if self.pg is not None:
            from pool.ledger.pg import PgConnection

            self.db = PgConnection(self.pg)
            try:
                self._pg_conn().migrate(MIGRATIONS, self.where)
            except BaseException:
                self._pg_conn().close()
                self.db = None
                raise
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(WAL_SWITCH_ATTEMPTS):  # processes sharing the file may race
            db = sqlite3.connect(  # one thread only
                self.path, isolation_level=None, timeout=self.busy_timeout_seconds
            )
            try:
                db.row_factory = sqlite3.Row
                mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                break
            except sqlite3.DatabaseError as exc:
                db.close()
                if "locked" in str(exc) and attempt + 1 < WAL_SWITCH_ATTEMPTS:
                    time.sleep(0.05)
                    continue
                raise StoreError(f"{self.path}: not a usable SQLite database: {exc}") from exc
        if str(mode).lower() != "wal":
            raise StoreError(f"{self.path}: cannot switch SQLite to WAL mode (got {mode})")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        self.db = db
        self._migrate()

    def close(self) -> None:
        if self.db is not None:
            if self.db.in_transaction:
                self.commit()
            self.db.close()
            self.db = None

    @property
    def conn(self) -> Connection:
        if self.db is None:
            raise StoreError("the ledger store is not open")
        return self.db

    def _migrate(self) -> None:
        db = self.conn
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {version} was written by a newer version of the "
                f"pool (this one knows up to {SCHEMA_VERSION}); refusing to touch it"
            )
        for number in range(version + 1, SCHEMA_VERSION + 1):
            db.execute("BEGIN IMMEDIATE")
            try:
                if int(db.execute("PRAGMA user_version").fetchone()[0]) >= number:
                    db.execute("COMMIT")  # another process sharing the file migrated it
                    continue
                for statement in MIGRATIONS[number - 1].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    @property
    def schema_version(self) -> int:
        if self.pg is not None:
            return self._pg_conn().schema_version()
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def _begin(self) -> None:
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN IMMEDIATE")

    def _begin_own(self) -> None:
        """A transaction of its own: shares applied so far are committed first (with their
        checkpoint), so a rollback below can never undo them."""
        if self.conn.in_transaction:
            self.commit()
        self.conn.execute("BEGIN IMMEDIATE")

    # -- shares (applied in the open transaction; made durable by commit) -----------------------
    def apply_batch(self, records: Sequence[ShareRecord], position: Checkpoint) -> BatchDelta:
        """Apply journal records (in journal order); ``position`` is the journal point just
        after the last. Returns what they added, for the in-memory aggregates."""
        delta = BatchDelta.of(records)
        self._begin()
        db = self.conn
        # rows in key order: writers sharing one database lock them in the same order
        db.executemany(
            _UPSERT_WORKER,
            sorted(
                (
                    w.name,
                    w.address,
                    w.shares,
                    w.difficulty_sum,
                    w.credit_units,
                    w.fee_units,
                    w.first_share,
                    w.last_share,
                )
                for w in delta.workers.values()
            ),
        )
        db.executemany(_UPSERT_BALANCE, sorted(delta.credits.items()))
        db.executemany(
            _UPSERT_MINUTE,
            sorted(
                (minute, worker, m.shares, m.difficulty_sum, m.expected_blocks, m.credit_units)
                for (minute, worker), m in delta.minutes.items()
            ),
        )
        for rec in records:
            if rec.block_hash is not None:
                row = self._insert_block(rec, PENDING)
                if row is not None:
                    delta.blocks.append(row)
        apply_best(self, records)
        self.pplns.apply(db, records)
        self._applied_to = position
        return delta

    def apply_share(self, rec: ShareRecord, position: Checkpoint) -> BatchDelta:
        """Apply one journal record; ``position`` is the journal point just after it."""
        return self.apply_batch((rec,), position)

    def _insert_block(self, rec: ShareRecord, status: str) -> dict[str, Any] | None:
        """Insert the block of ``rec``; its row, or None when the block is already there."""
        assert rec.block_hash is not None
        assert rec.block_height is not None and rec.block_reward_sat is not None
        row = {
            "hash": rec.block_hash,
            "height": rec.block_height,
            "worker": rec.worker,
            "address": rec.address,
            "reward_sat": rec.block_reward_sat,
            "network_difficulty": rec.network_difficulty or 0.0,
            "found_at": rec.time,
            "status": status,
            "confirmations": 0,
            "updated_at": rec.time,
        }
        cursor = self.conn.execute(
            """
            INSERT OR IGNORE INTO blocks (hash, height, worker, address, reward_sat,
                network_difficulty, found_at, status, confirmations, updated_at)
            VALUES (:hash, :height, :worker, :address, :reward_sat, :network_difficulty,
                    :found_at, :status, :confirmations, :updated_at)
            """,
            row,
        )
        if cursor.rowcount != 1:
            return None
        set_block_scheme(self.conn, row, rec.scheme)
        return row

    def record_block(self, rec: ShareRecord, status: str = PENDING) -> dict[str, Any] | None:
        """Record the block of a share that could not be journaled (or whose record is not in
        the store), in a transaction of its own. The block is on the chain whatever happened
        to the share: its reward belongs in the reserve. The share itself is not credited (its
        miner was told it was not recorded). A block already recorded is left as it is.
        Returns the new row, or None when the block was already there."""
        if rec.block_hash is None:
            raise ValueError("record_block needs a share record that found a block")
        if status not in BLOCK_STATUSES:
            raise ValueError(f"unknown block status {status!r}")
        self._begin_own()
        try:
            row = self._insert_block(rec, status)
            if row is not None and rec.scheme == "pplns":
                self.pplns.snapshot(self.conn, rec, None)
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
        return row

    def rollback(self) -> None:
        """Discard the shares applied since the last commit (they stay in the journal and are
        replayed at the next start). Used when applying failed part-way through a record, so
        no later commit can make a half-applied record durable."""
        if self.db is not None and self.db.in_transaction:
            self.db.execute("ROLLBACK")
        self._applied_to = None

    def commit(self) -> None:
        """Make every share applied so far durable, with the journal checkpoint, atomically."""
        if self.pg is not None and not self.conn.in_transaction:
            return  # PostgreSQL: nothing open (each batch was committed with its checkpoint)
        self._begin()
        if self._applied_to is not None:
            cp = self._applied_to
            self._set_meta(self._checkpoint_key, f"{cp.segment}:{cp.offset}")
        self.conn.execute("COMMIT")

    def _set_meta(self, key: str, value: str) -> None:
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Durably, at once (commits whatever else is applied: call between shares only)."""
        self._begin_own()
        self._set_meta(key, value)
        self.conn.execute("COMMIT")

    def checkpoint(self) -> Checkpoint | None:
        raw = self.get_meta(self._checkpoint_key)
        if raw is None:
            return None
        segment, offset = raw.split(":")
        return Checkpoint(int(segment), int(offset))

    # -- reads ----------------------------------------------------------------------------------
    def workers(self) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT * FROM workers ORDER BY name").fetchall()
        return [dict(r) for r in rows]

    def worker(self, name: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT * FROM workers WHERE name = ?", (name,)).fetchone()
        return None if row is None else dict(row)

    def balances(self) -> list[Balance]:
        rows = self.conn.execute("SELECT * FROM balances ORDER BY address").fetchall()
        return [Balance(r[0], r[1], r[2], r[3]) for r in rows]

    def balance(self, address: str) -> Balance | None:
        r = self.conn.execute("SELECT * FROM balances WHERE address = ?", (address,)).fetchone()
        return None if r is None else Balance(r[0], r[1], r[2], r[3])

    def balances_of(self, addresses: Iterable[str]) -> list[Balance]:
        return [b for a in dict.fromkeys(addresses) if (b := self.balance(a)) is not None]

    def totals(self) -> dict[str, int]:
        """Sums over all workers (Python-side: SQLite's SUM would overflow at 2^63)."""
        shares = credit = fee = 0
        for row in self.conn.execute("SELECT shares, credit_units, fee_units FROM workers"):
            shares += row[0]
            credit += row[1]
            fee += row[2]
        return {"shares": shares, "credit_units": credit, "fee_units": fee}

    def minutes(self, since_minute: int, worker: str | None = None) -> list[dict[str, Any]]:
        if worker is None:
            rows = self.conn.execute(
                "SELECT minute, SUM(shares) AS shares, SUM(difficulty_sum) AS difficulty_sum, "
                "SUM(expected_blocks) AS expected_blocks FROM share_minutes WHERE minute >= ? "
                "GROUP BY minute ORDER BY minute",
                (since_minute,),
            ).fetchall()
        else:
            rows = self.conn.execute(
                "SELECT minute, shares, difficulty_sum, expected_blocks FROM share_minutes "
                "WHERE minute >= ? AND worker = ? ORDER BY minute",
                (since_minute, worker),
            ).fetchall()
        return [dict(r) for r in rows]

    def address_minutes(self, since_minute: int, address: str) -> list[dict[str, Any]]:
        """Per minute, the shares of every worker of ``address`` together."""
        rows = self.conn.execute(
            "SELECT minute, SUM(shares) AS shares, SUM(difficulty_sum) AS difficulty_sum, "
            "SUM(expected_blocks) AS expected_blocks FROM share_minutes "
            "WHERE minute >= ? AND worker IN (SELECT name FROM workers WHERE address = ?) "
            "GROUP BY minute ORDER BY minute",
            (since_minute, address),
        ).fetchall()
        return [dict(r) for r in rows]

    def load_aggregates(self, now: float) -> Aggregates:
        """The in-memory totals of everything committed or applied so far (read at start, and
        again after a rollback)."""
        db = self.conn
        workers = [
            WorkerTotals(
                r["name"],
                r["address"],
                r["shares"],
                r["difficulty_sum"],
                r["credit_units"],
                r["fee_units"],
                r["first_share"],
                r["last_share"],
            )
            for r in db.execute("SELECT * FROM workers")
        ]
        minutes = [
            (int(r[0]), MinuteTotals(int(r[1]), float(r[2]), float(r[3])))
            for r in db.execute(
                "SELECT minute, SUM(shares), SUM(difficulty_sum), SUM(expected_blocks) "
                "FROM share_minutes WHERE minute >= ? GROUP BY minute ORDER BY minute",
                (int(now // 60) - KEEP_MINUTES,),
            )
        ]
        expected_all = float(
            db.execute("SELECT TOTAL(expected_blocks) FROM share_minutes").fetchone()[0]
        )
        blocks = [dict(r) for r in db.execute("SELECT * FROM blocks")]
        return Aggregates.from_rows(workers, self.balances(), blocks, minutes, expected_all)

    def expected_blocks_since(self, since: float) -> float:
        row = self.conn.execute(
            "SELECT TOTAL(expected_blocks) FROM share_minutes WHERE minute >= ?",
            (int(since // 60),),
        ).fetchone()
        return float(row[0])

    # -- blocks ---------------------------------------------------------------------------------
    def blocks(
        self, statuses: Sequence[str] | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        if statuses:
            marks = ",".join("?" * len(statuses))
            rows = self.conn.execute(
                f"SELECT * FROM blocks WHERE status IN ({marks}) ORDER BY height DESC LIMIT ?",
                (*statuses, limit),
            ).fetchall()
        else:
            rows = self.conn.execute(
                "SELECT * FROM blocks ORDER BY height DESC, found_at DESC, hash LIMIT ?",
                (limit,),
            ).fetchall()
        return [dict(r) for r in rows]

    def block(self, block_hash: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT * FROM blocks WHERE hash = ?", (block_hash,)).fetchone()
        return None if row is None else dict(row)

    def blocks_found_since(self, since: float) -> int:
        """Blocks found from ``since`` on; rejected ones (bitcoind refused them) never count."""
        row = self.conn.execute(
            "SELECT COUNT(*) FROM blocks WHERE found_at >= ? AND status != ?", (since, REJECTED)
        ).fetchone()
        return int(row[0])

    def set_block_status(
        self,
        block_hash: str,
        status: str,
        confirmations: int,
        now: float,
        *,
        expect: str | None = None,
    ) -> bool:
        """Change a block's status and confirmations (only while its status is ``expect``,
        when given: a check that read the block earlier never overwrites a newer outcome).
        Returns whether a row changed."""
        if status not in BLOCK_STATUSES:
            raise ValueError(f"unknown block status {status!r}")
        self._begin_own()
        sql = "UPDATE blocks SET status = ?, confirmations = ?, updated_at = ? WHERE hash = ?"
        args: tuple[Any, ...] = (status, confirmations, now, block_hash)
        if expect is not None:
            sql += " AND status = ?"
            args += (expect,)
        try:
            changed = int(self.conn.execute(sql, args).rowcount)
            if changed and status == CONFIRMED:  # a pplns block's split is credited now
                credit_block(self.conn, block_hash, now)
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
        return changed > 0

    def rewards_sat(self) -> dict[str, int]:
        out = dict.fromkeys(BLOCK_STATUSES, 0)
        for row in self.conn.execute("SELECT status, reward_sat FROM blocks"):
            out[row[0]] = out.get(row[0], 0) + int(row[1])
        return out
