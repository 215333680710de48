"""A block submission never holds up a miner's answer: the share is journaled and answered at
once, the block is submitted in the background. Caused for real: the test's own bitcoind is
stopped (SIGSTOP) so that its submitblock hangs, and resumed (SIGCONT) afterwards."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from pool.app import PoolApp
from pool.ledger.aggregates import PENDING
from pool.node.binaries import Binaries
from pool.node.managed import ManagedNode
from tests.integration.harness import (
    RawClient,
    own_node,
    pool_config,
    solve,
    start_pool,
    wait_for,
    wallet_address,
)

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(scope="module")
async def node(
    bitcoind_binaries: Binaries, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ManagedNode]:
    async with own_node(bitcoind_binaries, tmp_path_factory.mktemp("bitcoind-stopped")) as node:
        yield node


async def test_the_finder_is_answered_while_bitcoind_cannot_take_the_block(
    node: ManagedNode, tmp_path_factory: pytest.TempPathFactory
) -> None:
    address = await wallet_address(node)
    app: PoolApp = await start_pool(pool_config(node, tmp_path_factory.mktemp("pool"), address))
    assert app.server is not None and app.ledger is not None and node.process is not None
    pid = node.process.pid
    client = await RawClient.connect(app.server.bound_ports[0])
    stopped = False
    try:
        worker = f"{address}.finder"
        difficulty, notify = await client.handshake(worker)
        share = solve(notify["params"], client.extranonce1, b"\x00\x00\x00\x01", difficulty)
        # On plain regtest every share at this difficulty is a block.
        os.kill(pid, signal.SIGSTOP)
        stopped = True
        client.send(10, "mining.submit", share.params(worker))
        answer = await client.response(10, timeout=60)
        assert answer["result"] is True, answer
        # Answered while the block was still with a stopped bitcoind: no outcome yet.
        assert app.server.stats.blocks == []
        assert app.server.stats.workers[worker].accepted == 1
        os.kill(pid, signal.SIGCONT)
        stopped = False
        await wait_for(lambda: bool(app.server and app.server.stats.blocks), 120, "the outcome")
        block = app.server.stats.blocks[0]
        assert block.status == "accepted", block
        assert block.worker == worker
        assert node.rpc is not None
        header = await node.rpc.call("getblockheader", block.hash)
        assert header["confirmations"] >= 1
        # The ledger has the block (journaled with its share, before the submission ended).
        await wait_for(
            lambda: app.ledger is not None and block.hash in app.ledger.aggregates.blocks,
            30,
            "the ledger's block",
        )
        assert app.ledger.aggregates.blocks[block.hash]["status"] == PENDING
    finally:
        if stopped:
            os.kill(pid, signal.SIGCONT)
        await client.close()
        await app.stop()
