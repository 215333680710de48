"""Shared fixtures: one real regtest bitcoind per test session (fresh data dir, free ports)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from pool.node.binaries import Binaries, BitcoindNotFound, ensure
from pool.node.managed import ManagedNode, prepare_regtest_wallet
from tests.pg_harness import PG_PASSWORD, PgServer, running_server

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
    """A regtest bitcoind with the pool wallet loaded and 101 blocks mined (rewards mature).
    Every pool a test stops on it leaves its wait for blocks in bitcoind for up to
    ``node.block_wait_seconds`` (60 s: bitcoind ends it; some tests hold getblocktemplate
    long-polls, which wait until the next block): the session's node serves dozens of pools
    a minute, so it gets more RPC threads than a pool's node (pool/node/managed.py)."""
    node = ManagedNode(
        tmp_path_factory.mktemp("bitcoind"),
        binaries=bitcoind_binaries,
        extra_args=("-rpcthreads=128",),  # the last -rpcthreads on the command line wins
    )
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


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgServer]:
    """A real PostgreSQL (tests/pg_harness.py) for the whole session; skipped, with the
    reason, only where its binaries are not installed (``make test`` installs them)."""
    try:
        with running_server() as server:
            yield server
    except LookupError as exc:
        pytest.skip(str(exc))


@pytest.fixture
def pg_database(postgres: PgServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh database on the session's PostgreSQL; its DSN (no password: the password is in
    POOL_PG_PASSWORD, as the pool reads it). Dropped at the end."""
    name = postgres.create_database()
    monkeypatch.setenv("POOL_PG_PASSWORD", PG_PASSWORD)
    try:
        yield postgres.dsn(name)
    finally:
        postgres.drop_database(name)
