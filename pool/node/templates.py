"""The new-block watcher: bitcoind's ZMQ hashblock feed (when configured), with a wait
inside bitcoind (the "long-poll") and a periodic best-block poll kept as fallbacks.

The long-poll is ``waitfornewblock`` with a timeout bitcoind enforces itself
(``block_wait``): a wait whose pool has gone (stopped, crashed) frees its bitcoind RPC thread
by then. The getblocktemplate long-poll, used only on a node without ``waitfornewblock``,
has no such end: bitcoind serves it until the next block or mempool change even after its
client left, so a pool restarted many times on a quiet chain would use up the node's RPC
threads with it.

It calls ``on_template(template, new_block)`` whenever there is something to send to miners:
``new_block=True`` as soon as the previous block changed (miners must drop their work), and
``new_block=False`` every ``refresh_interval`` seconds with a fresh template (new mempool
transactions; also keeps miners that stop after 120 s without a new job id hashing).

Each new block is put down to the source that announced it first (``SOURCES``): the
``new_block`` log line carries it as ``source`` and ``new_blocks`` counts blocks by source.
The others, arriving after, find the template already current and do nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import structlog

from pool.jobs import Template, TemplateError
from pool.node.rpc import BitcoinRpc, RpcAuthError, RpcError, RpcRefused, RpcTimeout
from pool.node.zmq_feed import HashBlockFeed

log = structlog.get_logger("pool.node.templates")
ZMQ_RETRY_SECONDS = 5.0  # a failed ZMQ feed is started again after this
# waitfornewblock's own timeout ends a quiet wait: the client allows this much more
BLOCK_WAIT_GRACE_SECONDS = 30.0
# after announcing a block, the next wait starts once the template follows (or after this)
UPDATE_WAIT_SECONDS = 10.0
RPC_METHOD_NOT_FOUND = -32601
RPC_MISC_ERROR = -1  # what a node without waitfornewblock's current_tip says to two arguments

GBT_RULES = {"rules": ["segwit"]}

OnTemplate = Callable[[Template, bool], Awaitable[None]]

# What announced a new block: bitcoind's ZMQ feed, the long-poll (waitfornewblock), the
# best-block poll, the pool's own accepted block, the managed node's restart, the periodic
# refresh, or the pool's start.
SOURCES = ("zmq", "longpoll", "poll", "submit", "restart", "refresh", "start")


def _no_waitfornewblock(exc: RpcError) -> bool:
    """The node has no waitfornewblock, or its ``-rpcwhitelist`` keeps it from the pool."""
    if isinstance(exc, RpcRefused):
        return exc.code == RPC_METHOD_NOT_FOUND
    return isinstance(exc, RpcAuthError) and exc.status == 403


def _usage_answer(exc: RpcError) -> bool:
    """What a node whose waitfornewblock takes no current_tip says to two arguments."""
    return (
        isinstance(exc, RpcRefused) and exc.code == RPC_MISC_ERROR and "current_tip" not in str(exc)
    )


class TemplateWatcher:
    def __init__(
        self,
        rpc: BitcoinRpc,
        on_template: OnTemplate,
        *,
        refresh_interval: float = 30.0,
        poll_interval: float = 1.0,
        longpoll: bool = True,
        longpoll_timeout: float = 3600.0,
        block_wait: float = 60.0,
        zmq_endpoint: str = "",
        zmq_heartbeat: float = 10.0,
    ) -> None:
        self.rpc = rpc
        self.on_template = on_template
        self.refresh_interval = refresh_interval
        self.poll_interval = poll_interval
        self.longpoll = longpoll
        self.longpoll_timeout = longpoll_timeout
        self.block_wait = block_wait
        self.wait_method = "waitfornewblock"  # or "getblocktemplate" (a node without it)
        self._current_tip_arg = True  # waitfornewblock takes current_tip (newer nodes)
        self.current: Template | None = None
        self._wake = asyncio.Event()
        self._wake_source = "refresh"  # the first source that woke the watcher since its update
        self._updated = asyncio.Event()  # set after each template fetch, done or failed
        self._best_hash: str | None = None
        self.longpoll_timeouts = 0  # waits that ended quietly (no new block within the timeout)
        self.new_blocks = dict.fromkeys(SOURCES, 0)  # new blocks, by the source that announced
        self.zmq = (
            HashBlockFeed(zmq_endpoint, self._zmq_block, zmq_heartbeat) if zmq_endpoint else None
        )

    async def fetch(self) -> Template:
        gbt = await self.rpc.call("getblocktemplate", GBT_RULES)
        return Template.from_rpc(gbt)

    async def update(self, *, force: bool = False, source: str = "start") -> bool:
        """Fetch a template; publish it if the previous block changed or ``force``.
        ``source`` says what asked (``SOURCES``). Returns True if it was a new block."""
        template = await self.fetch()
        new_block = self.current is None or template.prev_hash != self.current.prev_hash
        if new_block or force:
            self.current = template
            self._best_hash = template.prev_hash_hex
            if new_block:
                self.new_blocks[source] += 1
                log.info(
                    "new_block", height=template.height, prev=template.prev_hash_hex, source=source
                )
            await self.on_template(template, new_block)
        return new_block

    def poke(self, source: str = "submit") -> None:
        """Ask for a new template at once (e.g. after the pool itself found a block)."""
        if not self._wake.is_set():
            self._wake_source = source
        self._wake.set()

    def _zmq_block(self, block_hash: str) -> None:
        """The ZMQ feed heard of a block: a new template unless it is already the one mined on
        (a long-poll or poll got there first)."""
        if block_hash != self._best_hash:
            self.poke("zmq")

    async def _zmq_loop(self) -> None:
        """The ZMQ feed, started again (after ZMQ_RETRY_SECONDS) if it ever fails: new blocks
        keep coming through the long-poll and the poll meanwhile."""
        assert self.zmq is not None
        while True:
            try:
                await self.zmq.run()
            except Exception as exc:
                log.exception("zmq_feed_failed", error=repr(exc), retry_in=ZMQ_RETRY_SECONDS)
            await asyncio.sleep(ZMQ_RETRY_SECONDS)

    async def run(self) -> None:
        last_refresh = time.monotonic()
        # first: the long-poll starts from this template's longpollid, not after a poll interval
        await self._safe_update(force=True, source="start")
        tasks = [asyncio.create_task(self._poll_loop(), name="gbt-poll")]
        if self.zmq is not None:
            tasks.append(asyncio.create_task(self._zmq_loop(), name="zmq-hashblock"))
        if self.longpoll:
            tasks.append(asyncio.create_task(self._longpoll_loop(), name="block-wait"))
        try:
            while True:
                wait = max(0.0, self.refresh_interval - (time.monotonic() - last_refresh))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):  # cancels cleanly, unlike 3.11 wait_for
                        await self._wake.wait()
                source = self._wake_source if self._wake.is_set() else "refresh"
                self._wake.clear()
                due = time.monotonic() - last_refresh >= self.refresh_interval
                new_block = await self._safe_update(force=due, source=source)
                if due or new_block:
                    last_refresh = time.monotonic()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _safe_update(self, *, force: bool, source: str) -> bool:
        try:
            return await self.update(force=force, source=source)
        except (RpcError, TemplateError) as exc:
            log.warning("template_fetch_failed", error=str(exc))
            return False
        finally:
            self._updated.set()

    async def _poll_loop(self) -> None:
        """Fallback: compare the best block hash every ``poll_interval`` seconds."""
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                best = await self.rpc.call("getbestblockhash", retry=False, timeout=10.0)
            except RpcError:
                continue
            if self._best_hash is not None and best != self._best_hash:
                self.poke("poll")

    async def _longpoll_loop(self) -> None:
        """Waits inside bitcoind for the next block: ``waitfornewblock`` ended by bitcoind
        after ``block_wait`` (and asked again), or, on a node without it, the
        getblocktemplate long-poll."""
        if await self._wait_loop():
            return
        self.wait_method = "getblocktemplate"
        log.warning(
            "waitfornewblock_unavailable",
            fallback="getblocktemplate long-poll",
            note="a wait whose pool stopped keeps one bitcoind RPC thread until the next block",
        )
        await self._gbt_longpoll_loop()

    async def _wait_loop(self) -> bool:
        """``waitfornewblock`` until cancelled; False at once if the node does not have it
        (or a ``-rpcwhitelist`` keeps it from the pool). Passing the tip the pool mines on
        (``current_tip``) also catches a block that came between two waits."""
        announced: str | None = None  # the tip the last wait poked for
        loop = asyncio.get_running_loop()
        while True:
            tip = self._best_hash
            params: list[object] = [max(1, round(self.block_wait * 1000))]
            if self._current_tip_arg and tip is not None:
                params.append(tip)
            asked = loop.time()
            try:
                result = await self.rpc.call(
                    "waitfornewblock",
                    *params,
                    retry=False,
                    timeout=self.block_wait + BLOCK_WAIT_GRACE_SECONDS,
                    quiet_timeout=True,
                )
            except RpcTimeout:
                # bitcoind ends a quiet wait itself: no answer by far means a hung or
                # saturated node (the abandoned call still holds one of its threads)
                log.warning("block_wait_unanswered", timeout=self.block_wait)
                await asyncio.sleep(self.poll_interval)
                continue
            except RpcError as exc:
                if _no_waitfornewblock(exc):
                    return False
                if len(params) > 1 and _usage_answer(exc):  # it takes one argument here
                    self._current_tip_arg = False
                    continue
                await asyncio.sleep(self.poll_interval)
                continue
            block_hash = result.get("hash") if isinstance(result, dict) else None
            if not isinstance(block_hash, str):
                await asyncio.sleep(self.poll_interval)
                continue
            if block_hash == tip:  # no new block: bitcoind's timeout, or its shutdown
                self.longpoll_timeouts += 1
                if loop.time() - asked < self.block_wait / 2:  # early: not a busy loop
                    await asyncio.sleep(self.poll_interval)
                continue
            if block_hash == self._best_hash:  # another source announced it first
                continue
            if block_hash == announced:
                # announced already and the template still says otherwise (a template fetch
                # failing, say): not a busy loop of waits that return at once
                await asyncio.sleep(min(self.poll_interval, 1.0))
                if block_hash == self._best_hash:
                    continue
            announced = block_hash
            await self._announce(tip)

    async def _announce(self, tip: str | None) -> None:
        """A new block: wake the watcher, then return once its template has left ``tip``
        (a fetch that began before the block does not count) or after UPDATE_WAIT_SECONDS
        (template fetches failing: the next wait would return at once, so this paces it)."""
        self._updated.clear()
        self.poke("longpoll")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(UPDATE_WAIT_SECONDS):
                while self._best_hash == tip:
                    await self._updated.wait()
                    self._updated.clear()

    async def _gbt_longpoll_loop(self) -> None:
        """getblocktemplate with ``longpollid`` returns when the template changes. On a quiet
        chain it may not return within ``longpoll_timeout``: that is normal (not logged, not
        counted as an RPC error) and the same long-poll is simply asked again."""
        longpollid: str | None = None
        while True:
            if longpollid is None:
                longpollid = self.current.longpollid if self.current is not None else None
                if longpollid is None:
                    await asyncio.sleep(self.poll_interval)
                    continue
            try:
                gbt = await self.rpc.call(
                    "getblocktemplate",
                    {**GBT_RULES, "longpollid": longpollid},
                    retry=False,
                    timeout=self.longpoll_timeout,
                    quiet_timeout=True,
                )
            except RpcTimeout:
                self.longpoll_timeouts += 1
                continue
            except RpcError:
                longpollid = None
                await asyncio.sleep(self.poll_interval)
                continue
            longpollid = gbt.get("longpollid") if isinstance(gbt, dict) else None
            self.poke("longpoll")
