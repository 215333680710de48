"""Found blocks are never lost: kept until recorded, and found again from the chain.

``UnrecordedBlocks``: a block whose recording failed (the store is degraded: disk full,
read-only, locked) is kept in memory with its outcome and retried, with backoff, until the
store takes it. What a crash loses from memory the chain still has: ``reconcile_chain`` (at
start) scans the blocks since the last one the store holds and since its last scan (at most
``max_blocks``) for
coinbases that carry the pool's tag in their scriptSig and pay the pool's payout script, and
records any the store is missing (status ``pending``: ``check_blocks`` settles it; its share
is not credited, as for any block whose share was not journaled).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import structlog

from pool.bitcoin.target import bits_to_difficulty
from pool.ledger.aggregates import ShareRecord
from pool.ledger.store import Store
from pool.node.rpc import BitcoinRpc
from pool.tasks import Backoff

if TYPE_CHECKING:
    from pool.ledger.store_thread import StoreThread

log = structlog.get_logger("pool.ledger")

SAT_PER_BTC = 100_000_000
RECONCILED_KEY = "chain_reconciled_height"  # store meta: the chain was scanned up to here


@dataclass
class _Waiting:
    record: ShareRecord
    rejected: bool  # bitcoind refused it (its outcome, once known)
    since: float
    attempts: int = 0


class UnrecordedBlocks:
    """Found blocks the store has not taken yet, retried with backoff until it does."""

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff
        self.waiting: dict[str, _Waiting] = {}
        self.recorded = 0  # recorded after waiting (since the start)
        self._next_try = 0.0  # monotonic

    def __len__(self) -> int:
        return len(self.waiting)

    def keep(self, rec: ShareRecord, *, rejected: bool, error: BaseException) -> None:
        """Keep ``rec``'s block (a later outcome replaces an earlier one)."""
        assert rec.block_hash is not None
        old = self.waiting.get(rec.block_hash)
        self.waiting[rec.block_hash] = _Waiting(
            rec, rejected or (old is not None and old.rejected), old.since if old else time.time()
        )
        if old is None:
            self._next_try = time.monotonic() + self.backoff.next_delay()
        log.error(
            "block_kept_for_retry",
            hash=rec.block_hash,
            height=rec.block_height,
            reward_sat=rec.block_reward_sat,
            rejected=rejected,
            waiting_blocks=len(self.waiting),
            error=repr(error),
            note="the store cannot take it now: retried until it does",
        )

    def due(self) -> bool:
        return bool(self.waiting) and time.monotonic() >= self._next_try

    async def retry(self, store: StoreThread, now: float) -> int:
        """Try every waiting block once; how many the store took."""
        done = 0
        for block_hash, item in list(self.waiting.items()):
            item.attempts += 1
            try:
                await store.block_outcome(item.record, rejected=item.rejected, now=now)
            except Exception as exc:
                delay = self.backoff.next_delay()
                self._next_try = time.monotonic() + delay
                log.warning(
                    "block_still_unrecorded",
                    hash=block_hash,
                    attempts=item.attempts,
                    retry_in_seconds=delay,
                    error=repr(exc),
                )
                return done
            del self.waiting[block_hash]
            done += 1
            self.recorded += 1
            log.warning(
                "block_recorded_after_retry",
                hash=block_hash,
                height=item.record.block_height,
                attempts=item.attempts,
                waited_seconds=round(time.time() - item.since, 3),
            )
        self.backoff.reset()
        return done


def _sat(value: Any) -> int:
    return int(Decimal(str(value)) * SAT_PER_BTC)


async def _coinbase(rpc: BitcoinRpc, block_hash: str) -> dict[str, Any]:
    block = await rpc.call("getblock", block_hash, 1)
    txid = block["tx"][0]
    tx: dict[str, Any] = await rpc.call("getrawtransaction", txid, True, block_hash)
    tx["_block"] = block
    return tx


