"""Background tasks that are never left dead: each one is supervised.

``Backoff`` is the retry schedule shared by everything that retries a fault by itself (the
journal and the store after a storage fault, blocks waiting to be recorded, supervised
tasks): ``initial`` seconds, doubled after each failure up to ``maximum``, back to
``initial`` after a success. Pure: no clock, no asyncio.

``Supervisor.spawn(name, factory)`` runs ``factory()`` (a coroutine function) as a task. When
the coroutine raises (or returns: a background loop is meant to run until the pool stops), the
error is logged with its traceback, counted, shown in ``/healthz`` and the task is started
again after the backoff's delay. ``stop`` cancels everything (the pool's shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog

log = structlog.get_logger("pool.tasks")

STABLE_SECONDS = 60.0  # a task that ran this long before it died restarts at the first delay


class Backoff:
    """Retry delays: ``initial``, then doubled per failure, capped at ``maximum``."""

    def __init__(self, initial: float, maximum: float, factor: float = 2.0) -> None:
        if not 0 < initial <= maximum:
            raise ValueError(f"backoff needs 0 < initial <= maximum, got {initial}, {maximum}")
        if factor < 1:
            raise ValueError(f"backoff factor must be >= 1, got {factor}")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.failures = 0  # in a row, since the last success

    def next_delay(self) -> float:
        """The delay before the next attempt, counting one more failure."""
        delay = min(self.maximum, self.initial * self.factor ** min(self.failures, 64))
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0


@dataclass
class TaskState:
    """What ``/healthz`` shows of one supervised task."""

    name: str
    running: bool = False
    restarts: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    retry_in: float | None = None  # seconds, while it waits to be started again
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    def report(self) -> dict[str, Any]:
        return {
            "ok": self.running,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "retry_in_seconds": self.retry_in,
        }


class Supervisor:
    def __init__(self, *, initial: float = 0.5, maximum: float = 30.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.states: dict[str, TaskState] = {}
        self._runners: dict[str, asyncio.Task[None]] = {}
        self._stopping = False

    def spawn(self, name: str, factory: Callable[[], Coroutine[Any, Any, None]]) -> TaskState:
        """Run ``factory()`` under supervision (one task per name)."""
        if name in self._runners and not self._runners[name].done():
            raise ValueError(f"a task named {name!r} is already supervised")
        state = self.states[name] = TaskState(name)
        self._runners[name] = asyncio.create_task(self._supervise(state, factory), name=name)
        return state

    def task(self, name: str) -> asyncio.Task[None] | None:
        """The current task running ``name`` (None while it waits for a restart)."""
        state = self.states.get(name)
        return state.task if state is not None and state.running else None

    async def _supervise(
        self, state: TaskState, factory: Callable[[], Coroutine[Any, Any, None]]
    ) -> None:
        backoff = Backoff(self.initial, self.maximum)
        while not self._stopping:
            started = time.monotonic()
            state.task = asyncio.create_task(factory(), name=f"{state.name}-run")
            state.running, state.retry_in = True, None
            try:
                await state.task  # cancelling the supervisor cancels the task too
                error: BaseException = RuntimeError("the task returned; it should run forever")
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if self._stopping or (current is not None and current.cancelling()):
                    raise
                error = RuntimeError("the task was cancelled from outside its supervisor")
            except Exception as exc:
                error = exc
            state.running = False
            if time.monotonic() - started >= STABLE_SECONDS:
                backoff.reset()
            backoff.initial, backoff.maximum = self.initial, max(self.initial, self.maximum)
            delay = backoff.next_delay()
            state.restarts += 1
            state.last_error, state.last_error_at = repr(error), time.time()
            state.retry_in = delay
            log.error(
                "task_died",
                task=state.name,
                error=repr(error),
                restarts=state.restarts,
                restart_in_seconds=delay,
                exc_info=error,
            )
            await asyncio.sleep(delay)
            log.info("task_restarted", task=state.name, restarts=state.restarts)

    def report(self) -> dict[str, dict[str, Any]]:
        return {name: state.report() for name, state in sorted(self.states.items())}

    def down(self) -> list[TaskState]:
        """The tasks that are not running now (dead, waiting to be restarted)."""
        return [s for s in self.states.values() if not s.running]

    async def stop(self) -> None:
        """Cancel every supervised task and wait for it (the pool's shutdown)."""
        self._stopping = True
        runners = list(self._runners.values())
        for runner in runners:
            runner.cancel()
        for runner in runners:
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        for state in self.states.values():
            state.running = False


async def run_until_signalled(
    start: Callable[[], Awaitable[Any]], stop: Callable[[], Awaitable[Any]]
) -> None:
    """``start``, then wait for SIGINT or SIGTERM; ``stop`` whatever happened."""
    signalled = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, signalled.set)
    try:
        await start()
        await signalled.wait()
    finally:
        await stop()
