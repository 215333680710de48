"""The new-block watcher: getblocktemplate long-poll, with periodic polling as a fallback.

It calls ``on_template(template, new_block)`` whenever there is something to send to miners:
``new_block=True`` as soon as the previous block changed (miners must drop their work), and
``new_block=False`` every ``refresh_interval`` seconds with a fresh template (new mempool
transactions; also keeps miners that stop after 120 s without a new job id hashing).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import structlog

from pool.jobs import Template, TemplateError
from pool.node.rpc import BitcoinRpc, RpcError, RpcTimeout

log = structlog.get_logger("pool.node.templates")

GBT_RULES = {"rules": ["segwit"]}

OnTemplate = Callable[[Template, bool], Awaitable[None]]


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
    ) -> None:
        self.rpc = rpc
        self.on_template = on_template
        self.refresh_interval = refresh_interval
        self.poll_interval = poll_interval
        self.longpoll = longpoll
        self.longpoll_timeout = longpoll_timeout
        self.current: Template | None = None
        self._wake = asyncio.Event()
        self._best_hash: str | None = None
        self.longpoll_timeouts = 0  # long-polls that ended quietly (no change within the timeout)

    async def fetch(self) -> Template:
        gbt = await self.rpc.call("getblocktemplate", GBT_RULES)
        return Template.from_rpc(gbt)

    async def update(self, *, force: bool = False) -> bool:
        """Fetch a template; publish it if the previous block changed or ``force``.
        Returns True if it was a new block."""
        template = await self.fetch()
        new_block = self.current is None or template.prev_hash != self.current.prev_hash
        if new_block or force:
            self.current = template
            self._best_hash = template.prev_hash_hex
            if new_block:
                log.info("new_block", height=template.height, prev=template.prev_hash_hex)
            await self.on_template(template, new_block)
        return new_block

    def poke(self) -> None:
        """Ask for a new template at once (e.g. after the pool itself found a block)."""
        self._wake.set()

    async def run(self) -> None:
        tasks = [asyncio.create_task(self._poll_loop(), name="gbt-poll")]
        if self.longpoll:
            tasks.append(asyncio.create_task(self._longpoll_loop(), name="gbt-longpoll"))
        try:
            last_refresh = time.monotonic()
            await self._safe_update(force=True)
            while True:
                wait = max(0.0, self.refresh_interval - (time.monotonic() - last_refresh))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):  # cancels cleanly, unlike 3.11 wait_for
                        await self._wake.wait()
                self._wake.clear()
                due = time.monotonic() - last_refresh >= self.refresh_interval
                new_block = await self._safe_update(force=due)
                if due or new_block:
                    last_refresh = time.monotonic()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _safe_update(self, *, force: bool) -> bool:
        try:
            return await self.update(force=force)
        except (RpcError, TemplateError) as exc:
            log.warning("template_fetch_failed", error=str(exc))
            return False

    async def _poll_loop(self) -> None:
        """Fallback: compare the best block hash every ``poll_interval`` seconds."""
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                best = await self.rpc.call("getbestblockhash", retry=False, timeout=10.0)
            except RpcError:
                continue
            if self._best_hash is not None and best != self._best_hash:
                self._wake.set()

    async def _longpoll_loop(self) -> None:
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
            self._wake.set()
