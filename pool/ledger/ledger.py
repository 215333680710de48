"""The ledger service: accepted shares -> journal -> store; found blocks; the PPS reserve.

Order of events for an accepted share (``on_share``, awaited by the server BEFORE the miner is
answered): the credit is computed (``pps``), the record is appended to the journal and the
call returns once the journal has written it (and fsynced it, per ``ledger.journal_fsync``).
The journal then hands every written batch, in journal order, to ``_on_written``, which
applies it to the store's open transaction; a timer commits the store with the journal
position of the last applied record. On start-up the journal past that checkpoint is
replayed: nothing acknowledged is lost and nothing is credited twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from pool.bitcoin import Network
from pool.bitcoin.target import target_to_difficulty
from pool.config import LedgerConfig
from pool.ledger.journal import Journal, JournalPosition, read_records, segment_files
from pool.ledger.pps import (
    UNITS_PER_SAT,
    Scheme,
    block_value,
    expected_blocks,
    share_value,
)
from pool.ledger.retention import remove_expired_segments
from pool.ledger.store import (
    CONFIRMED,
    ORPHANED,
    PENDING,
    Checkpoint,
    ShareRecord,
    Store,
)
from pool.node.rpc import BitcoinRpc, RpcError, RpcRefused
from pool.node.submit import BlockSubmission, SubmitStatus
from pool.server.auth import Credentials
from pool.shares import ShareResult

log = structlog.get_logger("pool.ledger")

RECORD_VERSION = 1
LUCK_WINDOWS = {"1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0}
# A block submitted but neither accepted nor refused (bitcoind unreachable) is still tracked:
# the maturity check settles it from the chain.
TRACKED_SUBMISSIONS = (SubmitStatus.ACCEPTED, SubmitStatus.INCONCLUSIVE, SubmitStatus.FAILED)


JOURNAL_PRUNE_SECONDS = 3600.0  # how often expired journal segments are looked for


class LedgerError(RuntimeError):
    """The share could not be recorded; the miner must not be told it was accepted."""


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
    """The journal record of one accepted share: everything needed to recompute its credit."""
    job = result.job
    assert job is not None
    template = job.template
    subsidy = network.block_subsidy(template.height)
    value_sat = block_value(scheme, subsidy, template.coinbase_value)
    value = share_value(result.difficulty, job.block_target, value_sat, fee_bps)
    record: dict[str, Any] = {
        "v": RECORD_VERSION,
        "time": now,
        "worker": creds.name,
        "address": creds.address,
        "difficulty": result.difficulty,
        "target": job.block_target.to_bytes(32, "big"),
        "height": template.height,
        "scheme": scheme.value,
        "block_value_sat": value_sat,
        "fee_bps": fee_bps,
        "gross": value.gross,
        "credit": value.credit,
        "fee": value.fee,
        "job": result.job_id,  # as submitted (with the extranonce, ntime, nonce: the share)
        "extranonce": result.extranonce.hex(),
        "ntime": result.ntime,
        "nonce": result.nonce,
        "version": result.version,
        "hash": result.hash_hex,
    }
    if submission is not None and submission.status in TRACKED_SUBMISSIONS:
        record["block"] = {
            "hash": submission.block_hash,
            "height": submission.height,
            "reward_sat": template.coinbase_value,
            "status": submission.status.value,
        }
    return record


def share_record_from(record: dict[str, Any]) -> ShareRecord:
    target = int.from_bytes(record["target"], "big")
    block = record.get("block")
    return ShareRecord(
        time=float(record["time"]),
        worker=str(record["worker"]),
        address=str(record["address"]),
        difficulty=float(record["difficulty"]),
        expected_blocks=expected_blocks(float(record["difficulty"]), target),
        credit_units=int(record["credit"]),
        fee_units=int(record["fee"]),
        block_hash=str(block["hash"]) if block else None,
        block_height=int(block["height"]) if block else None,
        block_reward_sat=int(block["reward_sat"]) if block else None,
        network_difficulty=target_to_difficulty(target),
    )


@dataclass(frozen=True)
class Reserve:
    rewards_earned_units: int  # pending + confirmed blocks (orphans excluded)
    rewards_confirmed_units: int
    credits_units: int
    fees_units: int

    @property
    def reserve_units(self) -> int:
        return self.rewards_earned_units - self.credits_units - self.fees_units


class Ledger:
    def __init__(self, config: LedgerConfig, data_dir: Path, network: Network) -> None:
        self.config = config
        self.network = network
        self.scheme = Scheme(config.scheme)
        self.journal_dir = data_dir / "journal"
        self.store = Store(data_dir / "ledger.sqlite3")
        self.journal = Journal(
            self.journal_dir,
            fsync=config.journal_fsync,
            fsync_interval_ms=config.journal_fsync_interval_ms,
            segment_bytes=config.journal_segment_bytes,
            on_written=self._on_written,
        )
        self.broken: str | None = None
        self.replayed = 0
        self._commit_task: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    async def open(self) -> None:
        self.store.open()
        cp = self.store.checkpoint()
        start = JournalPosition(cp.segment, cp.offset) if cp else None
        segments = [n for n, _ in segment_files(self.journal_dir)]
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
        replayed = 0
        for position, record in read_records(self.journal_dir, start):
            self._apply(position, record)
            replayed += 1
        self.store.commit()
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
            self.prune_journal(time.time(), self.store.checkpoint())
        except OSError as exc:  # retention is housekeeping: never stop the ledger
            log.warning("journal_prune_failed", error=repr(exc))
        await self.journal.open()
        self._commit_task = asyncio.create_task(self._commit_loop(), name="ledger-commit")

    async def close(self) -> None:
        if self._commit_task is not None:
            self._commit_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._commit_task
        await self.journal.close()
        if self.broken is None:
            self.store.commit()
        self.store.close()
        log.info("ledger_closed")

    async def _commit_loop(self) -> None:
        last_prune = time.monotonic()
        while True:
            await asyncio.sleep(self.config.checkpoint_seconds)
            self.commit()
            if time.monotonic() - last_prune >= JOURNAL_PRUNE_SECONDS:
                last_prune = time.monotonic()
                try:
                    # The checkpoint is read here, on the loop's thread (the store's connection
                    # is not shared with threads); only the file work runs in a thread.
                    cp = self.store.checkpoint() if self.broken is None else None
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

    def commit(self) -> None:
        if self.broken is None:
            self.store.commit()

    # -- shares ---------------------------------------------------------------------------------
    async def on_share(
        self,
        result: ShareResult,
        creds: Credentials | None,
        now: float,
        submission: BlockSubmission | None,
    ) -> None:
        """Server share listener: journal an accepted share before the miner hears of it."""
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
                self._record_unjournaled_block(record)
            raise LedgerError(f"the pool could not record the share: {exc}") from exc

    def _record_unjournaled_block(self, record: dict[str, Any]) -> None:
        """The share was a block, already submitted: the store keeps the block (its reward is
        real and must be tracked to maturity) even though the share is not credited."""
        block = record["block"]
        try:
            if self.broken is not None:
                raise LedgerError(f"the ledger store failed earlier: {self.broken}")
            self.store.record_block(share_record_from(record))
        except Exception as exc:
            log.critical(
                "block_not_recorded",
                hash=block["hash"],
                height=block["height"],
                reward_sat=block["reward_sat"],
                error=repr(exc),
                note="the block is on the chain but not in the ledger; record it by hand",
            )
            return
        log.error(
            "block_recorded_without_share",
            hash=block["hash"],
            height=block["height"],
            worker=record["worker"],
            note="the journal refused the share: the block is tracked, the share not credited",
        )

    def _on_written(self, batch: Sequence[tuple[JournalPosition, dict[str, Any]]]) -> None:
        """Called by the journal after each batch is written, in journal order."""
        for position, record in batch:
            try:
                self._apply(position, record)
            except Exception as exc:  # the journal has it; a restart replays it
                if self.broken is None:
                    self.broken = repr(exc)
                    # Undo the half-applied record (and the uncommitted ones before it): no
                    # later commit (a block status, a payout, close) may make it durable.
                    with contextlib.suppress(Exception):
                        self.store.rollback()
                    log.error(
                        "ledger_store_failed",
                        error=repr(exc),
                        note="shares stay in the journal and are replayed at the next start",
                    )

    def _apply(self, position: JournalPosition, record: dict[str, Any]) -> None:
        if self.broken is not None:
            return
        self.store.apply_share(
            share_record_from(record), Checkpoint(position.segment, position.offset)
        )

    # -- blocks ---------------------------------------------------------------------------------
    async def check_blocks(self, rpc: BitcoinRpc, now: float | None = None) -> list[str]:
        """Settle found blocks from the chain: confirmed after ``block_maturity`` confirmations,
        orphaned when the chain holds another block at that height (confirmations -1).
        Returns a list of changes for the log/tests."""
        now = time.time() if now is None else now
        changes: list[str] = []
        maturity = self.config.block_maturity
        for block in self.store.blocks((PENDING, ORPHANED)):
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
            if status != block["status"] or confirmations != block["confirmations"]:
                self.store.set_block_status(block["hash"], status, confirmations, now)
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

    # -- reports --------------------------------------------------------------------------------
    def reserve(self) -> Reserve:
        rewards = self.store.rewards_sat()
        totals = self.store.totals()
        return Reserve(
            rewards_earned_units=(rewards[PENDING] + rewards[CONFIRMED]) * UNITS_PER_SAT,
            rewards_confirmed_units=rewards[CONFIRMED] * UNITS_PER_SAT,
            credits_units=totals["credit_units"],
            fees_units=totals["fee_units"],
        )

    def luck(self, now: float) -> dict[str, dict[str, float | int | None]]:
        """Per window: expected blocks (sum of d/D of the shares), blocks found, and luck as
        defined in the economics notes: expected / found (above 1: fewer blocks than the
        work deserved; None while no block was found). Orphaned blocks count as found: luck
        measures the work against the solutions it produced; what orphans cost shows in the
        blocks' status and in the reserve, which leaves their rewards out."""
        out: dict[str, dict[str, float | int | None]] = {}
        windows = dict(LUCK_WINDOWS, all=now)
        for name, span in windows.items():
            since = now - span if name != "all" else 0.0
            expected = self.store.expected_blocks_since(since)
            found = self.store.blocks_found_since(since)
            out[name] = {
                "expected_blocks": expected,
                "found_blocks": found,
                "luck": expected / found if found else None,
            }
        return out
