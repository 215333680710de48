"""The watcher's wait for new blocks against nodes that lack what it prefers: answers a real
bitcoind cannot be made to give (a node without waitfornewblock, or without its current_tip
argument), so a scripted RPC stands in. The real node's side: tests/integration/test_node.py."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from structlog.testing import capture_logs

from pool.node import templates
from pool.node.rpc import RpcAuthError, RpcRefused, RpcTimeout
from pool.node.templates import RPC_METHOD_NOT_FOUND, RPC_MISC_ERROR, TemplateWatcher
from tests.integration.harness import wait_for

TIP = "aa" * 32
NEW = "bb" * 32


class ScriptedRpc:
    """Answers each method from a list of results (an exception is raised); the last one
    repeats after a pause. Records every call."""

    def __init__(self, script: dict[str, list[Any]]) -> None:
        self.script = script
        self.calls: list[tuple[str, tuple[Any, ...], float | None]] = []

    async def call(self, method: str, *params: Any, timeout: float | None = None, **_: Any) -> Any:
        self.calls.append((method, params, timeout))
        answers = self.script[method]
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if len(answers) == 1:
            await asyncio.sleep(0.01)
        if isinstance(answer, BaseException):
            raise answer
        return answer


async def run_until(watcher: TemplateWatcher, done: Any) -> None:
    task = asyncio.create_task(watcher._longpoll_loop())
    try:
        await wait_for(done, 10, "the watcher's waits", lambda: watcher.longpoll_timeouts)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def watcher_for(rpc: ScriptedRpc, **kwargs: Any) -> TemplateWatcher:
    async def on_template(*_: Any) -> None:
        return None

    watcher = TemplateWatcher(rpc, on_template, poll_interval=0.01, **kwargs)  # type: ignore[arg-type]
    watcher._best_hash = TIP
    return watcher


async def test_the_wait_is_ended_by_bitcoind_and_names_the_tip() -> None:
    """waitfornewblock(timeout in ms, the pool's tip); the client allows more than bitcoind's
    own timeout; a return on the same tip is a quiet end, a new hash wakes the watcher."""
    rpc = ScriptedRpc({"waitfornewblock": [{"hash": TIP}, {"hash": TIP}, {"hash": NEW}]})
    watcher = watcher_for(rpc, block_wait=2.5)
    await run_until(watcher, watcher._wake.is_set)
    method, params, timeout = rpc.calls[0]
    assert (method, params) == ("waitfornewblock", (2500, TIP))
    assert timeout is not None and timeout > 2.5
    assert watcher.longpoll_timeouts == 2
    assert watcher._wake_source == "longpoll"


async def test_a_node_without_current_tip_gets_the_timeout_alone() -> None:
    """A node whose waitfornewblock takes one argument says so with a misc error (its help):
    the watcher asks again with the timeout alone, from then on."""
    refused = RpcRefused("waitfornewblock", RPC_MISC_ERROR, "waitfornewblock ( timeout )")
    rpc = ScriptedRpc({"waitfornewblock": [refused, {"hash": TIP}, {"hash": NEW}]})
    watcher = watcher_for(rpc, block_wait=1.0)
    await run_until(watcher, watcher._wake.is_set)
    assert [params for _, params, _ in rpc.calls[:3]] == [(1000, TIP), (1000,), (1000,)]
    assert watcher.wait_method == "waitfornewblock"


async def test_a_node_without_waitfornewblock_gets_the_getblocktemplate_long_poll() -> None:
    """Method not found: the watcher falls back to the getblocktemplate long-poll (logged once:
    its waits outlive a stopped pool) and announces the block it returns on."""

    class Current:
        longpollid = "lp1"

    missing = RpcRefused("waitfornewblock", RPC_METHOD_NOT_FOUND, "Method not found")
    rpc = ScriptedRpc({"waitfornewblock": [missing], "getblocktemplate": [{"longpollid": "lp2"}]})
    watcher = watcher_for(rpc, longpoll_timeout=900.0)
    watcher.current = Current()  # type: ignore[assignment]
    with capture_logs() as logs:
        await run_until(watcher, watcher._wake.is_set)
    assert watcher.wait_method == "getblocktemplate"
    assert [m for m, _, _ in rpc.calls].count("waitfornewblock") == 1
    method, params, timeout = rpc.calls[1]
    assert method == "getblocktemplate" and params[0]["longpollid"] == "lp1"
    assert timeout == 900.0
    assert [e["event"] for e in logs].count("waitfornewblock_unavailable") == 1


async def failing_updates(watcher: TemplateWatcher, fetches: list[float]) -> None:
    """What the watcher's main loop does when every template fetch fails: each wake-up is
    followed by an attempt that leaves the template where it was."""
    while True:
        await watcher._wake.wait()
        watcher._wake.clear()
        fetches.append(asyncio.get_running_loop().time())
        watcher._updated.set()


async def test_a_block_the_template_does_not_follow_does_not_spin_the_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """bitcoind keeps answering at once with a tip the pool's template is not on (its template
    fetches failing, say): the waits are paced, not a busy loop."""
    monkeypatch.setattr(templates, "UPDATE_WAIT_SECONDS", 0.1)
    rpc = ScriptedRpc({"waitfornewblock": [{"hash": NEW}]})
    watcher = watcher_for(rpc)
    watcher.poll_interval = 0.2
    fetches: list[float] = []
    updates = asyncio.create_task(failing_updates(watcher, fetches))
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        await run_until(watcher, lambda: loop.time() - started > 1.0)
    finally:
        updates.cancel()
    assert 2 <= len(rpc.calls) <= 8  # ~one per 0.2 s, not hundreds
    assert len(fetches) >= 2  # each return announced


async def test_the_next_wait_starts_once_the_template_followed_the_block() -> None:
    """A wait that announced a block is followed by the next one only after the template
    fetch it caused: then it names the new tip (no wait returning at once on the old one)."""
    newer = "cc" * 32
    rpc = ScriptedRpc({"waitfornewblock": [{"hash": NEW}, {"hash": newer}, {"hash": newer}]})
    watcher = watcher_for(rpc)

    async def following() -> None:
        while True:
            await watcher._wake.wait()
            watcher._wake.clear()
            await asyncio.sleep(0.05)  # the template fetch
            watcher._best_hash = NEW if watcher._best_hash == TIP else newer
            watcher._updated.set()

    follower = asyncio.create_task(following())
    try:
        await run_until(watcher, lambda: watcher._best_hash == newer)
    finally:
        follower.cancel()
    assert [params for _, params, _ in rpc.calls[:2]] == [(60_000, TIP), (60_000, NEW)]


async def test_a_user_not_allowed_waitfornewblock_gets_the_getblocktemplate_long_poll() -> None:
    """``-rpcwhitelist`` without waitfornewblock: HTTP 403 for that method alone; the
    getblocktemplate long-poll takes over instead of a credentials error every second."""

    class Current:
        longpollid = "lp1"

    forbidden = RpcAuthError("rejected (HTTP 403)", 403)
    rpc = ScriptedRpc({"waitfornewblock": [forbidden], "getblocktemplate": [{"longpollid": "x"}]})
    watcher = watcher_for(rpc)
    watcher.current = Current()  # type: ignore[assignment]
    await run_until(watcher, watcher._wake.is_set)
    assert watcher.wait_method == "getblocktemplate"


async def test_same_tip_answered_early_is_paced_and_an_unanswered_wait_is_logged() -> None:
    """bitcoind shutting down answers a wait at once with the same tip: the next wait is
    paced by the poll interval. A wait bitcoind never answers (its own timeout passed long
    ago: a hung node) is a warning, not a quiet end."""
    rpc = ScriptedRpc({"waitfornewblock": [{"hash": TIP}]})
    watcher = watcher_for(rpc, block_wait=60.0)
    watcher.poll_interval = 0.2
    loop = asyncio.get_running_loop()
    started = loop.time()
    await run_until(watcher, lambda: loop.time() - started > 1.0)
    assert 2 <= len(rpc.calls) <= 8
    hung = ScriptedRpc({"waitfornewblock": [RpcTimeout("no answer"), {"hash": NEW}]})
    watcher = watcher_for(hung)
    with capture_logs() as logs:
        await run_until(watcher, watcher._wake.is_set)
    assert [e["event"] for e in logs].count("block_wait_unanswered") == 1
    assert watcher.longpoll_timeouts == 0
