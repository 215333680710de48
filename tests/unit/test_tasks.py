"""Backoff and task supervision: a task that dies is logged, shown, and restarted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from structlog.testing import capture_logs

from pool.tasks import Backoff, Supervisor


async def until(predicate: Callable[[], bool], seconds: float = 30.0) -> None:
    """Wait for ``predicate`` (a condition, never a fixed sleep)."""
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for a condition"
        await asyncio.sleep(0.005)


def test_backoff_doubles_up_to_the_maximum_and_resets() -> None:
    backoff = Backoff(0.5, 3.0)
    assert [backoff.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff.failures == 5
    backoff.reset()
    assert backoff.next_delay() == 0.5
    many = Backoff(1.0, 10.0)
    for _ in range(10_000):  # no overflow however long the fault lasts
        assert many.next_delay() <= 10.0


@pytest.mark.parametrize(("initial", "maximum", "factor"), [(0, 1, 2), (2, 1, 2), (1, 2, 0.5)])
def test_backoff_refuses_bad_arguments(initial: float, maximum: float, factor: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(initial, maximum, factor)


async def test_a_task_that_dies_is_logged_shown_and_restarted() -> None:
    supervisor = Supervisor(initial=0.05, maximum=0.2)
    runs = 0
    healthy = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise OSError(5, f"I/O error {runs}")
        healthy.set()
        await asyncio.Event().wait()

    with capture_logs() as logs:
        state = supervisor.spawn("flaky", flaky)
        down_seen = False
        while not healthy.is_set():
            if not state.running:
                down_seen = True
                assert [s.name for s in supervisor.down()] == ["flaky"]
                assert supervisor.report()["flaky"]["ok"] is False
            await asyncio.sleep(0.005)
    assert down_seen
    assert runs == 4 and state.restarts == 3 and state.running
    assert state.last_error == repr(OSError(5, "I/O error 3"))
    assert supervisor.report()["flaky"]["ok"] is True
    died = [e for e in logs if e["event"] == "task_died"]
    assert [e["restart_in_seconds"] for e in died] == [0.05, 0.1, 0.2]
    assert all(e["log_level"] == "error" and e["task"] == "flaky" for e in died)
    current = supervisor.task("flaky")
    assert current is not None and not current.done()
    await supervisor.stop()
    assert current.cancelled() and supervisor.down()


async def test_a_task_that_returns_or_is_cancelled_from_outside_is_restarted() -> None:
    supervisor = Supervisor(initial=0.01, maximum=0.01)
    starts: list[int] = []

    async def returns() -> None:
        starts.append(1)
        if len(starts) < 3:
            return
        await asyncio.Event().wait()

    state = supervisor.spawn("returns", returns)
    await until(lambda: len(starts) >= 3 and state.running)
    assert state.last_error is not None and "returned" in state.last_error
    task = supervisor.task("returns")
    assert task is not None
    task.cancel()  # someone cancels the running task: it comes back
    await until(lambda: len(starts) >= 4 and state.running)
    assert state.restarts == 3 and "cancelled" in (state.last_error or "")
    with pytest.raises(ValueError, match="already supervised"):
        supervisor.spawn("returns", returns)
    await supervisor.stop()
