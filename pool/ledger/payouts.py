"""Payouts through the bitcoind wallet: one ``sendmany`` per round, never sent twice.

A round:
1. settle earlier payouts (``reconcile``): a payout still ``pending`` after a crash is looked
   up in the wallet by its id, which every payout transaction carries as its wallet comment;
   found -> marked sent with that txid; not found -> it was never sent, so it is sent now.
2. every balance of at least ``ledger.payout_threshold_sat`` is due, in whole satoshis (the
   sub-satoshi rest stays on the balance); an address the chain cannot pay is skipped with a
   reason and keeps its balance;
3. not enough mature funds in the wallet (``getbalances`` trusted) -> the round waits and says
   how much is missing; nothing is recorded;
4. the payout is recorded ``pending`` with a fresh unique id BEFORE ``sendmany`` (the amounts
   move from each balance to its pending column in the same transaction);
5. ``sendmany`` with the id as comment; on success the payout is ``sent`` and the amounts
   leave the balances exactly; if bitcoind refuses one address, that address is taken out
   (its amount goes back) and the others are sent; a refusal of the whole transaction marks the
   payout failed and returns every amount; an unreachable bitcoind leaves it pending, for the
   next reconcile to settle from the wallet.
6. sent payouts with a confirmed transaction become ``confirmed``.
The pool pays the transaction fee: every address receives exactly its amount.

Every store read and write runs on the store's thread (``StoreThread``), never on the loop.
"""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import structlog

from pool.bitcoin import AddressError, Network, address_to_script
from pool.config import LedgerConfig
from pool.ledger.payout_lock import PayoutLock
from pool.ledger.pps import UNITS_PER_SAT, payable_sat
from pool.ledger.store import (
    PAYOUT_CONFIRMED,
    PAYOUT_FAILED,
    PAYOUT_PENDING,
    PAYOUT_SENT,
    Store,
)
from pool.ledger.store_thread import StoreThread
from pool.node.rpc import BitcoinRpc, RpcError, RpcRefused

log = structlog.get_logger("pool.ledger.payouts")

SAT_PER_BTC = 100_000_000
# Test-only fault injection: the process SIGKILLs itself at this named point of a payout, to
# prove crash recovery with a real crash (the timing cannot be caused from outside reliably).
CRASH_ENV = "STRATUM_POOL_CRASH_AT"
INVALID_ADDRESS = re.compile(r"Invalid (?:Bitcoin )?address:?\s*(\S+)", re.IGNORECASE)


def _crash_point(name: str) -> None:
    if os.environ.get(CRASH_ENV) == name:
        log.warning("crash_injected", point=name)
        os.kill(os.getpid(), signal.SIGKILL)


def btc_to_sat(value: Any) -> int:
    """bitcoind's BTC amount (a JSON number) -> satoshis, exactly."""
    return int((Decimal(str(value)) * SAT_PER_BTC).to_integral_value())


def sat_to_btc(sat: int) -> float:
    """Satoshis as the JSON number bitcoind parses back to exactly ``sat`` (8 decimals)."""
    return float(Decimal(sat) / SAT_PER_BTC)


@dataclass
class RoundResult:
    status: str  # paid | nothing_due | waiting_for_funds | failed | pending | not_runner
    payout_id: str | None = None
    txid: str | None = None
    paid: dict[str, int] = field(default_factory=dict)  # address -> sat
    skipped: dict[str, str] = field(default_factory=dict)  # address -> reason
    needed_sat: int = 0
    available_sat: int = 0
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "payout_id": self.payout_id,
            "txid": self.txid,
            "paid": self.paid,
            "skipped": self.skipped,
            "needed_sat": self.needed_sat,
            "available_sat": self.available_sat,
            "message": self.message,
        }