def pool_reward(tx: dict[str, Any], payout_script: bytes, pool_tag: bytes) -> int | None:
    """The satoshis a coinbase pays the pool's script, when it carries the pool's tag in its
    scriptSig (None: not one of the pool's blocks)."""
    found = classify_coinbase(tx, payout_script, pool_tag)
    return None if found is None or found[0] == SOLO else found[1]


SOLO = "solo"


def classify_coinbase(
    tx: dict[str, Any], payout_script: bytes, pool_tag: bytes
) -> tuple[str, int, str] | None:
    """Whose block a coinbase (``getrawtransaction`` verbose) is: None when it is not this
    pool's (no tag, or nothing paid to the pool's script); ``("", sat, "")`` for a pool block
    (its largest output pays the pool's script: ``sat`` is what the script got);
    ``("solo", sat, address)`` for a SOLO port's block with a pool fee (its largest output
    pays the miner, a smaller one the pool: ``sat`` is the whole coinbase, ``address`` the
    miner's). A SOLO block without a fee output pays the pool nothing and cannot be told
    from another pool's block with the same tag: None (it is the miner's either way)."""
    vin = tx.get("vin") or [{}]
    script_sig = bytes.fromhex(str(vin[0].get("coinbase", "")))
    if not pool_tag or pool_tag not in script_sig:
        return None
    target = payout_script.hex()
    outputs = [(_sat(out["value"]), out["scriptPubKey"]) for out in tx.get("vout", [])]
    paying = [(value, spk) for value, spk in outputs if value > 0]
    if not paying:
        return None
    to_pool = sum(value for value, spk in paying if spk["hex"] == target)
    if not to_pool:
        return None
    _, largest = max(paying, key=lambda item: item[0])
    if largest["hex"] == target:
        return "", to_pool, ""
    return SOLO, sum(value for value, _ in paying), str(largest.get("address", ""))


async def reconcile_chain(
    store: StoreThread,
    rpc: BitcoinRpc,
    *,
    payout_script: bytes,
    pool_tag: bytes,
    max_blocks: int,
) -> list[str]:
    """Record the pool's blocks on the chain that the store is missing; their hashes."""
    tip = int(await rpc.call("getblockcount"))
    heights = [int(b["height"]) for b in store.aggregates.blocks.values()]
    scanned = await store.run(Store.get_meta, RECONCILED_KEY)
    first = max(
        1,
        tip - max_blocks + 1,
        (max(heights) + 1) if heights else 1,
        int(scanned) + 1 if scanned is not None else 1,
    )
    found: list[str] = []
    for height in range(first, tip + 1):
        block_hash = str(await rpc.call("getblockhash", height))
        if block_hash in store.aggregates.blocks:
            continue
        tx = await _coinbase(rpc, block_hash)
        found_block = classify_coinbase(tx, payout_script, pool_tag)
        if found_block is None:
            continue
        scheme, reward, address = found_block  # a SOLO block: the miner's, credited to nobody
        block = tx["_block"]
        rec = ShareRecord(
            time=float(block["time"]),
            worker="",
            address=address,
            scheme=scheme,
            difficulty=0.0,
            expected_blocks=0.0,
            credit_units=0,
            fee_units=0,
            block_hash=block_hash,
            block_height=height,
            block_reward_sat=reward,
            network_difficulty=bits_to_difficulty(int(str(block["bits"]), 16)),
        )
        if await store.record_block(rec):
            found.append(block_hash)
            log.error(
                "block_found_on_chain",
                hash=block_hash,
                height=height,
                reward_sat=reward,
                scheme=scheme or None,
                note="the pool's block was missing from the store: recorded now (pending)",
            )
    await store.run(Store.set_meta, RECONCILED_KEY, str(tip))
    log.info(
        "chain_reconciled",
        scanned_from=first,
        scanned_to=tip,
        scanned_blocks=max(0, tip - first + 1),
        recorded=len(found),
    )
    return found
