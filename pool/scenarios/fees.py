"""Transaction fees in a scenario's blocks (``[run] fee_share``).

A regtest chain carries no transactions, so every template's coinbase value is the bare
subsidy and FPPS pays exactly what PPS pays. With ``fee_share`` > 0, after each block the
pool finds, one wallet transaction (the pool's wallet paying itself) is sent with a fee of
``fee_share`` x the subsidy: it waits in the mempool while the next block is mined and is in
the template made when that block arrives (bitcoind builds a fresh template at every new tip;
between tips it serves a cached one for 5 s, so a transaction sent now could not reach the
job being mined in time anyway). So from the second block on, every block and every job pays
about that fee, as on mainnet (economics.md: ~0.02 BTC of fees on a 3.125 BTC subsidy, a
share of 0.0064). The fee is set through the fee rate (sat/vB) for a one-input, two-output
segwit transaction (``TX_VSIZE``); the blocks' coinbase values, read by the ledger and the
scheme comparison, carry what was actually paid.

The wallet's own limit (``-maxtxfee``, 0.1 BTC by default) is raised on the scenario's node
(``NODE_ARGS``). A send that fails (an empty wallet) is logged and counted; the run goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from pool.bitcoin import REGTEST
from pool.node.rpc import BitcoinRpc

log = structlog.get_logger("pool.scenarios")

TX_VSIZE = 141  # vbytes of a 1-input, 2-output P2WPKH transaction
MAX_FEE_SHARE = 0.1  # of a 50 BTC subsidy: 5 BTC, the node's raised -maxtxfee
NODE_ARGS = ("-maxtxfee=5",)


class FeeTraffic:
    def __init__(self, rpc: BitcoinRpc, wallet: str, share: float) -> None:
        self.rpc = rpc
        self.wallet = wallet
        self.share = share
        self.address = ""
        self.sent = 0
        self.failed = 0
        self.fees_sat = 0  # asked for (the fee rate times TX_VSIZE)
        self._tasks: set[asyncio.Task[None]] = set()

    def on_block(self, height: int) -> None:
        """The pool found block ``height``: a transaction for the block after the next."""
        if self.share <= 0:
            return
        task = asyncio.get_running_loop().create_task(self._send(height + 2))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, height: int) -> None:
        fee_sat = int(self.share * REGTEST.block_subsidy(height))
        rate = round(fee_sat / TX_VSIZE, 3)  # sat/vB
        try:
            if not self.address:
                self.address = await self.rpc.call(
                    "getnewaddress", "", "bech32", wallet=self.wallet
                )
            await self.rpc.call(
                "sendtoaddress",
                self.address,
                1.0,
                "",
                "",
                False,
                True,
                None,
                "unset",
                False,
                rate,
                wallet=self.wallet,
            )
        except Exception as exc:
            self.failed += 1
            if self.failed == 1 or self.failed % 100 == 0:
                log.warning("scenario_fee_tx_failed", error=repr(exc), failed=self.failed)
            return
        self.sent += 1
        self.fees_sat += int(rate * TX_VSIZE)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def summary(self) -> dict[str, Any]:
        return {
            "fee_share": self.share,
            "transactions": self.sent,
            "failed": self.failed,
            "fees_btc_asked": self.fees_sat / 1e8,
        }
