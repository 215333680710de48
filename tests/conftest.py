"""Shared fixtures: one real regtest bitcoind per test session (fresh data dir, free ports)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from pool.node.binaries import Binaries, BitcoindNotFound, ensure
from pool.node.managed import ManagedNode, prepare_regtest_wallet

POOL_WALLET = "pool"


@pytest.fixture(scope="session")
def bitcoind_binaries() -> Binaries:
    try:
        return ensure()
    except BitcoindNotFound as exc:  # make test fetches it first; this is a real failure
        pytest.fail(f"no bitcoind for integration tests: {exc}")


@pytest_asyncio.fixture(scope="session")
async def regtest_node(
    bitcoind_binaries: Binaries, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ManagedNode]:
    """A regtest bitcoind with the pool wallet loaded and 101 blocks mined (rewards mature)."""
    node = ManagedNode(tmp_path_factory.mktemp("bitcoind"), binaries=bitcoind_binaries)
    await node.start()
    try:
        await prepare_regtest_wallet(node, POOL_WALLET)
        yield node
    finally:
        await node.stop()


@pytest_asyncio.fixture(scope="module")
async def fresh_node(
    bitcoind_binaries: Binaries, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ManagedNode]:
    """A second regtest bitcoind at height 0 (for tests that need the first heights)."""
    node = ManagedNode(tmp_path_factory.mktemp("bitcoind-fresh"), binaries=bitcoind_binaries)
    await node.start()
    try:
        yield node
    finally:
        await node.stop()
