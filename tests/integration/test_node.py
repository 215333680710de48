"""The managed node and the RPC client against a real regtest bitcoind."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from pool.app import PoolApp, StartupError
from pool.config import ApiConfig, Config, NodeConfig, PoolConfig, PortConfig, StratumConfig
from pool.jobs import Template
from pool.node.binaries import Binaries
from pool.node.lifecycle import find_leftovers
from pool.node.managed import ManagedNode, free_port
from pool.node.rpc import (
    BitcoinRpc,
    RetryPolicy,
    RpcAuthError,
    RpcError,
    RpcRefused,
    RpcTimeout,
    RpcUnavailable,
)
from pool.node.templates import TemplateWatcher
from tests.integration.harness import until, wait_for

NOBODY = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"  # a regtest address no wallet holds


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


async def test_quiet_longpoll_is_neither_logged_nor_counted_as_an_error(
    regtest_node: ManagedNode,
) -> None:
    """A long-poll that times out on a quiet chain is the normal end of a wait: asked again,
    not logged as bitcoind_unavailable, not counted among the RPC errors."""
    rpc = BitcoinRpc(regtest_node.rpc_url, cookie_file=regtest_node.cookie_file)
    templates: list[bool] = []

    async def on_template(template: Template, new_block: bool) -> None:
        templates.append(new_block)

    watcher = TemplateWatcher(
        rpc, on_template, refresh_interval=100.0, poll_interval=0.2, block_wait=0.5
    )
    with capture_logs() as logs:
        task = asyncio.create_task(watcher.run())
        try:
            await wait_for(lambda: watcher.longpoll_timeouts >= 3, 60, "3 quiet long-polls")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await rpc.close()
    assert templates and templates[0] is True  # the watcher did run against the node
    assert watcher.wait_method == "waitfornewblock"
    assert rpc.errors["unavailable"] == 0
    assert not [e for e in logs if e["event"] == "bitcoind_unavailable"]


async def test_a_stopped_pools_wait_for_blocks_leaves_bitcoind_by_itself(
    bitcoind_binaries: Binaries, tmp_path: Path
) -> None:
    """The long-poll is a wait bitcoind ends itself (waitfornewblock, ``block_wait``): a pool
    that stops mid-wait (its HTTP connection gone) leaves no RPC thread behind for long, unlike
    the getblocktemplate long-poll (next test). A node of its own: no other test's waits."""
    node = ManagedNode(tmp_path / "node", binaries=bitcoind_binaries)
    node_rpc = await node.start()
    rpc = BitcoinRpc(node.rpc_url, cookie_file=node.cookie_file)
    state: dict[str, list[str]] = {}

    async def active() -> list[str]:
        info = await node_rpc.call("getrpcinfo", retry=False, timeout=10.0)
        state["active"] = [c["method"] for c in info["active_commands"]]
        return state["active"]

    async def waiting() -> bool:
        return "waitfornewblock" in await active()

    async def left() -> bool:
        return "waitfornewblock" not in await active()

    async def on_template(template: Template, new_block: bool) -> None:
        return None

    watcher = TemplateWatcher(
        rpc, on_template, refresh_interval=100.0, poll_interval=100.0, block_wait=3.0
    )
    task = asyncio.create_task(watcher.run())
    try:
        await until(waiting, "the pool's wait inside bitcoind", state, 30)
        task.cancel()  # the pool stops mid-wait
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await rpc.close()
        await until(left, "bitcoind ending the wait its client left", state, 30)
    finally:
        task.cancel()
        await rpc.close()
        await node.stop()


async def test_a_block_between_two_waits_is_announced_by_the_next_wait(
    bitcoind_binaries: Binaries, tmp_path: Path
) -> None:
    """The wait names the tip the pool mines on (waitfornewblock's current_tip): a block found
    while no wait was running is announced at once by the next one, not after ``block_wait``
    (100 s here, beyond the test's patience) or by another source (poll and refresh are off)."""
    node = ManagedNode(tmp_path / "node", binaries=bitcoind_binaries)
    node_rpc = await node.start()
    rpc = BitcoinRpc(node.rpc_url, cookie_file=node.cookie_file)

    async def on_template(template: Template, new_block: bool) -> None:
        return None

    watcher = TemplateWatcher(
        rpc, on_template, refresh_interval=100.0, poll_interval=100.0, block_wait=100.0
    )
    task: asyncio.Task[None] | None = None
    try:
        await watcher.update(force=True)  # the tip the pool mines on
        await node_rpc.call("generatetoaddress", 1, NOBODY)
        assert not watcher._wake.is_set()
        task = asyncio.create_task(watcher._longpoll_loop())
        await wait_for(lambda: watcher._wake.is_set(), 30, "the next wait announcing the block")
        assert watcher._wake_source == "longpoll"
        assert watcher.longpoll_timeouts == 0
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await rpc.close()
        await node.stop()


