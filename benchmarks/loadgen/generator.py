"""The generator: connections, shared counters and the callbacks miners report to."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

from benchmarks.loadgen.common import Spec, now, poll_until
from benchmarks.loadgen.miners import Miner
from benchmarks.loadgen.stamped import StampedConnection


class Generator:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.host: str = spec["host"]
        self.port: int = spec["port"]
        self.pool_pid: int = spec["pool_pid"]
        self.address: str = spec["address"]
        self.loop = asyncio.get_running_loop()
        self.miners: list[Miner] = []
        self.ready_count = 0
        self.failed = 0  # connects refused or connections closed before they were ready
        self.lost_count = 0
        self.connect_errors: dict[str, int] = {}
        self.closing = False
        self.sending = False
        self.polling = False
        self.sent = 0
        self.answers = 0
        self.trues = 0
        self.sample: dict[str, int] = {}
        self.sample_text: dict[str, str] = {}
        self.timed: list[tuple[float, float, float, bool]] = []  # sent, stamped, read, ok
        self.http: dict[str, list[float]] = {}
        self.http_status: dict[str, int] = {}
        self.http_bytes = 0
        self.on_ready_hook: Callable[[Miner], None] | None = None

    # callbacks from miners
    def on_ready(self, miner: Miner) -> None:
        self.ready_count += 1
        if self.on_ready_hook is not None:
            self.on_ready_hook(miner)

    def on_lost(self, miner: Miner) -> None:
        self.lost_count += 1

    def http_done(self, path: str, status: int, seconds: float, size: int) -> None:
        self.http.setdefault(path, []).append(seconds)
        key = f"{path} {status}"
        self.http_status[key] = self.http_status.get(key, 0) + 1
        self.http_bytes += size

    # connecting
    async def connect(self, factory: Callable[[], Miner], stamped: bool = False) -> Miner | None:
        """One connection (``stamped``: through ``StampedConnection``, reads carry the kernel's
        receive time). None when the connect failed (counted in ``connect_errors``)."""
        miner: Miner | None = None

        def build() -> Miner:
            nonlocal miner
            miner = factory()
            return miner

        try:
            if stamped:
                await StampedConnection(self.loop, build()).open(self.host, self.port)
            else:
                await self.loop.create_connection(build, self.host, self.port)
        except OSError as exc:
            key = type(exc).__name__ + (f" errno {exc.errno}" if exc.errno else "")
            self.connect_errors[key] = self.connect_errors.get(key, 0) + 1
            self.failed += 1
            return None
        assert miner is not None
        self.miners.append(miner)
        return miner

    async def wait_settled(self, target: int, deadline: float) -> None:
        """Until ``target`` connections (counted since this generator started) are ready or
        have failed, or the deadline (monotonic) passes."""
        await poll_until(lambda: self.ready_count + self.failed >= target, deadline)

    async def connect_many(
        self,
        n: int,
        factory: Callable[[int], Miner],
        *,
        batch: int,
        timeout: float,
        stamped: bool = False,
    ) -> None:
        """Connect ``n`` more miners, ``batch`` at a time (each batch waited for until all are
        ready or failed), within ``timeout`` seconds overall; stops at a batch with failures."""
        deadline = now() + timeout
        start = len(self.miners) + sum(self.connect_errors.values())
        for first in range(start, start + n, batch):
            count = min(batch, start + n - first)
            ready_goal = self.ready_count + count
            settled = self.ready_count + self.failed + count
            tasks = [
                asyncio.create_task(self.connect(functools.partial(factory, i), stamped))
                for i in range(first, first + count)
            ]
            await asyncio.gather(*tasks)
            await self.wait_settled(settled, deadline)
            if self.ready_count < ready_goal:
                return

    def failures(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for m in self.miners:
            if m.failure is not None:
                key = m.failure[:120]
                out[key] = out.get(key, 0) + 1
        return out

    def close_all(self) -> None:
        self.closing = True
        for m in self.miners:
            m.close()

    def user(self, name: str) -> str:
        return f"{self.address}.{name}"


async def drain(outstanding: Callable[[], int], timeout: float) -> bool:
    await poll_until(lambda: outstanding() <= 0, now() + timeout)
    return outstanding() <= 0