class Payouts:
    def __init__(
        self,
        store: StoreThread,
        rpc: BitcoinRpc,
        config: LedgerConfig,
        network: Network,
        wallet: str,
        runner: PayoutLock | None = None,
    ) -> None:
        """``runner``: the lock that makes this process the only payout runner (None: this
        process always is)."""
        self.runner = runner
        self.store = store
        self.rpc = rpc
        self.config = config
        self.network = network
        self.wallet = wallet

    async def _wallet(self, method: str, *params: Any) -> Any:
        return await self.rpc.call(method, *params, wallet=self.wallet)

    # -- after a crash --------------------------------------------------------------------------
    async def find_in_wallet(self, payout_id: str) -> str | None:
        """The txid of the wallet transaction whose comment is ``payout_id``, if any."""
        page, skip = 500, 0
        while True:
            txs = await self._wallet("listtransactions", "*", page, skip, True)
            for tx in txs:
                if tx.get("comment") == payout_id and tx.get("category") == "send":
                    return str(tx["txid"])
            if len(txs) < page:
                return None
            skip += page

    async def reconcile(self) -> list[str]:
        """Settle every payout left pending (e.g. by a crash). Returns the ids settled."""
        settled: list[str] = []
        if self.runner is not None and not self.runner.held:
            return settled  # the runner settles them
        for payout in await self.store.run(Store.payouts, (PAYOUT_PENDING,)):
            pid = payout["id"]
            txid = await self.find_in_wallet(pid)
            if txid is not None:
                await self.store.finish_payout(pid, PAYOUT_SENT, time.time(), txid=txid)
                log.info("payout_reconciled", payout_id=pid, txid=txid, found_in_wallet=True)
            else:
                log.info("payout_resumed", payout_id=pid, note="not in the wallet: sending now")
                await self._send(pid, {i["address"]: i["amount_sat"] for i in payout["items"]})
            settled.append(pid)
        return settled

    async def update_confirmations(self) -> None:
        for payout in await self.store.run(Store.payouts, (PAYOUT_SENT,)):
            try:
                tx = await self._wallet("gettransaction", payout["txid"])
            except RpcError as exc:
                log.warning("payout_check_failed", payout_id=payout["id"], error=str(exc))
                continue
            if int(tx.get("confirmations", 0)) >= 1:
                await self.store.finish_payout(payout["id"], PAYOUT_CONFIRMED, time.time())
                log.info("payout_confirmed", payout_id=payout["id"], txid=payout["txid"])

    # -- a round --------------------------------------------------------------------------------
    async def due(self) -> tuple[dict[str, int], dict[str, str]]:
        """Addresses due a payout (whole satoshis) and the ones skipped, with why (the balances
        as the store has them, read on its thread)."""
        threshold = self.config.payout_threshold_sat
        due: dict[str, int] = {}
        skipped: dict[str, str] = {}
        for bal in await self.store.run(Store.balances):
            amount = payable_sat(bal.balance_units)
            if amount < threshold or amount <= 0:
                continue
            try:
                address_to_script(bal.address, self.network)
            except AddressError as exc:
                skipped[bal.address] = f"cannot be paid on {self.network.name}: {exc}"
                continue
            if len(due) >= self.config.payout_max_recipients:
                skipped[bal.address] = (
                    "waits for the next round (ledger.payout_max_recipients = "
                    f"{self.config.payout_max_recipients})"
                )
                continue
            due[bal.address] = amount
        return due, skipped

    async def run_round(self) -> RoundResult:
        if self.runner is not None and not self.runner.held:
            return RoundResult("not_runner", message="another process of the pool runs the payouts")
        await self.reconcile()
        await self.update_confirmations()
        due, skipped = await self.due()
        for address, reason in skipped.items():
            log.warning("payout_skipped", address=address, reason=reason)
        if not due:
            return RoundResult("nothing_due", skipped=skipped, message="no balance is due")
        needed = sum(due.values())
        balances = await self._wallet("getbalances")
        available = btc_to_sat(balances["mine"]["trusted"])
        if available < needed + self.config.payout_fee_reserve_sat:
            message = (
                f"waiting for mature funds: {needed} sat due (+ "
                f"{self.config.payout_fee_reserve_sat} sat fee reserve), {available} sat "
                "spendable in the wallet"
            )
            log.warning(
                "payout_waiting_for_funds",
                needed_sat=needed,
                available_sat=available,
                recipients=len(due),
            )
            return RoundResult(
                "waiting_for_funds",
                skipped=skipped,
                needed_sat=needed,
                available_sat=available,
                message=message,
            )
        payout_id = uuid.uuid4().hex
        await self.store.create_payout(payout_id, due.items(), time.time())
        log.info("payout_recorded", payout_id=payout_id, total_sat=needed, recipients=len(due))
        result = await self._send(payout_id, due)
        result.skipped.update(skipped)
        result.available_sat = available
        return result

    async def _send(self, payout_id: str, amounts: dict[str, int]) -> RoundResult:
        """sendmany for a recorded pending payout; bad addresses are taken out one by one."""
        amounts = dict(amounts)
        skipped: dict[str, str] = {}
        _crash_point("payout_before_send")
        while amounts:
            if self.runner is not None and not await self.runner.confirm():
                log.warning("payout_left_pending", payout_id=payout_id, note="lost the lock")
                return RoundResult("pending", payout_id, message="no longer the payout runner")
            params: list[Any] = [
                "",
                {address: sat_to_btc(sat) for address, sat in amounts.items()},
                self.config.payout_min_confirmations,
                payout_id,
            ]
            if self.config.payout_fee_rate_sat_vb > 0:
                params += [[], True, None, "unset", self.config.payout_fee_rate_sat_vb]
            try:
                txid = str(await self._wallet("sendmany", *params))
            except RpcRefused as exc:
                bad = self._bad_address(exc, amounts)
                if bad is not None:
                    skipped[bad] = exc.message
                    amounts.pop(bad)
                    await self.store.remove_payout_item(payout_id, bad, time.time(), exc.message)
                    log.warning(
                        "payout_address_refused",
                        payout_id=payout_id,
                        address=bad,
                        reason=exc.message,
                    )
                    continue
                await self.store.finish_payout(
                    payout_id, PAYOUT_FAILED, time.time(), error=exc.message
                )
                log.error("payout_failed", payout_id=payout_id, reason=exc.message)
                return RoundResult("failed", payout_id, skipped=skipped, message=exc.message)
            except RpcError as exc:
                log.error(
                    "payout_unknown",
                    payout_id=payout_id,
                    error=str(exc),
                    note="left pending: the next round finds it in the wallet or sends it",
                )
                return RoundResult("pending", payout_id, skipped=skipped, message=str(exc))
            _crash_point("payout_after_send")
            await self.store.finish_payout(payout_id, PAYOUT_SENT, time.time(), txid=txid)
            log.info(
                "payout_sent",
                payout_id=payout_id,
                txid=txid,
                total_sat=sum(amounts.values()),
                recipients=len(amounts),
            )
            return RoundResult("paid", payout_id, txid=txid, paid=amounts, skipped=skipped)
        await self.store.finish_payout(
            payout_id, PAYOUT_FAILED, time.time(), error="no payable address"
        )
        return RoundResult("failed", payout_id, skipped=skipped, message="no payable address")

    @staticmethod
    def _bad_address(exc: RpcRefused, amounts: dict[str, int]) -> str | None:
        match = INVALID_ADDRESS.search(exc.message)
        if match and match.group(1) in amounts:
            return match.group(1)
        for address in amounts:  # bitcoind names the address in other refusals too
            if address in exc.message:
                return address
        return None


def units_to_sat_exact(units: int) -> int:
    if units % UNITS_PER_SAT:
        raise ValueError("not a whole number of satoshis")
    return units // UNITS_PER_SAT
