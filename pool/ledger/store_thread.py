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

A failed apply rolls the store back to its last commit and marks the store broken
(``broken``): nothing is applied or committed from then on, the journal keeps the shares and
the next start replays them.

What the event loop reads (totals, balances, blocks, per-minute work) is ``aggregates``, kept
in memory and updated on the loop from what each call returns; see ``pool.ledger.aggregates``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

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
from pool.ledger.store import Store, StoreError

log = structlog.get_logger("pool.ledger")

P = ParamSpec("P")
T = TypeVar("T")

JournalBatch = Sequence[tuple[JournalPosition, dict[str, Any]]]
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
    def __init__(self, path: Path, convert: Callable[[dict[str, Any]], ShareRecord]) -> None:
        """``convert``: a journal record -> the store's ShareRecord (runs on the thread)."""
        self.path = path
        self._store = Store(path)
        self._convert = convert
        self.aggregates = Aggregates()
        self.broken: str | None = None  # why the store stopped applying shares
        self.schema_version = 0
        self.backlog = 0  # journaled records handed over, not yet taken by the thread
        self.applied = 0  # records applied since the start
        self._queue: collections.deque[JournalBatch] = collections.deque()
        self._drain_scheduled = False
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._warned_backlog = False

    # -- lifecycle ------------------------------------------------------------------------------
    async def open(self) -> None:
        """Start the thread and open (and migrate) the database on it."""
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-store")
        self.schema_version = await self.run(_open)

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
        store.close()

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
        order, also when the caller was cancelled meanwhile."""
        future = self._submit(functools.partial(fn, self._store))

        def done(f: asyncio.Future[T]) -> None:
            if not f.cancelled() and f.exception() is None:
                after(f.result())

        future.add_done_callback(done)
        return await asyncio.shield(future)

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
        if not batches or self.broken is not None:
            return _Drained(count)
        store = self._store
        try:
            records = [self._convert(record) for batch in batches for _, record in batch]
            last = batches[-1][-1][0]
            delta = store.apply_batch(records, Checkpoint(last.segment, last.offset))
        except Exception as exc:  # the journal has the shares; the next start replays them
            self.broken = repr(exc)
            # Undo the half-applied batch (and the uncommitted ones before it): no later
            # commit (a block status, a payout, close) may make it durable.
            with contextlib.suppress(Exception):
                store.rollback()
            reload = None
            with contextlib.suppress(Exception):
                reload = store.load_aggregates(time.time())
            return _Drained(count, error=exc, reload=reload)
        return _Drained(count, delta=delta)

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
                "ledger_store_failed",
                error=repr(result.error),
                note="shares stay in the journal and are replayed at the next start",
            )
            if result.reload is not None:
                self.aggregates = result.reload

    async def commit(self) -> None:
        """Make every applied share durable with its journal checkpoint (not when broken)."""
        await self.run(self._commit)

    def _commit(self, store: Store) -> None:
        if self.broken is None:
            store.commit()

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


def _open(store: Store) -> int:
    store.open()
    return store.schema_version


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark an exception retrieved (a shielded call whose caller was cancelled)."""
    if not future.cancelled():
        future.exception()
