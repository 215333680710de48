"""Found blocks settled from the chain (``Ledger.check_blocks``): confirmed, orphaned or
never accepted (rejected)."""

from __future__ import annotations

import structlog

from pool.ledger.aggregates import CONFIRMED, ORPHANED, PENDING, REJECTED
from pool.ledger.ledger_schemes import refresh_pplns_balances
from pool.ledger.pps import Scheme
from pool.ledger.store import Store
from pool.ledger.store_thread import StoreThread
from pool.node.rpc import BitcoinRpc, RpcError, RpcRefused

log = structlog.get_logger("pool.ledger")


async def check_blocks(store: StoreThread, rpc: BitcoinRpc, maturity: int, now: float) -> list[str]:
    """Settle found blocks from the chain: confirmed after ``block_maturity`` confirmations,
    orphaned when the chain holds another block at that height (confirmations -1).
    A block bitcoind does not know was never accepted: it stays pending while it may
    still be (its submission is retried until the chain moves past its height), then
    becomes rejected; never orphaned (an orphan is a block the node had, on a branch it
    left). Rejected blocks are never looked at. Returns a list of changes."""
    changes: list[str] = []
    tip: int | None = None
    for block in await store.run(Store.blocks, (PENDING, ORPHANED)):
        try:
            header = await rpc.call("getblockheader", block["hash"], True)
            confirmations = int(header["confirmations"])
            unknown = False
        except RpcRefused:  # bitcoind does not know it
            confirmations, unknown = 0, True
            try:
                tip = int(await rpc.call("getblockcount")) if tip is None else tip
            except RpcError as exc:
                log.warning("block_check_failed", hash=block["hash"], error=str(exc))
                return changes
        except RpcError as exc:
            log.warning("block_check_failed", hash=block["hash"], error=str(exc))
            return changes
        if unknown:
            assert tip is not None
            status = REJECTED if tip > int(block["height"]) else PENDING
            if status == REJECTED:
                log.warning(
                    "block_never_accepted",
                    hash=block["hash"],
                    height=block["height"],
                    tip=tip,
                    note="bitcoind never had it and the chain is past its height",
                )
        elif confirmations < 0:
            status = ORPHANED
        elif confirmations >= maturity:
            status = CONFIRMED
        else:
            status = PENDING
        if status == block["status"] and confirmations == block["confirmations"]:
            continue
        # only if nothing else (a rejection) changed the block meanwhile
        if not await store.set_block_status(
            block["hash"], status, confirmations, now, expect=block["status"]
        ):
            continue
        if status == CONFIRMED and block.get("scheme") == Scheme.PPLNS:
            await refresh_pplns_balances(store, store.aggregates, block["hash"])
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
