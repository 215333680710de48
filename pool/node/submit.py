"""Block submission: ``submitblock`` and every answer it can give, as a typed result."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import structlog

from pool.node.rpc import BitcoinRpc, RpcError, RpcRefused

log = structlog.get_logger("pool.node.submit")


class SubmitStatus(enum.Enum):
    ACCEPTED = "accepted"  # null: the block is valid and was added to the chain
    DUPLICATE = "duplicate"  # bitcoind already had this block (e.g. submitted twice)
    INCONCLUSIVE = "inconclusive"  # valid, but not (yet) on the best chain; watch it
    REJECTED = "rejected"  # bitcoind said why not: high-hash, bad-txnmrklroot, bad-cb-height...
    FAILED = "failed"  # bitcoind could not be asked (unreachable after retries)


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
