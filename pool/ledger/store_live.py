"""The store's ``live_workers`` rows: every process of every instance writing one store
publishes the workers it serves (connections, difficulty, hashrate, counters since it started,
last share), so the process serving the API shows a miner connected to any of them.

Written only while the store is shared (several processes or a PostgreSQL ledger), on the
store's thread, every ``ledger.live_workers_seconds``: a :class:`LivePublisher` writes only
the rows that changed since its last publish and deletes the workers gone from its process,
in one transaction. The first publish of a run (and one after a failure, or after another
process pruned its rows) deletes every row of its (instance, process) and writes them all.

Readers (:class:`LiveReader`) only see rows of processes whose heartbeat is fresh
(``pool_processes``) and that were written by the process's current run (``updated_at`` not
before its ``started_at``); a process whose heartbeat has been stale for ``prune_seconds`` has
its rows deleted by the publishers of the others. A reader re-reads a process's rows only
when their count or newest ``updated_at`` changed (every publish moves ``updated_at``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pool.ledger.store import Store

# after the migrations of ``pool.ledger.store_schema.MIGRATIONS`` (portable SQL)
LIVE_MIGRATION = """
    CREATE TABLE live_workers (
        instance_id INTEGER NOT NULL,
        process TEXT NOT NULL,
        worker TEXT NOT NULL,
        address TEXT NOT NULL,
        connections INTEGER NOT NULL DEFAULT 0,
        difficulty REAL NOT NULL DEFAULT 0,
        hashrate TEXT NOT NULL DEFAULT '[]',
        accepted INTEGER NOT NULL DEFAULT 0,
        accepted_work REAL NOT NULL DEFAULT 0,
        rejected TEXT NOT NULL DEFAULT '[]',
        blocks INTEGER NOT NULL DEFAULT 0,
        last_share REAL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (instance_id, process, worker)
    )
