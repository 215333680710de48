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
else stays pending for ``check_blocks`` to settle from the chain (confirmed or orphaned).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from pool.bitcoin import Network
from pool.bitcoin.target import target_to_difficulty
from pool.config import LedgerConfig
from pool.ledger.aggregates import (
    CONFIRMED,
    LUCK_WINDOWS,
    ORPHANED,
    PENDING,
    Aggregates,
    Checkpoint,
    Reserve,
    ShareRecord,
)
from pool.ledger.journal import Journal, JournalPosition, segment_files
from pool.ledger.journal_read import read_records
from pool.ledger.pps import Scheme, block_value, expected_blocks, share_value
from pool.ledger.retention import remove_expired_segments
from pool.ledger.store import Store
from pool.ledger.store_thread import StoreThread
from pool.node.rpc import BitcoinRpc, RpcError, RpcRefused
from pool.node.submit import BlockSubmission, SubmitStatus
from pool.server.auth import Credentials
from pool.shares import ShareResult

__all__ = [
    "LUCK_WINDOWS",
    "Ledger",
    "LedgerError",
    "Reserve",
    "record_for_share",
    "share_record_from",
]

log = structlog.get_logger("pool.ledger")

RECORD_VERSION = 1
# A block submitted but neither accepted nor refused (bitcoind unreachable) is still tracked:
# the maturity check settles it from the chain.
TRACKED_SUBMISSIONS = (SubmitStatus.ACCEPTED, SubmitStatus.INCONCLUSIVE, SubmitStatus.FAILED)
SUBMITTED = "submitted"  # a journal record's block status: journaled before its submission


JOURNAL_PRUNE_SECONDS = 3600.0  # how often expired journal segments are looked for
REPLAY_CHUNK = 4096  # journal records applied per store call while replaying

# Per-share conversions memoised (``pps`` memoises the credit maths itself): a connection's
# difficulty and a job's target change rarely. Bounded; cleared when full.
_MEMO_SIZE = 4096
_expected: dict[tuple[float, bytes], tuple[float, float]] = {}
_target_bytes: dict[int, bytes] = {}


def _target_to_bytes(target: int) -> bytes:
    raw = _target_bytes.get(target)
    if raw is None:
        raw = target.to_bytes(32, "big")
        if len(_target_bytes) >= _MEMO_SIZE:
            _target_bytes.clear()
        _target_bytes[target] = raw
    return raw


def _expected_and_difficulty(difficulty: float, target_raw: bytes) -> tuple[float, float]:
    """(expected blocks of the share, network difficulty of the target)."""
    key = (difficulty, target_raw)
    found = _expected.get(key)
    if found is None:
        target = int.from_bytes(target_raw, "big")
        found = (expected_blocks(difficulty, target), target_to_difficulty(target))
        if len(_expected) >= _MEMO_SIZE:
            _expected.clear()
        _expected[key] = found
    return found


class LedgerError(RuntimeError):
    """The share could not be recorded; the miner must not be told it was accepted."""


_RECORD_BASES = 1024
# (id(job), target, difficulty, chain, scheme, fee) -> (the job, its records' common part); the
# job is kept and compared so a recycled id() can never match another job.
_record_bases: dict[tuple[int, int, float, str, Scheme, int], tuple[Any, dict[str, Any]]] = {}


def record_for_share(
    result: ShareResult,
    creds: Credentials,
    now: float,
    submission: BlockSubmission | None,
    *,
    network: Network,
    scheme: Scheme,
    fee_bps: int,
) -> dict[str, Any]:
    """The journal record of one accepted share: everything needed to recompute its credit.

    A block candidate journaled while its submission is under way (``submission`` None: the
    server submits it at once, in the background) carries a ``block`` entry with status
    ``submitted``; with a submission (the older order: submitted
    first), only a tracked outcome (accepted, inconclusive, failed) carries one."""
    job = result.job
    assert job is not None
    template = job.template
    # The part every share of this job at this difficulty has in common, computed once.
    key = (id(job), job.block_target, result.difficulty, network.name, scheme, fee_bps)
    cached = _record_bases.get(key)
    if cached is None or cached[0] is not job:
        subsidy = network.block_subsidy(template.height)
        value_sat = block_value(scheme, subsidy, template.coinbase_value)
        value = share_value(result.difficulty, job.block_target, value_sat, fee_bps)
        base = {
            "v": RECORD_VERSION,
            "difficulty": result.difficulty,
            "target": _target_to_bytes(job.block_target),
            "height": template.height,
            "scheme": scheme.value,
            "block_value_sat": value_sat,
            "fee_bps": fee_bps,
            "gross": value.gross,
            "credit": value.credit,
            "fee": value.fee,
        }
        if len(_record_bases) >= _RECORD_BASES:
            _record_bases.clear()
        cached = _record_bases[key] = (job, base)
    record: dict[str, Any] = {
        **cached[1],
        "time": now,
        "worker": creds.name,
        "address": creds.address,
        "job": result.job_id,  # as submitted (with the extranonce, ntime, nonce: the share)
        "extranonce": result.extranonce.hex(),
        "ntime": result.ntime,
        "nonce": result.nonce,
        "version": result.version,
        "hash": result.hash_hex,
    }
    if submission is None:
        if result.block_candidate:
            record["block"] = {
                "hash": result.hash_hex,
                "height": template.height,
                "reward_sat": template.coinbase_value,
                "status": SUBMITTED,
            }
    elif submission.status in TRACKED_SUBMISSIONS:
        record["block"] = {
            "hash": submission.block_hash,
            "height": submission.height,
            "reward_sat": template.coinbase_value,
            "status": submission.status.value,
        }
    return record


