"""Block submission: ``submitblock`` and every answer it can give, as a typed result.

``submit_block`` asks once (with the client's retry policy). ``BlockSubmitter`` is what the
pool uses for a found block: it asks again, with backoff, until the block is settled:
bitcoind answered (accepted, duplicate, inconclusive, or refused with its own reason), or the
chain holds another block at its height (stale), however long bitcoind is away. A retry
waiting for bitcoind is woken as soon as bitcoind answers any call again (a restarted managed
node included), so the block is resubmitted at once when the node returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import structlog

from pool.node.lifecycle import Backoff
from pool.node.rpc import BitcoinRpc, RpcError, RpcRefused
from pool.node.spool import BlockSpool

log = structlog.get_logger("pool.node.submit")


class SubmitStatus(enum.Enum):
    ACCEPTED = "accepted"  # null: the block is valid and was added to the chain
    DUPLICATE = "duplicate"  # bitcoind already had this block (e.g. submitted twice)
    INCONCLUSIVE = "inconclusive"  # valid, but not (yet) on the best chain; watch it
    REJECTED = "rejected"  # bitcoind said why not: high-hash, bad-txnmrklroot, bad-cb-height...
    FAILED = "failed"  # bitcoind could not be asked (unreachable after retries)
    STALE = "stale"  # never accepted, and the chain now holds another block at its height


@dataclass(frozen=True, slots=True)
class BlockSubmission:
    status: SubmitStatus
    reason: str | None
    block_hash: str
    height: int

    @property
    def accepted(self) -> bool:
        return self.status is SubmitStatus.ACCEPTED


def interpret_submitblock(answer: Any) -> tuple[SubmitStatus, str | None]:
    """Map a ``submitblock`` result to a status and bitcoind's reason string."""
    if answer is None:
        return SubmitStatus.ACCEPTED, None
    reason = str(answer)
    if reason == "duplicate":
        return SubmitStatus.DUPLICATE, reason
    if reason in ("inconclusive", "duplicate-inconclusive"):
        return SubmitStatus.INCONCLUSIVE, reason
    return SubmitStatus.REJECTED, reason


async def submit_block(
    rpc: BitcoinRpc, block: bytes, *, block_hash: str, height: int
) -> BlockSubmission:
    """Submit ``block``; log and return the typed outcome. Never raises for bitcoind's answer."""
    try:
        answer = await rpc.call("submitblock", block.hex(), timeout=60.0)
    except RpcRefused as exc:
        # e.g. "Block decode failed" comes back as an RPC error rather than a reason string.
        result = BlockSubmission(SubmitStatus.REJECTED, exc.message, block_hash, height)
    except RpcError as exc:
        result = BlockSubmission(SubmitStatus.FAILED, str(exc), block_hash, height)
    else:
        status, reason = interpret_submitblock(answer)
        result = BlockSubmission(status, reason, block_hash, height)
    fields = {"height": height, "hash": block_hash, "status": result.status.value}
    if result.status in (SubmitStatus.ACCEPTED, SubmitStatus.DUPLICATE):
        log.info("block_submitted", **fields)
    else:
        log.error("block_not_accepted", reason=result.reason, **fields)
    return result


def chain_decision(
    block_hash: str, height: int, hash_at_height: str | None
) -> tuple[SubmitStatus, str] | None:
    """What the chain says about a block whose ``submitblock`` got no answer: the chain's block
    at ``height`` is ours -> accepted (the answer was lost); another block -> stale (the chain
    has moved past it); none yet (``hash_at_height`` None) -> undecided: submit again."""
    if hash_at_height is None:
        return None
    if hash_at_height == block_hash:
        return SubmitStatus.ACCEPTED, "on the best chain (the submitblock answer was lost)"
    return SubmitStatus.STALE, f"stale: the chain has block {hash_at_height} at height {height}"