"""

READ_PAGE = 2000  # live rows read per statement
WRITE_STEP = 1000  # live rows written per executemany
HASHRATE_TOLERANCE = 0.02  # a worker whose rates moved less is not written again

_UPSERT = """
    INSERT INTO live_workers (instance_id, process, worker, address, connections, difficulty,
        hashrate, accepted, accepted_work, rejected, blocks, last_share, updated_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (instance_id, process, worker) DO UPDATE SET
        address = excluded.address, connections = excluded.connections,
        difficulty = excluded.difficulty, hashrate = excluded.hashrate,
        accepted = excluded.accepted, accepted_work = excluded.accepted_work,
        rejected = excluded.rejected, blocks = excluded.blocks,
        last_share = excluded.last_share, updated_at = excluded.updated_at
"""
_COLUMNS = (
    "worker, address, connections, difficulty, hashrate, accepted, accepted_work, rejected, "
    "blocks, last_share, updated_at"
)
# the live rows of processes up now (fresh heartbeat), written by their current run
_UP_PROCESSES = """
    SELECT l.instance_id, l.process, COUNT(*), MAX(l.updated_at), MAX(p.started_at)
    FROM live_workers l JOIN pool_processes p
        ON p.instance_id = l.instance_id AND p.process = l.process
    WHERE p.heartbeat_at >= ? AND l.updated_at >= p.started_at
    GROUP BY l.instance_id, l.process
"""


@dataclass(frozen=True, slots=True)
class LiveWorker:
    """One worker as one process serves it (or, merged, as the processes together do).
    ``hashrate``: (window seconds, H/s) pairs; ``rejected``: (reason, count) pairs, sorted."""

    name: str
    address: str
    connections: int = 0
    difficulty: float = 0.0
    hashrate: tuple[tuple[int, float], ...] = ()
    accepted: int = 0
    accepted_work: float = 0.0
    rejected: tuple[tuple[str, int], ...] = ()
    blocks: int = 0
    last_share: float | None = None
    updated_at: float = field(default=0.0, compare=False)  # when its process wrote it

    def params(self, instance_id: int, process: str, now: float) -> tuple[Any, ...]:
        return (
            instance_id,
            process,
            self.name,
            self.address,
            self.connections,
            self.difficulty,
            json.dumps(self.hashrate),  # [[window, H/s], ...]
            self.accepted,
            self.accepted_work,
            json.dumps(self.rejected),  # [[reason, count], ...]
            self.blocks,
            self.last_share,
            now,
        )

    @classmethod
    def of_row(cls, row: Any) -> LiveWorker:
        return cls(
            str(row[0]),
            str(row[1]),
            int(row[2]),
            float(row[3]),
            _pairs(row[4]),
            int(row[5]),
            float(row[6]),
            _pairs(row[7]),
            int(row[8]),
            None if row[9] is None else float(row[9]),
            float(row[10]),
        )


def _pairs(raw: str) -> tuple[Any, ...]:
    """A JSON list of pairs (as ``params`` writes them) as a tuple of tuples; () when it is
    not one (the column's default, a damaged row)."""
    if raw == "[]":
        return ()
    try:
        return tuple(tuple(pair) for pair in json.loads(raw) if len(pair) == 2)
    except (ValueError, TypeError):
        return ()


@dataclass(frozen=True)
class Published:
    """What one publish wrote: rows upserted, rows deleted, whether it rewrote them all, and
    how long it took on the store's thread."""

    written: int
    deleted: int
    full: bool
    seconds: float


class LivePublisher:
    """This process's rows (used on the store's thread only)."""

    def __init__(self, instance_id: int, process: str, prune_seconds: float) -> None:
        self.instance_id = instance_id
        self.process = process
        self.prune_seconds = prune_seconds
        self.sent: dict[str, LiveWorker] = {}  # what the table holds for this process
        self.full = True  # the next publish rewrites every row (first, or state unknown)
        self.last_at = 0.0
        self.last_prune = 0.0
        self.pruned = 0  # rows of long-down processes deleted

    def publish(self, store: Store, rows: Iterable[LiveWorker], now: float) -> Published:
        """Write the rows that changed since the last publish, delete the workers gone, in
        one transaction of its own."""
        started = time.perf_counter()
        now = max(now, self.last_at + 1e-6)  # every publish moves updated_at forward
        current = {row.name: row for row in rows}
        db = store.conn
        key = (self.instance_id, self.process)
        full = self.full
        if not full:  # another process pruned our rows (we looked down): rewrite them
            held = db.execute(
                "SELECT COUNT(*) FROM live_workers WHERE instance_id = ? AND process = ?", key
            ).fetchone()[0]
            full = int(held) != len(self.sent)
        sent = {} if full else self.sent
        written = {name: sent[name] for name in current if name in sent}  # the table after
        changed = []
        for name, row in current.items():
            old = sent.get(name)
            if old is None or not _close(old, row):
                changed.append(row)
                written[name] = row
        changed.sort(key=lambda r: r.name)
        gone = sorted(name for name in sent if name not in current)
        self.full = True  # until this commit is known to have succeeded
        store._begin_own()
        try:
            if full:
                db.execute("DELETE FROM live_workers WHERE instance_id = ? AND process = ?", key)
            # in steps of WRITE_STEP rows: no single call holds the interpreter for all of them
            for i in range(0, 0 if full else len(gone), WRITE_STEP):
                db.executemany(
                    "DELETE FROM live_workers WHERE instance_id = ? AND process = ? AND worker = ?",
                    [(*key, name) for name in gone[i : i + WRITE_STEP]],
                )
            for i in range(0, len(changed), WRITE_STEP):
                db.executemany(
                    _UPSERT, [row.params(*key, now) for row in changed[i : i + WRITE_STEP]]
                )
            if now - self.last_prune >= self.prune_seconds / 2:
                self.pruned += self._prune(store, now)
                self.last_prune = now
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.sent, self.full, self.last_at = written, False, now
        return Published(len(changed), len(gone), full, time.perf_counter() - started)

    def _prune(self, store: Store, now: float) -> int:
        """Delete the rows of processes whose heartbeat is older than ``prune_seconds`` (or
        that have no heartbeat row)."""
        cur = store.conn.execute(
            "DELETE FROM live_workers WHERE NOT EXISTS (SELECT 1 FROM pool_processes p "
            "WHERE p.instance_id = live_workers.instance_id "
            "AND p.process = live_workers.process AND p.heartbeat_at >= ?)",
            (now - self.prune_seconds,),
        )
        return max(0, int(cur.rowcount or 0))

    def forget(self, store: Store) -> None:
        """Delete this process's rows (a clean stop)."""
        store._begin_own()
        db = store.conn
        try:
            db.execute(
                "DELETE FROM live_workers WHERE instance_id = ? AND process = ?",
                (self.instance_id, self.process),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.sent, self.full = {}, True


def _close(old: LiveWorker, new: LiveWorker) -> bool:
    """Nothing to write: the same row, its hashrates within ``HASHRATE_TOLERANCE`` of the
    ones written (an idle worker's rates decay a little at every publish)."""
    if dataclasses.replace(old, hashrate=new.hashrate) != new:
        return False
    if [w for w, _ in old.hashrate] != [w for w, _ in new.hashrate]:
        return False
    return all(
        abs(a - b) <= HASHRATE_TOLERANCE * max(abs(a), abs(b))
        for (_, a), (_, b) in zip(old.hashrate, new.hashrate, strict=True)
    )


class LiveReader:
    """The live rows of every OTHER process that is up (used on the store's thread only).
    Each process's rows are cached: when its rows' count or newest ``updated_at`` moved, only
    the rows written after the newest one held are read (every publish writes its changed
    rows with one ``updated_at``, later than the previous one's); when rows were deleted as
    well (the count does not add up), all of that process's rows are read again."""

    def __init__(self, instance_id: int, process: str) -> None:
        self.me = (instance_id, process)
        self._cache: dict[tuple[int, str], _Held] = {}
        self.reads = 0  # processes whose rows were read in full
        self.updates = 0  # processes whose newer rows were read
        self._read_once = False

    def read(self, store: Store, now: float, stale_seconds: float) -> list[LiveWorker] | None:
        """Every other up process's rows; None when nothing changed since the last read."""
        db = store.conn
        changed = False
        seen: dict[tuple[int, str], tuple[int, float, float]] = {}
        for r in db.execute(_UP_PROCESSES, (now - stale_seconds,)).fetchall():
            key = (int(r[0]), str(r[1]))
            if key != self.me:
                seen[key] = (int(r[2]), float(r[3]), float(r[4]))
        out: list[LiveWorker] = []
        cache: dict[tuple[int, str], _Held] = {}
        for key, (count, newest, started_at) in seen.items():
            held = self._cache.get(key)
            if held is None or held.started_at != started_at:
                held = _Held(started_at)
            if (held.count, held.newest) != (count, newest):
                changed = True
                if held.rows and held.newest > 0:  # only what was written since
                    self.updates += 1
                    rows = dict(held.rows)
                    rows.update(self._rows(db, key, held.newest, strictly=True))
                    if len(rows) == count:
                        held.rows = rows
                    else:  # rows were deleted too: read them all
                        held.rows = {}
                if not held.rows:
                    self.reads += 1
                    held.rows = dict(self._rows(db, key, started_at, strictly=False))
                held.count, held.newest = count, newest
            cache[key] = held
            out.extend(held.rows.values())
        changed = changed or cache.keys() != self._cache.keys() or not self._read_once
        self._cache, self._read_once = cache, True
        return out if changed else None

    @staticmethod
    def _rows(
        db: Any, key: tuple[int, str], since: float, *, strictly: bool
    ) -> Iterable[tuple[str, LiveWorker]]:
        """In pages of ``READ_PAGE`` rows (by name): no statement holds the thread (and the
        interpreter) for all 20 000 rows of a process at once."""
        sql = (
            f"SELECT {_COLUMNS} FROM live_workers WHERE instance_id = ? AND process = ? "
            f"AND updated_at {'>' if strictly else '>='} ? AND worker > ? "
            "ORDER BY worker LIMIT ?"
        )
        after = ""
        while True:
            page = db.execute(sql, (*key, since, after, READ_PAGE)).fetchall()
            for row in page:
                worker = LiveWorker.of_row(row)
                yield worker.name, worker
            if len(page) < READ_PAGE:
                return
            after = str(page[-1][0])


@dataclass
class _Held:
    """One process's rows as last read, and the count and newest ``updated_at`` they had."""

    started_at: float
    count: int = -1
    newest: float = 0.0
    rows: dict[str, LiveWorker] = field(default_factory=dict)


def merge_rows(rows: Iterable[LiveWorker]) -> dict[str, LiveWorker]:
    """One worker's rows of several processes as one: connections, hashrates and counters
    summed, the latest last share, the difficulty of the most recently written row (of
    those with a connection)."""
    merged: dict[str, LiveWorker] = {}
    for row in rows:
        held = merged.get(row.name)
        merged[row.name] = row if held is None else combine(held, row)
    return merged


def combine(a: LiveWorker, b: LiveWorker) -> LiveWorker:
    rates = dict(a.hashrate)
    for window, rate in b.hashrate:
        rates[window] = rates.get(window, 0.0) + rate
    rejected = dict(a.rejected)
    for reason, n in b.rejected:
        rejected[reason] = rejected.get(reason, 0) + n
    lasts = [t for t in (a.last_share, b.last_share) if t is not None]
    # the difficulty (and address) of a connected row first, then the most recently written
    newer = max((a, b), key=lambda r: (r.connections > 0, r.updated_at))
    return LiveWorker(
        name=a.name,
        address=newer.address,
        connections=a.connections + b.connections,
        difficulty=newer.difficulty or a.difficulty or b.difficulty,
        hashrate=tuple(sorted(rates.items())),
        accepted=a.accepted + b.accepted,
        accepted_work=a.accepted_work + b.accepted_work,
        rejected=tuple(sorted(rejected.items())),
        blocks=a.blocks + b.blocks,
        last_share=max(lasts) if lasts else None,
        updated_at=max(a.updated_at, b.updated_at),
    )


@dataclass(frozen=True)
class LiveSnapshot:
    """The other processes' live workers, merged (what the API reads; replaced whole)."""

    workers: dict[str, LiveWorker] = field(default_factory=dict)
    by_address: dict[str, list[str]] = field(default_factory=dict)  # names, sorted
    version: int = 0  # changes with every new snapshot


EMPTY_SNAPSHOT = LiveSnapshot()


def snapshot_of(rows: Iterable[LiveWorker], version: int) -> LiveSnapshot:
    workers = merge_rows(rows)
    by_address: dict[str, list[str]] = {}
    for name in sorted(workers):
        by_address.setdefault(workers[name].address, []).append(name)
    return LiveSnapshot(workers, by_address, version)