def share_record_from(record: dict[str, Any]) -> ShareRecord:
    difficulty = float(record["difficulty"])
    expected, network_difficulty = _expected_and_difficulty(difficulty, record["target"])
    block = record.get("block")
    return ShareRecord(
        time=float(record["time"]),
        worker=str(record["worker"]),
        address=str(record["address"]),
        difficulty=difficulty,
        expected_blocks=expected,
        credit_units=int(record["credit"]),
        fee_units=int(record["fee"]),
        block_hash=str(block["hash"]) if block else None,
        block_height=int(block["height"]) if block else None,
        block_reward_sat=int(block["reward_sat"]) if block else None,
        network_difficulty=network_difficulty,
    )


def block_record(result: ShareResult, creds: Credentials | None, now: float) -> ShareRecord:
    """The store's record of a block candidate, without the share's credit (for a block
    whose share the store does not have)."""
    job = result.job
    assert job is not None
    return ShareRecord(
        time=now,
        worker=creds.name if creds is not None else "",
        address=creds.address if creds is not None else "",
        difficulty=result.difficulty,
        expected_blocks=0.0,
        credit_units=0,
        fee_units=0,
        block_hash=result.hash_hex,
        block_height=job.template.height,
        block_reward_sat=job.template.coinbase_value,
        network_difficulty=target_to_difficulty(job.block_target),
    )


