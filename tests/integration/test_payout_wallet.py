"""Where block rewards go and which wallet pays PPS, with an external regtest node (as in the
compose stack): no payout address -> the pool's own wallet on that node; an address the wallet
does not own -> a start-up warning, since payouts then depend on funds put there by hand."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from pool.config import NodeConfig
from pool.node.managed import ManagedNode
from tests.integration.harness import pool_config, start_pool, wallet_address

pytestmark = pytest.mark.integration


async def test_external_regtest_without_payout_address_uses_the_pool_wallet(
    regtest_node: ManagedNode, tmp_path: Path
) -> None:
    rpc = regtest_node.rpc
    assert rpc is not None
    base = pool_config(regtest_node, tmp_path, "")
    wallet = "pool-external"  # not created by anything else: the pool must create it
    config = dataclasses.replace(base, node=dataclasses.replace(base.node, wallet=wallet))
    assert wallet not in await rpc.call("listwallets")
    with capture_logs() as logs:
        app = await start_pool(config)
    try:
        assert app.payout_address is not None and app.payout_address.startswith("bcrt1")
        info = await rpc.call("getaddressinfo", app.payout_address, wallet=wallet)
        assert info["ismine"] is True
        assert not [
            e for e in logs if e["event"].startswith("payout_") and e["log_level"] == "warning"
        ]
    finally:
        await app.stop()


async def test_payout_address_outside_the_wallet_is_a_startup_warning(
    regtest_node: ManagedNode, tmp_path: Path
) -> None:
    await regtest_node.ensure_wallet("someone-else")
    foreign = await wallet_address(regtest_node, "someone-else")
    config = pool_config(regtest_node, tmp_path, foreign)
    assert isinstance(config.node, NodeConfig) and config.node.wallet == "pool"
    with capture_logs() as logs:
        app = await start_pool(config)
        await app.stop()
    [warning] = [e for e in logs if e["event"] == "payout_address_not_in_wallet"]
    assert warning["address"] == foreign and warning["wallet"] == "pool"
    assert warning["log_level"] == "warning"
