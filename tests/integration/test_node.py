"""The managed node and the RPC client against a real regtest bitcoind."""

from __future__ import annotations

import pytest

from pool.node.managed import ManagedNode, free_port
from pool.node.rpc import BitcoinRpc, RetryPolicy, RpcAuthError, RpcRefused, RpcUnavailable


async def test_managed_node_is_regtest_with_mature_coins(regtest_node: ManagedNode) -> None:
    assert regtest_node.rpc is not None
    info = await regtest_node.rpc.call("getblockchaininfo")
    assert info["chain"] == "regtest"
    assert info["blocks"] >= 101
    balance = await regtest_node.rpc.call("getbalance", wallet="pool")
    assert balance > 0  # 101 blocks: the first coinbase has matured


async def test_refused_call_is_typed_and_not_retried(regtest_node: ManagedNode) -> None:
    assert regtest_node.rpc is not None
    calls_before = regtest_node.rpc.errors["refused"]
    with pytest.raises(RpcRefused) as info:
        await regtest_node.rpc.call("getblockhash", 10**9)
    assert info.value.code == -8
    assert "out of range" in info.value.message.lower()
    assert regtest_node.rpc.errors["refused"] == calls_before + 1


async def test_unknown_method_is_refused(regtest_node: ManagedNode) -> None:
    assert regtest_node.rpc is not None
    with pytest.raises(RpcRefused) as info:
        await regtest_node.rpc.call("no_such_method")
    assert info.value.code == -32601


async def test_unreachable_names_url_without_credentials_and_retries() -> None:
    port = free_port()  # nothing listens here
    rpc = BitcoinRpc(
        f"http://alice:s3cret-pw@127.0.0.1:{port}/",
        retry=RetryPolicy(first_delay=0.05, max_delay=0.1, give_up_after=0.5),
    )
    try:
        with pytest.raises(RpcUnavailable) as info:
            await rpc.call("getblockcount")
    finally:
        await rpc.close()
    text = str(info.value)
    assert f"127.0.0.1:{port}" in text
    assert "s3cret-pw" not in text and "alice" not in text
    assert rpc.errors["unavailable"] >= 3  # it was retried with backoff before giving up


async def test_wrong_credentials_fail_fast_with_clear_message(regtest_node: ManagedNode) -> None:
    rpc = BitcoinRpc(regtest_node.rpc_url, user="__cookie__", password="wrong-secret")
    try:
        with pytest.raises(RpcAuthError) as info:
            await rpc.call("getblockcount")
    finally:
        await rpc.close()
    assert "rejected the RPC credentials" in str(info.value)
    assert "wrong-secret" not in str(info.value)
    assert rpc.errors["auth"] == 1  # not retried


async def test_cookie_auth_works(regtest_node: ManagedNode) -> None:
    rpc = BitcoinRpc(regtest_node.rpc_url, cookie_file=regtest_node.cookie_file)
    try:
        assert await rpc.call("getblockcount") >= 101
    finally:
        await rpc.close()