class Ledger:
    def __init__(self, config: LedgerConfig, data_dir: Path, network: Network) -> None:
        self.config = config
        self.network = network
        self.scheme = Scheme(config.scheme)
        self.journal_dir = data_dir / "journal"
        # The store and its connection live on a thread of their own; the loop reads the
        # in-memory totals (``aggregates``).
        self.store = StoreThread(data_dir / "ledger.sqlite3", convert=share_record_from)
        self.journal = Journal(
            self.journal_dir,
            fsync=config.journal_fsync,
            fsync_interval_ms=config.journal_fsync_interval_ms,
            segment_bytes=config.journal_segment_bytes,
            on_written=self.store.apply_nowait,
        )
        self.replayed = 0
        self._commit_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Future[None]] = set()  # unjournaled blocks being recorded

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
        await self.store.open()
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
            store=str(self.store.path),
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
        self._commit_task = asyncio.create_task(self._commit_loop(), name="ledger-commit")

    def _replay(self, store: Store, cp: Checkpoint | None) -> tuple[list[int], int]:
        """On the store's thread: apply the journal past the checkpoint and commit. Returns the
        segment numbers found and the records replayed. A record that cannot be applied stops
        the start (the store is rolled back to its checkpoint first)."""
        segments = [n for n, _ in segment_files(self.journal_dir)]
        start = JournalPosition(cp.segment, cp.offset) if cp else None
        replayed = 0
        chunk: list[ShareRecord] = []
        last = start
        try:
            for position, record in read_records(self.journal_dir, start):
                chunk.append(share_record_from(record))
                last = position
                replayed += 1
                if len(chunk) >= REPLAY_CHUNK:
                    store.apply_batch(chunk, Checkpoint(position.segment, position.offset))
                    chunk = []
            if chunk and last is not None:
                store.apply_batch(chunk, Checkpoint(last.segment, last.offset))
            store.commit()
        except BaseException as exc:
            self.store.broken = repr(exc)
            with contextlib.suppress(Exception):
                store.rollback()
            raise
        return segments, replayed

    async def close(self) -> None:
        if self._commit_task is not None:
            self._commit_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._commit_task
        await self.journal.close()  # its last batches go to the store's thread first
        if self._background:  # blocks of failed shares still being recorded
            await asyncio.wait(self._background)
        await self.store.close()  # applies them, commits (unless broken), closes
        log.info("ledger_closed", applied_records=self.store.applied)

    async def _commit_loop(self) -> None:
        last_prune = time.monotonic()
        while True:
            await asyncio.sleep(self.config.checkpoint_seconds)
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
            scheme=self.scheme,
            fee_bps=self.config.fee_bps,
        )
        try:
            await self.journal.append(record)
        except Exception as exc:
            log.error("share_not_journaled", worker=creds.name, error=repr(exc))
            if "block" in record:
                await self._record_unjournaled_block(record)
            raise LedgerError(f"the pool could not record the share: {exc}") from exc

    def _share_records(
        self, shares: Sequence[tuple[ShareResult, Credentials]], now: float
    ) -> list[dict[str, Any]]:
        if not all(result.accepted for result, _ in shares):
            raise ValueError("only accepted shares are journaled")
        network, scheme, fee = self.network, self.scheme, self.config.fee_bps
        return [
            record_for_share(result, creds, now, None, network=network, scheme=scheme, fee_bps=fee)
            for result, creds in shares
        ]

    def journal_shares(
        self, shares: Sequence[tuple[ShareResult, Credentials]], now: float
    ) -> asyncio.Future[Any]:
        """The server's share recorder: queue the accepted shares of one read for the journal,
        in one batch; the future is done once they are durable (or failed: none is). No task
        or coroutine per read. A block candidate whose share fails is still recorded in the
        store (in the background; its outcome comes later through ``block_submitted``)."""
        records = self._share_records(shares, now)
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
        self, shares: Sequence[tuple[ShareResult, Credentials]], now: float
    ) -> list[bool]:
        """Journal the accepted shares of one read in one go; per share, whether it is
        durable. The journal writes them in one batch, so they are all recorded or none is;
        block candidates' blocks are kept in the store either way (their outcome comes later
        through ``block_submitted``)."""
        records = self._share_records(shares, now)
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
        try:
            await self.store.record_block(share_record_from(record))
        except Exception as exc:
            log.critical(
                "block_not_recorded",
                hash=block["hash"],
                height=block["height"],
                reward_sat=block["reward_sat"],
                error=repr(exc),
                note="the block may be on the chain but is not in the ledger; record it by hand",
            )
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

        REJECTED: the block becomes ``rejected`` (out of the reserve and the luck, never
        checked again), unless the chain already holds it. ACCEPTED, DUPLICATE, INCONCLUSIVE,
        FAILED: it stays pending; ``check_blocks`` settles it from the chain. A block the
        store does not have (its share was never journaled) is recorded now with that status.
        Idempotent: a second call, or a replay of the journal, changes nothing. Never raises
        (the block is logged for the operator when the store cannot take it)."""
        if result.job is None or not result.hash_hex:
            return
        rejected = submission.status is SubmitStatus.REJECTED
        rec = block_record(result, creds, now)
        try:
            outcome = await self.store.block_outcome(rec, rejected=rejected, now=now)
        except Exception as exc:
            log.critical(
                "block_not_recorded",
                hash=rec.block_hash,
                height=rec.block_height,
                reward_sat=rec.block_reward_sat,
                submission=submission.status.value,
                error=repr(exc),
                note="the block's outcome is not in the ledger; record it by hand",
            )
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
        """Settle found blocks from the chain: confirmed after ``block_maturity`` confirmations,
        orphaned when the chain holds another block at that height (confirmations -1).
        Rejected blocks are never looked at. Returns a list of changes for the log/tests."""
        now = time.time() if now is None else now
        changes: list[str] = []
        maturity = self.config.block_maturity
        for block in await self.store.run(Store.blocks, (PENDING, ORPHANED)):
            try:
                header = await rpc.call("getblockheader", block["hash"], True)
                confirmations = int(header["confirmations"])
            except RpcRefused:  # bitcoind does not know it: it never made it
                confirmations = -1
            except RpcError as exc:
                log.warning("block_check_failed", hash=block["hash"], error=str(exc))
                return changes
            if confirmations < 0:
                status = ORPHANED
            elif confirmations >= maturity:
                status = CONFIRMED
            else:
                status = PENDING
            if status == block["status"] and confirmations == block["confirmations"]:
                continue
            # only if nothing else (a rejection) changed the block meanwhile
            if not await self.store.set_block_status(
                block["hash"], status, confirmations, now, expect=block["status"]
            ):
                continue
            if status != block["status"]:
                changes.append(f"{block['hash']}:{block['status']}->{status}")
                log.info(
                    "block_status",
                    hash=block["hash"],
                    height=block["height"],
                    status=status,
                    confirmations=confirmations,
                    reward_sat=block["reward_sat"],
                )
        return changes

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