class BlockSubmitter:
    """Submits found blocks until each is settled (see the module's docstring).

    ``pending`` holds the blocks being submitted (hash -> height): while a block is there the
    node may not have seen it yet, so nothing may call it orphaned. ``retries`` counts the
    submissions asked again.

    The last ``keep_recent`` blocks bitcoind took are kept: a node that was killed may come
    back without the blocks it had not flushed to disk, so after a restart (``node_restarted``)
    they are submitted again, in height order, before any pending block is retried (a pending
    block builds on them): from ``node_down`` (the managed node died) until that is done, no
    submission is attempted."""

    def __init__(
        self,
        rpc: BitcoinRpc,
        *,
        retry_initial: float = 0.5,
        retry_max: float = 5.0,
        timeout: float = 60.0,
        log_every: float = 60.0,
        keep_recent: int = 16,
        spool: BlockSpool | None = None,
    ) -> None:
        Backoff(retry_initial, retry_max)  # validates
        self.rpc = rpc
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.timeout = timeout
        self.log_every = log_every
        self.pending: dict[str, int] = {}
        self.retries = 0
        self.recent: deque[tuple[int, str, bytes]] = deque(maxlen=keep_recent)
        self.restored = 0  # recent blocks a restarted node had lost and took again
        self._node_ready = asyncio.Event()  # cleared from node_down to the end of the restore
        self._node_ready.set()
        self._restore_task: asyncio.Task[None] | None = None
        self.spool = spool  # unsettled blocks on disk: resubmitted at the next start
        self.resumed = 0  # blocks left unsettled by an earlier run, submitted again
        self._resume_tasks: set[asyncio.Task[BlockSubmission]] = set()

    async def submit(self, block: bytes, *, block_hash: str, height: int) -> BlockSubmission:
        self.pending[block_hash] = height
        log.info("block_found", height=height, hash=block_hash)
        # Written to disk beside the first submitblock, never before it: a block waits for no
        # fsync (and none stalls the loop: the write runs on a thread).
        spool = self.spool
        kept = (
            asyncio.ensure_future(asyncio.to_thread(spool.keep, height, block_hash, block))
            if spool is not None
            else None
        )
        try:
            result = await self._submit(block, block_hash=block_hash, height=height)
        except asyncio.CancelledError:  # the pool is stopping with the block still unsettled
            if kept is not None:
                log.warning(
                    "block_submission_deferred",
                    height=height,
                    hash=block_hash,
                    note="the pool stopped before bitcoind settled it: submitted at next start",
                )
            else:
                log.error(
                    "block_submission_abandoned",
                    height=height,
                    hash=block_hash,
                    block=block.hex(),
                    note="the pool stopped before bitcoind settled it: submitblock this hex",
                )
            raise
        finally:
            self.pending.pop(block_hash, None)
        if kept is not None and spool is not None and await kept:
            spool.drop(height, block_hash)
        return result

    def resume_spooled(self) -> int:
        """Submit again (in the background) the blocks an earlier run left unsettled on disk;
        their outcome is logged, and the ledger settles them from the chain like any block.
        Returns how many there are."""
        if self.spool is None:
            return 0
        blocks = self.spool.load()
        for spooled in blocks:
            log.warning(
                "block_resubmitted_from_spool",
                height=spooled.height,
                hash=spooled.block_hash,
                note="left unsettled by an earlier run",
            )
            task = asyncio.create_task(
                self.submit(spooled.block, block_hash=spooled.block_hash, height=spooled.height),
                name=f"block-resume-{spooled.block_hash[:16]}",
            )
            self._resume_tasks.add(task)
            task.add_done_callback(self._resume_tasks.discard)
        self.resumed += len(blocks)
        return len(blocks)

    async def close(self) -> None:
        """Stop the resubmissions of spooled blocks (they stay on disk for the next start)."""
        for task in list(self._resume_tasks):
            task.cancel()
        for task in list(self._resume_tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _submit(self, block: bytes, *, block_hash: str, height: int) -> BlockSubmission:
        backoff = Backoff(self.retry_initial, self.retry_max)
        first_failure: float | None = None
        last_log = 0.0
        attempts = 0
        hex_block = block.hex()
        while True:
            attempts += 1
            await self._node_ready.wait()  # a restarted node first gets its lost blocks back
            try:
                answer = await self.rpc.call(
                    "submitblock", hex_block, retry=False, timeout=self.timeout
                )
            except RpcRefused as exc:
                return _settled(
                    BlockSubmission(SubmitStatus.REJECTED, exc.message, block_hash, height),
                    attempts,
                    first_failure,
                )
            except RpcError as exc:
                decided = await self._ask_chain(block_hash, height)
                if decided is not None:
                    return _settled(
                        BlockSubmission(decided[0], decided[1], block_hash, height),
                        attempts,
                        first_failure,
                    )
                now = time.monotonic()
                if first_failure is None:
                    first_failure = now
                if now - last_log >= self.log_every:
                    last_log = now
                    log.warning(
                        "block_submit_retrying",
                        height=height,
                        hash=block_hash,
                        attempts=attempts,
                        failing_seconds=round(now - first_failure, 1),
                        error=str(exc),
                        note="kept and submitted again as soon as bitcoind answers",
                    )
                self.retries += 1
                delay = backoff.next_delay()
                if self.rpc.available:
                    await asyncio.sleep(min(delay, self.retry_initial))
                else:  # woken as soon as any call reaches bitcoind again
                    await self.rpc.wait_available(delay)
                continue
            status, reason = interpret_submitblock(answer)
            if status in (SubmitStatus.ACCEPTED, SubmitStatus.DUPLICATE, SubmitStatus.INCONCLUSIVE):
                self.recent.append((height, block_hash, block))
            return _settled(
                BlockSubmission(status, reason, block_hash, height), attempts, first_failure
            )

    # -- a restarted node ---------------------------------------------------------------------
    def node_down(self) -> None:
        """The managed node died: hold every submission until it is back and restored."""
        self._node_ready.clear()

    def node_restarted(self) -> None:
        """The node was restarted: give it the recent blocks back before anything else."""
        if not self.recent:
            self._node_ready.set()
            return
        self._restore_task = asyncio.create_task(self._restore(), name="blocks-restore")

    async def _restore(self) -> None:
        try:
            for height, block_hash, block in sorted(self.recent):
                try:
                    answer = await self.rpc.call(
                        "submitblock", block.hex(), retry=False, timeout=self.timeout
                    )
                except RpcRefused as exc:
                    answer = exc.message
                except RpcError as exc:
                    log.warning(
                        "block_restore_failed", height=height, hash=block_hash, error=str(exc)
                    )
                    return
                status, reason = interpret_submitblock(answer)
                if status is not SubmitStatus.DUPLICATE:  # duplicate: the node still had it
                    self.restored += status is SubmitStatus.ACCEPTED
                    log.warning(
                        "block_restored",
                        height=height,
                        hash=block_hash,
                        status=status.value,
                        reason=reason,
                        note="the restarted node had lost this block",
                    )
        finally:
            self._node_ready.set()

    async def _ask_chain(self, block_hash: str, height: int) -> tuple[SubmitStatus, str] | None:
        try:
            at_height = await self.rpc.call("getblockhash", height, retry=False, timeout=10.0)
        except RpcError:  # out of range (-8): the chain is not there yet; or still unreachable
            return None
        return chain_decision(block_hash, height, str(at_height))


def _settled(
    result: BlockSubmission, attempts: int, first_failure: float | None
) -> BlockSubmission:
    fields: dict[str, Any] = {
        "height": result.height,
        "hash": result.block_hash,
        "status": result.status.value,
        "attempts": attempts,
    }
    if first_failure is not None:
        fields["after_seconds"] = round(time.monotonic() - first_failure, 1)
    if result.status in (SubmitStatus.ACCEPTED, SubmitStatus.DUPLICATE):
        log.info("block_submitted", reason=result.reason, **fields)
    elif result.status is SubmitStatus.STALE:
        log.warning("block_stale", reason=result.reason, **fields)
    else:
        log.error("block_not_accepted", reason=result.reason, **fields)
    return result
