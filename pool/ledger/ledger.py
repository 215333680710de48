"""The ledger service: accepted shares -> journal -> store; found blocks; the PPS reserve.

Order of events for the accepted shares of one read (``journal_shares``, the server's share
recorder, whose future the miner's answers wait for): each credit is computed (``pps``), the
records are queued for the journal as one batch and the future is done once the journal has
written them (and fsynced them, per ``ledger.journal_fsync``). ``on_shares`` and ``on_share``
are the awaitable forms of the same step.
The journal then hands every written batch, in journal order, to the store's thread
(``StoreThread.apply_nowait``: queued, never awaited), which applies it to the store's open
transaction; a timer commits the store with the journal position of the last applied record.
On start-up the journal past that checkpoint is replayed: nothing acknowledged is lost and
nothing is credited twice. No SQLite work runs on the event loop (``pool.ledger.store_thread``);
what the pool and its API read is the store's totals kept in memory (``aggregates``).

Blocks: a share that is a block candidate is journaled BEFORE the block is submitted, with a
``block`` entry of status ``submitted``; the store tracks it as ``pending``. When the
submission is settled, ``block_submitted`` records the outcome: refused by bitcoind ->
``rejected`` (never in the reserve, never found in the luck, never checked again); anything
else stays pending for ``check_blocks`` to settle from the chain (confirmed or orphaned; a
block bitcoind does not know once the chain is past its height: rejected, never orphaned).

Storage faults are a state, not an end (``degraded``): the journal refuses shares while it
cannot write and retries by itself (``pool.ledger.journal``); the store rolls back and
re-applies the journal once it can write again (``StoreThread.resync``, retried here with
backoff); a found block the store cannot take is kept and retried until it does
(``pool.ledger.recovery``), and at start the chain is scanned for the pool's blocks the store
is missing (``reconcile_chain``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from pool.bitcoin import Network
from pool.config import LedgerConfig
from pool.ledger.aggregates import (
    LUCK_WINDOWS,
    Aggregates,
    Checkpoint,
    Reserve,
)
from pool.ledger.block_checks import check_blocks
from pool.ledger.journal import Journal, JournalError, JournalPosition, segment_files
from pool.ledger.journal_read import Damage, read_records
from pool.ledger.ledger_schemes import SchemeShares
from pool.ledger.pps import Scheme
from pool.ledger.records import (
    RECORD_VERSION,
    SUBMITTED,
    TRACKED_SUBMISSIONS,
    block_record,
    record_for_share,
    share_record_from,
)
from pool.ledger.recovery import UnrecordedBlocks, reconcile_chain
from pool.ledger.retention import remove_expired_segments
from pool.ledger.shared import InstanceInUse, SharedLedger, store_for
from pool.ledger.store import Store, StoreFault
from pool.ledger.store_thread import JournalSource, apply_journal
from pool.node.rpc import BitcoinRpc
from pool.node.submit import BlockSubmission, SubmitStatus
from pool.server.auth import Credentials
from pool.shares import ShareResult
from pool.tasks import Backoff, Supervisor

__all__ = [
    "LUCK_WINDOWS",
    "RECORD_VERSION",
    "SUBMITTED",
    "TRACKED_SUBMISSIONS",
    "Ledger",
    "LedgerError",
    "Reserve",
    "block_record",
    "record_for_share",
    "share_record_from",
]

log = structlog.get_logger("pool.ledger")

JOURNAL_PRUNE_SECONDS = 3600.0  # how often expired journal segments are looked for


class LedgerError(RuntimeError):
    """The share could not be recorded; the miner must not be told it was accepted."""


class Ledger(SchemeShares):
    def __init__(
        self,
        config: LedgerConfig,
        data_dir: Path,
        network: Network,
        tasks: Supervisor | None = None,
        *,
        journal_id: str = "",
        shared: bool = False,
        instance_id: int = 0,
    ) -> None:
        """``journal_id``: "" for the pool's only journal (``data_dir/journal``); a name when
        several writers (worker processes, instances) share one store: each journals into
        ``data_dir/journal-<id>`` and the store keeps one checkpoint per journal. ``shared``:
        other writers apply into the store too (always so with PostgreSQL)."""
        self.config = config
        self.journal_id = journal_id
        self.network = network
        self.scheme = Scheme(config.scheme)
        self._init_schemes()
        self.journal_dir = data_dir / (f"journal-{journal_id}" if journal_id else "journal")
        # The store and its connection live on a thread of their own; the loop reads the
        # in-memory totals (``aggregates``).
        self.store = store_for(config, data_dir, self.record_converter(), journal_id, instance_id)
        self.shared = SharedLedger(self.store, config, instance_id, journal_id)
        self.is_shared = shared or config.backend == "postgresql"
        self.journal = Journal(
            self.journal_dir,
            fsync=config.journal_fsync,
            fsync_interval_ms=config.journal_fsync_interval_ms,
            segment_bytes=config.journal_segment_bytes,
            on_written=self.store.apply_nowait,
            retry_seconds=config.storage_retry_seconds,
            retry_max_seconds=config.storage_retry_max_seconds,
        )
        self.replayed = 0
        self.replay_damage = Damage()  # corrupt records the last start's replay skipped
        self.tasks = tasks if tasks is not None else Supervisor()
        self._own_tasks = tasks is None
        self._background: set[asyncio.Future[None]] = set()  # unjournaled blocks being recorded
        self._store_backoff = self._backoff()
        self._store_retry_at = 0.0  # monotonic
        self.unrecorded = UnrecordedBlocks(self._backoff())

    def _backoff(self) -> Backoff:
        return Backoff(self.config.storage_retry_seconds, self.config.storage_retry_max_seconds)

    def _journal_source(self) -> JournalSource:
        directory = self.journal_dir

        def source(cp: Checkpoint | None) -> Any:
            start = JournalPosition(cp.segment, cp.offset) if cp else None
            return read_records(directory, start)

        return source

    @property
    def degraded(self) -> str | None:
        """Why the ledger cannot record shares now (a storage fault it is retrying), or None."""
        journal = self.journal.degraded
        if journal is not None:
            return (
                f"pool storage unavailable, shares are refused: the journal cannot write: {journal}"
            )
        if self.store.broken is not None:
            return (
                "the ledger store cannot write (shares are still journaled and acknowledged; "
                f"it re-applies them when it recovers): {self.store.broken}"
            )
        return None

    def health(self) -> dict[str, Any]:
        """The ledger's part of /healthz and /metrics (no paths, no addresses)."""
        journal, store = self.journal, self.store
        since = [t for t in (journal.degraded_since, store.degraded_since) if t is not None]
        return {
            "ok": self.degraded is None and not self.unrecorded,
            "degraded": self.degraded,
            "degraded_seconds": round(time.time() - min(since), 3) if since else 0.0,
            "journal_failures": journal.failures,
            "journal_recoveries": journal.recoveries,
            "store_failures": store.failures,
            "store_recoveries": store.recoveries,
            "unrecorded_blocks": len(self.unrecorded),
            "replay_corrupt_records": self.replay_damage.corrupt,
            "payout_runner": self.shared.payout_runner(),
        }

    @property
    def broken(self) -> str | None:
        """Why the store stopped applying shares (None while it works)."""
        return self.store.broken

    @property
    def aggregates(self) -> Aggregates:
        """The store's totals in memory (read on the loop; never touches SQLite)."""
        return self.store.aggregates

    # -- lifecycle ------------------------------------------------------------------------------
    async def open(self) -> None:
        """Open the store (replaying the journal past its checkpoint) and the journal. A
        storage problem is a LedgerError naming the path and the cause."""
        try:
            await self._open()
        except (OSError, sqlite3.Error, JournalError, StoreFault, InstanceInUse) as exc:
            with contextlib.suppress(Exception):
                await self.store.close()
            if isinstance(exc, JournalError | InstanceInUse | StoreFault):
                raise LedgerError(f"cannot open the ledger: {exc}") from exc
            where = getattr(exc, "filename", None) or self.store.path.parent
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise LedgerError(
                f"cannot open the ledger in {where}: {reason} "
                f"({type(exc).__name__}); the pool needs a writable directory there"
            ) from exc

    async def _open(self) -> None:
        await self.store.open()
        if self.is_shared:
            self.shared.check_unique(await self.store.run(Store.processes), time.time())
        cp = await self.store.run(Store.checkpoint)
        segments, replayed = await self.store.run(self._replay, cp)
        if cp is not None and cp.segment not in segments:
            # Retention never deletes the checkpoint's segment: the store is older than the
            # journal (restored from a backup?) or files were removed by hand. Shares between
            # the checkpoint and the oldest segment left cannot be replayed.
            log.error(
                "journal_checkpoint_segment_missing",
                checkpoint=f"{cp.segment}:{cp.offset}",
                segments=segments,
                note="shares journaled after the checkpoint in missing segments are not credited",
            )
        await self.store.load(time.time())
        self.replayed = replayed
        log.info(
            "ledger_opened",
            store=self.store.where,
            backend=self.config.backend,
            schema_version=self.store.schema_version,
            checkpoint=f"{cp.segment}:{cp.offset}" if cp else None,
            replayed_records=replayed,
            scheme=self.scheme.value,
            fee_bps=self.config.fee_bps,
            journal_fsync=self.config.journal_fsync,
        )
        try:
            cp = await self.store.run(Store.checkpoint)
            await asyncio.to_thread(self.prune_journal, time.time(), cp)
        except OSError as exc:  # retention is housekeeping: never stop the ledger
            log.warning("journal_prune_failed", error=repr(exc))
        await self.journal.open()
        self.tasks.spawn("ledger-commit", self._commit_loop)
        if self.is_shared:
            await self.store.heartbeat(self.shared.row(time.time()))
            self.tasks.spawn("ledger-shared", self.shared.run)

    def _replay(self, store: Store, cp: Checkpoint | None) -> tuple[list[int], int]:
        """On the store's thread: apply the journal past the checkpoint and commit. Returns the
        segment numbers found and the records replayed. A record that cannot be applied stops
        the start (the store is rolled back to its checkpoint first)."""
        segments = [n for n, _ in segment_files(self.journal_dir)]
        damage = self.replay_damage = Damage()

        def source(start: Checkpoint | None) -> Any:
            at = JournalPosition(start.segment, start.offset) if start else None
            return read_records(self.journal_dir, at, damage)

        try:
            replayed, last = apply_journal(store, source, cp, self.record_converter())
            store.commit()
        except BaseException as exc:
            self.store.broken = repr(exc)
            with contextlib.suppress(Exception):
                store.rollback()
            raise
        self.store.position = last
        if damage.corrupt:
            log.error(
                "journal_corrupt_records_dropped",
                corrupt_stretches=damage.corrupt,
                corrupt_bytes=damage.corrupt_bytes,
                note="shares in corrupt journal stretches are not credited",
            )
        return segments, replayed

    async def close(self) -> None:
        if self._own_tasks:
            await self.tasks.stop()
        await self.journal.close()  # its last batches go to the store's thread first
        if self._background:  # blocks of failed shares still being recorded
            await asyncio.wait(self._background)
        if self.store.broken is not None:  # one last try: what it holds is in the journal
            with contextlib.suppress(Exception):
                await self.store.resync(self._journal_source())
        if self.unrecorded:
            with contextlib.suppress(Exception):
                await self.unrecorded.retry(self.store, time.time())
        for item in self.unrecorded.waiting.values():
            log.critical(
                "block_not_recorded",
                hash=item.record.block_hash,
                height=item.record.block_height,
                reward_sat=item.record.block_reward_sat,
                note="the store never took it; the next start finds it on the chain",
            )
        await self.store.close()  # applies them, commits (unless broken), closes
        log.info("ledger_closed", applied_records=self.store.applied)

    async def _commit_loop(self) -> None:
        """Commit every ``checkpoint_seconds``; a degraded store and unrecorded blocks are
        retried here (with backoff, checked at least every ``storage_retry_seconds``)."""
        last_prune = time.monotonic()
        last_commit = time.monotonic()
        tick = min(self.config.checkpoint_seconds, self.config.storage_retry_seconds)
        while True:
            await asyncio.sleep(tick)
            await self.recover()
            if time.monotonic() - last_commit < self.config.checkpoint_seconds:
                continue
            last_commit = time.monotonic()
            await self.commit()
            if time.monotonic() - last_prune >= JOURNAL_PRUNE_SECONDS:
                last_prune = time.monotonic()
                try:
                    cp = await self.store.run(Store.checkpoint) if self.broken is None else None
                    await asyncio.to_thread(self.prune_journal, time.time(), cp)
                except Exception as exc:  # retention is housekeeping: never stop the ledger
                    log.warning("journal_prune_failed", error=repr(exc))

    def prune_journal(self, now: float, cp: Checkpoint | None) -> list[int]:
        """Retention: delete journal segments wholly before ``cp`` (the store's committed
        checkpoint, read by the caller on the store's thread) and older than
        ``journal_retention_days`` (0: keep everything). Returns the removed numbers."""
        days = self.config.journal_retention_days
        if days <= 0 or cp is None or self.broken is not None:
            return []
        removed = remove_expired_segments(
            self.journal_dir, before_segment=cp.segment, retention_seconds=days * 86400, now=now
        )
        if removed:
            log.info(
                "journal_segments_removed",
                segments=removed,
                retention_days=days,
                checkpoint=f"{cp.segment}:{cp.offset}",
            )
        return removed

    async def recover(self) -> None:
        """Retry what a storage fault left undone, when its backoff is due: the degraded
        store (re-applied from the journal) and the blocks waiting to be recorded."""
        now = time.monotonic()
        if self.store.broken is not None and now >= self._store_retry_at:
            try:
                await self.store.resync(self._journal_source())
            except Exception as exc:
                delay = self._store_backoff.next_delay()
                self._store_retry_at = now + delay
                log.warning(
                    "ledger_store_still_degraded",
                    error=repr(exc),
                    attempts=self._store_backoff.failures,
                    retry_in_seconds=delay,
                )
            else:
                self._store_backoff.reset()
        if self.store.broken is None and self.unrecorded.due():
            await self.unrecorded.retry(self.store, time.time())

    async def commit(self) -> None:
        """Make every share applied so far durable with its journal checkpoint (on the store's
        thread; nothing when the store is broken)."""
        await self.store.commit()

    # -- shares ---------------------------------------------------------------------------------
    async def on_share(
        self,
        result: ShareResult,
        creds: Credentials | None,
        now: float,
        submission: BlockSubmission | None,
        scheme: str = "",
    ) -> None:
        """Server share listener: journal an accepted share before the miner hears of it.

        A block candidate is journaled before its submission (``submission`` None; the outcome
        comes later through ``block_submitted``)."""
        if not result.accepted or creds is None:
            return
        record = record_for_share(
            result,
            creds,
            now,
            submission,
            network=self.network,
            scheme=self.scheme_of(scheme),
            fee_bps=self.config.fee_bps,
            pplns_window_factor=self.config.pplns_window_factor,
        )
        try:
            await self.journal.append(record)
        except Exception as exc:
            log.error("share_not_journaled", worker=creds.name, error=repr(exc))
            if "block" in record:
                await self._record_unjournaled_block(record)
            raise LedgerError(f"the pool could not record the share: {exc}") from exc

    def journal_shares(
        self, shares: Sequence[tuple[ShareResult, Credentials]], now: float, scheme: str = ""
    ) -> asyncio.Future[Any]:
        """The server's share recorder: queue the accepted shares of one read for the journal,
        in one batch; the future is done once they are durable (or failed: none is). No task
        or coroutine per read. A block candidate whose share fails is still recorded in the
        store (in the background; its outcome comes later through ``block_submitted``).
        ``scheme``: the connection's port scheme ("" = the ledger's)."""
        records = self._share_records(shares, now, scheme)
        try:
            future: asyncio.Future[Any] = self.journal.submit_many(records)
        except Exception as exc:
            future = asyncio.get_running_loop().create_future()
            future.set_exception(LedgerError(f"the pool could not record the shares: {exc!r}"))
        blocks = [record for record in records if "block" in record]
        if blocks:
            future.add_done_callback(lambda f: self._journaled_blocks(f, blocks))
        return future

    def _journaled_blocks(self, future: asyncio.Future[Any], blocks: list[dict[str, Any]]) -> None:
        if not future.cancelled() and future.exception() is None:
            return
        for record in blocks:
            task = asyncio.ensure_future(self._record_unjournaled_block(record))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def on_shares(
        self, shares: Sequence[tuple[ShareResult, Credentials]], now: float, scheme: str = ""
    ) -> list[bool]:
        """Journal the accepted shares of one read in one go; per share, whether it is
        durable. The journal writes them in one batch, so they are all recorded or none is;
        block candidates' blocks are kept in the store either way (their outcome comes later
        through ``block_submitted``)."""
        records = self._share_records(shares, now, scheme)
        try:
            await self.journal.append_many(records)
        except Exception as exc:
            log.error("shares_not_journaled", shares=len(records), error=repr(exc))
            for record in records:
                if "block" in record:
                    await self._record_unjournaled_block(record)
            return [False] * len(records)
        return [True] * len(records)

    async def _record_unjournaled_block(self, record: dict[str, Any]) -> None:
        """The share was a block: the store keeps the block (its reward is real and must be
        tracked to maturity) even though the share is not credited."""
        block = record["block"]
        rec = share_record_from(record)
        try:
            await self.store.record_block(rec)
        except Exception as exc:
            self.unrecorded.keep(rec, rejected=False, error=exc)
            return
        log.error(
            "block_recorded_without_share",
            hash=block["hash"],
            height=block["height"],
            worker=record["worker"],
            note="the journal refused the share: the block is tracked, the share not credited",
        )

    async def block_submitted(
        self,
        result: ShareResult,
        creds: Credentials | None,
        submission: BlockSubmission,
        now: float,
    ) -> None:
        """A block candidate's submission is settled (the server calls this after
        ``on_share`` journaled the share and the block went to bitcoind).

        REJECTED or STALE (never accepted, and the chain holds another block at its height):
        the block becomes ``rejected`` (out of the reserve and the luck, never
        checked again), unless the chain already holds it. ACCEPTED, DUPLICATE, INCONCLUSIVE,
        FAILED: it stays pending; ``check_blocks`` settles it from the chain. A block the
        store does not have (its share was never journaled) is recorded now with that status.
        Idempotent: a second call, or a replay of the journal, changes nothing. Never raises
        (a block the store cannot take now is kept and retried until it does)."""
        if result.job is None or not result.hash_hex:
            return
        rejected = submission.status in (SubmitStatus.REJECTED, SubmitStatus.STALE)
        rec = block_record(
            result,
            creds,
            now,
            scheme=self.block_scheme(result.hash_hex).value,
            fee_bps=self.config.fee_bps,
            pplns_window_factor=self.config.pplns_window_factor,
        )
        try:
            outcome = await self.store.block_outcome(rec, rejected=rejected, now=now)
        except Exception as exc:
            self.unrecorded.keep(rec, rejected=rejected, error=exc)
            return
        if outcome.action != "unchanged":
            log.info(
                "block_outcome_recorded",
                hash=rec.block_hash,
                height=rec.block_height,
                submission=submission.status.value,
                action=outcome.action,
                status=outcome.row["status"] if outcome.row else None,
            )

    # -- blocks ---------------------------------------------------------------------------------
    async def check_blocks(self, rpc: BitcoinRpc, now: float | None = None) -> list[str]:
        """Settle found blocks from the chain (``pool.ledger.block_checks``): confirmed after
        ``block_maturity`` confirmations, orphaned when the chain holds another block at that
        height, rejected when bitcoind never had it and the chain is past its height. Returns
        a list of changes."""
        now = time.time() if now is None else now
        return await check_blocks(self.store, rpc, self.config.block_maturity, now)

    async def reconcile_chain(
        self, rpc: BitcoinRpc, *, payout_script: bytes, pool_tag: bytes
    ) -> list[str]:
        """At start: record the pool's blocks on the chain that the store is missing (found
        while the store could not take them, or just before a crash); their hashes."""
        return await reconcile_chain(
            self.store,
            rpc,
            payout_script=payout_script,
            pool_tag=pool_tag,
            max_blocks=self.config.reconcile_blocks,
        )

    # -- reports (in memory: no SQLite) ---------------------------------------------------------
    def reserve(self) -> Reserve:
        return self.aggregates.reserve()

    def luck(self, now: float) -> dict[str, dict[str, float | int | None]]:
        """Per window: expected blocks (sum of d/D of the shares), blocks found, and luck as
        defined in the economics notes: expected / found (above 1: fewer blocks than the
        work deserved; None while no block was found). Orphaned blocks count as found: luck
        measures the work against the solutions it produced; what orphans cost shows in the
        blocks' status and in the reserve, which leaves their rewards out. Rejected blocks
        (bitcoind refused them) are not solutions and never count."""
        return self.aggregates.luck(now)
