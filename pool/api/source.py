"""What the API reads from the running pool: a structural type, so the API does not import the
app that wires it (the app imports the API; nothing imports back)."""

from __future__ import annotations

import asyncio
from typing import Protocol

from pool.bitcoin import Network
from pool.chain_sim import ChainSim
from pool.config import Config
from pool.ledger.ledger import Ledger
from pool.ledger.payouts import RoundResult
from pool.node.managed import ManagedNode
from pool.node.rpc import BitcoinRpc
from pool.node.submit import BlockSubmitter
from pool.server.server import StratumServer
from pool.server.shared_bans import SharedBans
from pool.tasks import Supervisor


class PoolSource(Protocol):
    config: Config
    network: Network | None
    rpc: BitcoinRpc | None
    server: StratumServer | None
    ledger: Ledger | None
    chain_sim: ChainSim | None
    tasks: Supervisor  # the supervised background tasks (/healthz shows them)
    node: ManagedNode | None  # the managed bitcoind (None: an external node)
    submitter: BlockSubmitter | None  # found blocks being submitted until settled
    shared_bans: SharedBans | None  # bans kept in step through a shared store (else None)

    @property
    def watcher_task(self) -> asyncio.Task[None] | None:
        """The template watcher's task (None before the start)."""

    async def run_payout_round(self) -> RoundResult:
        """Run one payout round now (the admin API's POST /api/admin/payout)."""