async def test_every_block_in_a_row_is_announced_by_the_wait(
    bitcoind_binaries: Binaries, tmp_path: Path
) -> None:
    """Block after block, each reaches the template through the wait alone (no ZMQ, a poll
    slower than the test): the wait after an announcement names the new tip."""
    node = ManagedNode(tmp_path / "node", binaries=bitcoind_binaries)
    node_rpc = await node.start()
    rpc = BitcoinRpc(node.rpc_url, cookie_file=node.cookie_file)
    heights: list[int] = []

    async def on_template(template: Template, new_block: bool) -> None:
        if new_block:
            heights.append(template.height)

    watcher = TemplateWatcher(
        rpc, on_template, refresh_interval=100.0, poll_interval=100.0, block_wait=100.0
    )
    task = asyncio.create_task(watcher.run())
    try:
        await wait_for(lambda: heights == [1], 30, "the first template", lambda: heights)
        for height in range(2, 6):
            await node_rpc.call("generatetoaddress", 1, NOBODY)
            await wait_for(lambda h=height: heights[-1] == h, 30, f"{height}", lambda: heights)
        assert heights == [1, 2, 3, 4, 5]
        assert watcher.new_blocks["longpoll"] == 4
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await rpc.close()
        await node.stop()


async def test_long_polls_given_up_on_do_not_starve_the_managed_nodes_rpc(
    regtest_node: ManagedNode,
) -> None:
    """bitcoind keeps serving a long-poll whose client gave up (a stopped pool, a client-side
    timeout) until the next block or mempool change, on one of its RPC threads. Six of them
    (more than bitcoind's default of 4 threads) must leave the managed node answering."""
    rpc = regtest_node.rpc
    assert rpc is not None
    template = await rpc.call("getblocktemplate", {"rules": ["segwit"]})
    for _ in range(6):
        with pytest.raises(RpcTimeout):
            await rpc.call(
                "getblocktemplate",
                {"rules": ["segwit"], "longpollid": template["longpollid"]},
                retry=False,
                timeout=0.3,
                quiet_timeout=True,
            )
    assert await rpc.call("getblockcount", retry=False, timeout=20.0) >= 0


async def test_managed_node_killed_is_restarted_and_the_client_keeps_working(
    bitcoind_binaries: Binaries, tmp_path: Path
) -> None:
    """SIGKILL the node: the supervisor starts it again (same ports, new cookie) and the same
    RPC client works against it; a submission waiting for it is woken when it is back."""
    node = ManagedNode(tmp_path / "node", binaries=bitcoind_binaries, restart_backoff=(0.2, 1.0))
    rpc = await node.start()
    try:
        restarted: list[int] = []
        node.restart_listeners.append(lambda: restarted.append(node.restarts))
        node.supervise()
        cookie_before = node.cookie_file.read_text()
        old = node.process
        assert old is not None
        old.send_signal(signal.SIGKILL)
        with pytest.raises(RpcError):
            await rpc.call("getblockcount", retry=False, timeout=5.0)
        assert not rpc.available
        await wait_for(lambda: node.restarts == 1, 60, "the node restarted")
        assert restarted == [1]
        assert node.process is not None and node.process.pid != old.pid
        assert await rpc.wait_available(0.0)  # the supervisor's ready check reached it
        assert await rpc.call("getblockcount", retry=False) == 0
        assert node.cookie_file.read_text() != cookie_before
    finally:
        await node.stop()
    assert node.process is None


async def test_leftover_node_on_the_data_dir_is_stopped_before_the_start(
    bitcoind_binaries: Binaries, tmp_path: Path
) -> None:
    """A bitcoind left running on the data dir (as after a crash without the parent-death
    signal) holds its lock: the next start stops it over RPC, then starts its own."""
    leftover = ManagedNode(tmp_path / "node", binaries=bitcoind_binaries, die_with_parent=False)
    await leftover.start()
    proc = leftover.process
    assert proc is not None
    leftover.process = None  # forget it, as a crashed pool would
    try:
        node = ManagedNode(tmp_path / "node", binaries=bitcoind_binaries)
        with capture_logs() as logs:
            rpc = await node.start()
        try:
            assert node.leftovers_stopped == 1
            assert proc.wait(30) == 0  # stopped cleanly, over RPC
            events = [e for e in logs if e["event"].startswith("bitcoind_leftover")]
            assert [e["event"] for e in events] == [
                "bitcoind_leftover_found",
                "bitcoind_leftover_stopped",
            ]
            assert events[0]["pid"] == proc.pid and events[1]["how"] == "rpc_stop"
            assert await rpc.call("getblockcount") == 0
        finally:
            await node.stop()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if leftover.rpc is not None:
            await leftover.rpc.close()


@pytest.mark.parametrize("failure", ["payout_address", "stratum_port"])
async def test_start_failing_after_the_node_started_stops_the_node(
    failure: str, tmp_path: Path
) -> None:
    """The managed node is started first; whatever fails after it, the shutdown stops it (a
    busy Stratum port is refused even earlier, before the node is started)."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1] if failure == "stratum_port" else 0
    payout = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4" if failure == "payout_address" else ""
    config = Config(
        node=NodeConfig(mode="managed"),
        pool=PoolConfig(payout_address=payout, data_dir=str(tmp_path / "pool")),
        stratum=StratumConfig(ports=(PortConfig(port=port),)),
        api=ApiConfig(enabled=False),
    )
    app = PoolApp(config)
    try:
        with pytest.raises((StartupError, OSError)):
            await app.run_until_signalled()
    finally:
        busy.close()
    if failure == "stratum_port":
        # a busy port is found by the start-up checks, before the node is started at all
        assert app.node is None
    else:
        assert app.node is not None  # it did start...
        assert app.node.process is None  # ...and was stopped
    assert find_leftovers(tmp_path / "pool" / "bitcoind") == []
