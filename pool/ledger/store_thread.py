"""The ledger store on a thread of its own: no SQLite work on the event loop.

One thread (a single-worker executor) owns the store's SQLite connection; every call runs
there, one at a time, in the order it was made. The loop never waits for SQLite except where
it awaits a result (a payout round, a block check, an API read), and then it is free to
serve miners meanwhile.

Shares: the journal hands every written batch to ``apply_nowait`` (on the loop, before any
append of the batch returns). That only queues the batch; the thread applies everything
queued in one ``Store.apply_batch`` (batches that arrive while the thread is busy are applied
together). The miner's answer waits for the journal, never for the store. ``commit`` (a timer
calls it) makes the applied shares durable with their journal checkpoint, atomically.

Because calls run in order, any call made after ``apply_nowait(batch)`` sees that batch
applied: a block outcome recorded after its share was journaled finds the share's block row.

Storage faults (ENOSPC, EROFS, EIO, 'database is locked' held by another process, ...): any
failed write rolls the store back to its last commit and DEGRADES it (``broken`` says why):
shares the journal hands over meanwhile are dropped from the queue (the journal keeps them).
``resync`` (the ledger retries it with backoff) rolls back, re-applies the journal from the
store's committed checkpoint, commits and takes shares again: the store recovers by itself,
with no restart and nothing credited twice (a batch is applied only past ``position``, the
journal point the store already holds).

What the event loop reads (totals, balances, blocks, per-minute work) is ``aggregates``, kept
in memory and updated on the loop from what each call returns; see ``pool.ledger.aggregates``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import structlog

from pool.ledger.aggregates import (
    ORPHANED,
    PENDING,
    REJECTED,
    Aggregates,
    Balance,
    BatchDelta,
    Checkpoint,
    ShareRecord,
)
from pool.ledger.journal import JournalPosition
from pool.ledger.store import Store, StoreError, StoreFault

if TYPE_CHECKING:
    from pool.ledger.pg import PgTarget

log = structlog.get_logger("pool.ledger")

P = ParamSpec("P")
T = TypeVar("T")

JournalBatch = Sequence[tuple[JournalPosition, dict[str, Any]]]
# the journal's records after a checkpoint (None: from the start), in order
JournalSource = Callable[[Checkpoint | None], Iterator[tuple[JournalPosition, dict[str, Any]]]]
REPLAY_CHUNK = 4096  # journal records applied per store call while replaying
BACKLOG_WARNING_RECORDS = 100_000  # shares journaled but not yet in the store: say so


@dataclass(frozen=True)
class _Drained:
    records: int  # taken from the queue (applied, or skipped when broken)
    delta: BatchDelta | None = None
    error: BaseException | None = None
    reload: Aggregates | None = None  # the store's totals after a rollback


@dataclass(frozen=True)
class BlockOutcome:
    """What ``block_outcome`` did: ``recorded`` (the block was not in the store),
    ``rejected`` (a tracked block became rejected) or ``unchanged``."""

    action: str
    row: dict[str, Any] | None


class StoreThread:
    def __init__(
        self,
        path: Path,
        convert: Callable[[dict[str, Any]], ShareRecord],
        journal_id: str = "",
        pg: PgTarget | None = None,
        *,
        pplns_max_rows: int = 2_000_000,
        busy_timeout_seconds: float = 5.0,
    ) -> None:
        """``convert``: a journal record -> the store's ShareRecord (runs on the thread);
        ``journal_id``: whose checkpoint the store keeps (``Store``); ``pg``: PostgreSQL
        instead of the SQLite file at ``path`` (each applied batch is then committed at once,
        with its checkpoint: writers sharing the database hold row locks for one batch only);
        ``pplns_max_rows``: the PPLNS share log's bound (``ledger.pplns_max_log_shares``)."""
        self.path = path
        self._store = Store(
            path,
            journal_id,
            pg,
            pplns_max_rows=pplns_max_rows,
            busy_timeout_seconds=busy_timeout_seconds,
        )
        self._convert = convert
        self.aggregates = Aggregates()
        self.broken: str | None = None  # why the store is degraded (None while it works)
        self.failures = 0  # times it became degraded
        self.recoveries = 0  # times it recovered by itself
        self.dropped = 0  # records handed over while degraded (re-read from the journal)
        self.degraded_since: float | None = None
        # the journal point the store holds (applied or committed); on the thread
        self.position: Checkpoint | None = None
        self.schema_version = 0
        self.backlog = 0  # journaled records handed over, not yet taken by the thread
        self.applied = 0  # records applied since the start
        self._queue: collections.deque[JournalBatch] = collections.deque()
        self._drain_scheduled = False
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._warned_backlog = False
        self.processes: list[dict[str, Any]] = []  # pool_processes rows (``refresh_shared``)
        self.refreshes = 0  # pool-wide reloads of ``aggregates``

    # -- lifecycle ------------------------------------------------------------------------------
    async def open(self) -> None:
        """Start the thread and open (and migrate) the database on it."""
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-store")
        self.schema_version = await self.run(_open)

    @property
    def where(self) -> str:
        """The database, for logs (never a password)."""
        return self._store.where

    async def load(self, now: float) -> None:
        """Read the in-memory totals from the store (after the replay, before any share)."""
        self.aggregates = await self.run(Store.load_aggregates, now)

    async def close(self) -> None:
        """Apply what is queued, commit (unless broken), close the database, end the thread."""
        if self._executor is None or self._closed:
            return
        try:
            await self.run(self._close_store)
        finally:
            self._closed = True
            self._executor.shutdown(wait=False)

    def _close_store(self, store: Store) -> None:
        if self.broken is not None and store.db is not None and store.db.in_transaction:
            store.rollback()
        try:
            store.close()
        except Exception as exc:  # storage still failing: the journal has every share
            log.error("ledger_store_close_failed", error=repr(exc))
            if store.db is not None:
                with contextlib.suppress(Exception):
                    store.db.close()
                store.db = None

    # -- calls ----------------------------------------------------------------------------------
    def _submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        if self._executor is None or self._loop is None or self._closed:
            raise StoreError("the ledger store is not open")
        future = self._loop.run_in_executor(self._executor, fn)
        future.add_done_callback(_retrieve)
        return future

    async def run(
        self, fn: Callable[Concatenate[Store, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``fn(store, *args, **kwargs)`` on the store's thread, after every earlier call.
        For reads, and writes that change nothing the aggregates hold (the methods below keep
        them right). Cancelling the caller does not cancel the call."""
        return await asyncio.shield(
            self._submit(functools.partial(fn, self._store, *args, **kwargs))
        )

    async def _write(self, fn: Callable[[Store], T], after: Callable[[T], None]) -> T:
        """Like ``run``; ``after(result)`` then updates the aggregates on the loop, in call
        order, also when the caller was cancelled meanwhile. A storage error degrades the
        store (its uncommitted shares are rolled back; ``resync`` brings them back)."""
        future = self._submit(functools.partial(self._guarded, fn))

        def done(f: asyncio.Future[T]) -> None:
            if not f.cancelled() and f.exception() is None:
                after(f.result())

        future.add_done_callback(done)
        return await asyncio.shield(future)

    def _guarded(self, fn: Callable[[Store], T]) -> T:
        try:
            return fn(self._store)
        except (sqlite3.Error, OSError, StoreFault) as exc:
            self._degrade(self._store, exc)
            log.error("ledger_store_degraded", error=repr(exc), during="write")
            raise

    # -- shares ---------------------------------------------------------------------------------
    def apply_nowait(self, batch: JournalBatch) -> None:
        """The journal's ``on_written`` hook: queue a written batch for the thread (never
        waits, never raises). Records the store will not see in this run (it is closed) stay
        in the journal for the next start's replay."""
        if not batch or self._executor is None or self._loop is None or self._closed:
            return
        self._queue.append(batch)
        self.backlog += len(batch)
        if self.backlog >= BACKLOG_WARNING_RECORDS and not self._warned_backlog:
            self._warned_backlog = True
            log.warning(
                "ledger_store_behind",
                backlog_records=self.backlog,
                note="shares are journaled (acknowledged) faster than the store applies them",
            )
        if not self._drain_scheduled:
            self._drain_scheduled = True
            future = self._loop.run_in_executor(self._executor, self._drain)
            future.add_done_callback(self._drained)

    def _drain(self) -> _Drained:
        """On the thread: apply every queued batch in one transaction step."""
        self._drain_scheduled = False  # a batch queued from now on schedules another drain
        batches: list[JournalBatch] = []
        while self._queue:
            batches.append(self._queue.popleft())
        count = sum(len(b) for b in batches)
        if not batches:
            return _Drained(count)
        if self.broken is not None:  # the journal has them: ``resync`` reads them back
            self.dropped += count
            return _Drained(count)
        store = self._store
        try:
            records = [self._convert(record) for record in self._new_records(batches)]
            if not records:
                return _Drained(count)
            last = batches[-1][-1][0]
            delta = store.apply_batch(records, Checkpoint(last.segment, last.offset))
            if store.pg is not None:
                store.commit()
        except Exception as exc:  # the journal has the shares: resync re-applies them
            return _Drained(count, error=exc, reload=self._degrade(store, exc))
        self.position = Checkpoint(last.segment, last.offset)
        return _Drained(count, delta=delta)

    def _new_records(self, batches: list[JournalBatch]) -> Iterable[dict[str, Any]]:
        """The records past ``position`` (a resync may already have read some of them)."""
        held = self.position
        if held is None:
            return [record for batch in batches for _, record in batch]
        mark = (held.segment, held.offset)
        return [
            record for batch in batches for pos, record in batch if (pos.segment, pos.offset) > mark
        ]

    def _degrade(self, store: Store, exc: BaseException) -> Aggregates | None:
        """On the thread: a write failed. Undo everything not committed (no later commit may
        make a half-applied batch durable) and stop applying until ``resync`` succeeds.
        Returns the store's committed totals (None when they cannot be read)."""
        if self.broken is None:
            self.failures += 1
            self.degraded_since = time.time()
        self.broken = repr(exc)
        self.position = None
        with contextlib.suppress(Exception):
            store.rollback()
        reload = None
        with contextlib.suppress(Exception):
            reload = store.load_aggregates(time.time())
        return reload

    def _drained(self, future: asyncio.Future[_Drained]) -> None:
        """On the loop, in call order: merge what the thread applied."""
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:  # _drain catches everything: a bug
            log.error("ledger_apply_crashed", error=repr(error))
            return
        result = future.result()
        self.backlog -= result.records
        if self.backlog < BACKLOG_WARNING_RECORDS // 2:
            self._warned_backlog = False
        if result.delta is not None:
            self.aggregates.merge(result.delta)
            self.applied += result.records
        if result.error is not None:
            log.error(
                "ledger_store_degraded",
                error=repr(result.error),
                note="shares stay in the journal; the store re-applies them when it recovers",
            )
            if result.reload is not None:
                self.aggregates = result.reload

    async def commit(self) -> None:
        """Make every applied share durable with its journal checkpoint (not when degraded).
        A failure degrades the store (logged, never raised: the commit timer lives on)."""
        reload = await self.run(self._commit)
        if reload is not None:
            self.aggregates = reload

    def _commit(self, store: Store) -> Aggregates | None:
        if self.broken is not None:
            return None
        try:
            store.commit()
        except Exception as exc:
            reload = self._degrade(store, exc)
            log.error(
                "ledger_store_degraded",
                error=repr(exc),
                during="commit",
                note="shares stay in the journal; the store re-applies them when it recovers",
            )
            return reload if reload is not None else self.aggregates
        return None

    async def resync(self, source: JournalSource) -> int | None:
        """Recover a degraded store: roll back, re-apply the journal from the committed
        checkpoint, commit and take shares again. Returns the records re-applied (None when
        the store was not degraded); raises (and stays degraded) while storage still fails."""
        result = await self.run(functools.partial(StoreThread._resync, self, source))
        if result is None:
            return None
        count, aggregates, down = result
        self.aggregates = aggregates
        log.warning(
            "ledger_store_recovered",
            reapplied_records=count,
            down_seconds=round(down, 3),
            recoveries=self.recoveries,
        )
        return count

    def _resync(self, source: JournalSource, store: Store) -> tuple[int, Aggregates, float] | None:
        if self.broken is None:
            return None
        try:
            store.rollback()
            cp = store.checkpoint()
            count, last = apply_journal(store, source, cp, self._convert)
            store.commit()
            aggregates = store.load_aggregates(time.time())
        except Exception as exc:
            with contextlib.suppress(Exception):
                store.rollback()
            self.broken = repr(exc)
            raise
        self.position = last
        self.recoveries += 1  # before ``broken`` clears: whoever sees it clear sees this too
        self.broken = None
        down = time.time() - (self.degraded_since or time.time())
        self.degraded_since = None
        return count, aggregates, down

    # -- several writers: the whole pool's totals -------------------------------------------------
    async def refresh_shared(self, now: float) -> bool:
        """Reload ``aggregates`` and ``processes`` from the store (on its thread): with several
        writers, what the others applied too. Not while degraded (False then). The reload
        replaces the totals in call order: a batch applied after it is merged on top."""
        if self.broken is not None:
            return False

        def load(store: Store) -> tuple[Aggregates, list[dict[str, Any]]] | None:
            if self.broken is not None:
                return None
            return store.load_aggregates(now), store.processes()

        def after(result: tuple[Aggregates, list[dict[str, Any]]] | None) -> None:
            if result is not None:
                self.aggregates, self.processes = result
                self.refreshes += 1

        return await self._write(load, after) is not None

    async def shared_write(self, fn: Callable[[Store], T]) -> T | None:
        """``fn(store)``: a write of the whole-pool rows (live workers) on the thread; not
        while degraded (None then); a storage error degrades the store like any write."""
        if self.broken is not None:
            return None
        return await self._write(fn, lambda _: None)

    async def heartbeat(self, row: dict[str, Any]) -> None:
        """Write this process's ``pool_processes`` row (not while degraded)."""
        if self.broken is None:
            await self._write(lambda store: store.heartbeat(row), lambda _: None)

    # -- blocks ---------------------------------------------------------------------------------
    def _set_block(self, row: dict[str, Any] | None) -> None:
        if row is not None:
            self.aggregates.set_block(row)

    async def record_block(self, rec: ShareRecord, status: str = PENDING) -> bool:
        """Record a block whose share is not in the store; False when it was there already.
        Refused (StoreError) when the store is broken."""
        row = await self._write(
            functools.partial(self._record_block, rec, status), after=self._set_block
        )
        return row is not None

    def _record_block(self, rec: ShareRecord, status: str, store: Store) -> dict[str, Any] | None:
        if self.broken is not None:
            raise StoreError(f"the ledger store failed earlier: {self.broken}")
        return store.record_block(rec, status)

    async def block_outcome(self, rec: ShareRecord, *, rejected: bool, now: float) -> BlockOutcome:
        """A submitted block's outcome: a block bitcoind refused becomes ``rejected`` (unless
        the chain already holds it); any other outcome leaves it to the chain checks. A block
        not in the store (its share was not journaled) is recorded now. Idempotent."""
        outcome = await self._write(
            functools.partial(self._block_outcome, rec, rejected, now),
            after=lambda o: self._set_block(o.row),
        )
        return outcome

    def _block_outcome(
        self, rec: ShareRecord, rejected: bool, now: float, store: Store
    ) -> BlockOutcome:
        assert rec.block_hash is not None
        row = store.block(rec.block_hash)
        if row is None:
            if self.broken is not None:
                raise StoreError(f"the ledger store failed earlier: {self.broken}")
            return BlockOutcome(
                "recorded", store.record_block(rec, REJECTED if rejected else PENDING)
            )
        if rejected and row["status"] in (PENDING, ORPHANED) and row["confirmations"] <= 0:
            store.set_block_status(
                rec.block_hash, REJECTED, row["confirmations"], now, expect=row["status"]
            )
            return BlockOutcome("rejected", store.block(rec.block_hash))
        return BlockOutcome("unchanged", None)

    async def set_block_status(
        self,
        block_hash: str,
        status: str,
        confirmations: int,
        now: float,
        *,
        expect: str | None = None,
    ) -> bool:
        """Change a block's status (only if it is still ``expect``, when given); whether it
        changed."""
        row = await self._write(
            functools.partial(
                self._set_block_status, block_hash, status, confirmations, now, expect
            ),
            after=self._set_block,
        )
        return row is not None

    @staticmethod
    def _set_block_status(
        block_hash: str,
        status: str,
        confirmations: int,
        now: float,
        expect: str | None,
        store: Store,
    ) -> dict[str, Any] | None:
        if not store.set_block_status(block_hash, status, confirmations, now, expect=expect):
            return None
        return store.block(block_hash)

    # -- payouts (the balances they move come back for the aggregates) ---------------------------
    def _set_balances(self, result: tuple[Any, list[Balance]]) -> None:
        self.aggregates.set_balances(result[1])

    async def create_payout(
        self, payout_id: str, items: Iterable[tuple[str, int]], now: float
    ) -> int:
        items = list(items)

        def create(store: Store) -> tuple[int, list[Balance]]:
            total = store.create_payout(payout_id, items, now)
            return total, store.balances_of(a for a, _ in items)

        total, _ = await self._write(create, after=self._set_balances)
        return total

    async def remove_payout_item(
        self, payout_id: str, address: str, now: float, reason: str
    ) -> None:
        def remove(store: Store) -> tuple[None, list[Balance]]:
            store.remove_payout_item(payout_id, address, now, reason)
            return None, store.balances_of([address])

        await self._write(remove, after=self._set_balances)

    async def finish_payout(
        self,
        payout_id: str,
        status: str,
        now: float,
        *,
        txid: str | None = None,
        error: str | None = None,
    ) -> None:
        def finish(store: Store) -> tuple[None, list[Balance]]:
            store.finish_payout(payout_id, status, now, txid=txid, error=error)
            return None, store.balances_of(store.payout_addresses(payout_id))

        await self._write(finish, after=self._set_balances)


def apply_journal(
    store: Store,
    source: JournalSource,
    cp: Checkpoint | None,
    convert: Callable[[dict[str, Any]], ShareRecord],
) -> tuple[int, Checkpoint | None]:
    """On the store's thread: apply the journal's records past ``cp`` (not committed).
    Returns how many and the checkpoint just after the last (``cp`` when none)."""
    count = 0
    chunk: list[ShareRecord] = []
    last = cp
    for position, record in source(cp):
        chunk.append(convert(record))
        last = Checkpoint(position.segment, position.offset)
        count += 1
        if len(chunk) >= REPLAY_CHUNK:
            store.apply_batch(chunk, last)
            if store.pg is not None:  # one chunk's row locks at a time (other writers)
                store.commit()
            chunk = []
    if chunk and last is not None:
        store.apply_batch(chunk, last)
    return count, last


def _open(store: Store) -> int:
    store.open()
    return store.schema_version


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark an exception retrieved (a shielded call whose caller was cancelled)."""
    if not future.cancelled():
        future.exception()
