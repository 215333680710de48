"""Exactly one payout runner, moving to a survivor when its holder dies for real: a child
process takes the lock (PostgreSQL's session advisory lock, or flock on the ledger's lock file
with SQLite), this process cannot, the child is SIGKILLed, this process takes over at its next
retry. A process that is not the runner runs no payout round. About 10 s."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pool.config import LedgerConfig
from pool.ledger.payout_lock import PayoutLock
from pool.ledger.payouts import Payouts
from tests.pg_harness import PgServer

pytestmark = pytest.mark.integration

CHILD = """
import sys, time
from pathlib import Path
from pool.config import LedgerConfig
from pool.ledger.payout_lock import PayoutLock
config = LedgerConfig(backend=sys.argv[1], dsn=sys.argv[2])
lock = PayoutLock(config, Path(sys.argv[3]))
while not lock.try_take():
    time.sleep(0.05)
print("held", flush=True)
time.sleep(600)
"""


def child_holding(backend: str, dsn: str, ledger_dir: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, backend, dsn, str(ledger_dir)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout is not None
    for line in child.stdout:  # its log lines first
        if line.strip() == "held":
            return child
    raise AssertionError(f"the child never took the lock (exit {child.wait()})")


async def takes_over(backend: str, dsn: str, tmp_path: Path) -> float:
    config = LedgerConfig(backend=backend, dsn=dsn, payout_lock_retry_seconds=0.1)
    child = child_holding(backend, dsn, tmp_path)
    lock = PayoutLock(config, tmp_path)
    task = asyncio.ensure_future(lock.run())
    try:
        await asyncio.sleep(0.5)  # a few retries: held elsewhere
        assert not lock.held and lock.takeovers == 0
        payouts = Payouts(None, None, config, None, "pool", lock)  # type: ignore[arg-type]
        result = await payouts.run_round()  # touches nothing: not the runner
        assert result.status == "not_runner"
        killed = time.monotonic()
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        deadline = time.monotonic() + 30
        while not lock.held:
            assert time.monotonic() < deadline, "the survivor never took the payout lock"
            await asyncio.sleep(0.02)
        took = time.monotonic() - killed
        assert lock.takeovers == 1 and lock.view()["payout_runner"]
        assert await lock.confirm()
        # a second contender now waits on this process
        other = PayoutLock(config, tmp_path)
        assert not await asyncio.to_thread(other.try_take)
        await asyncio.to_thread(other.release)
        return took
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_the_postgresql_payout_lock_moves_to_a_survivor(
    postgres: PgServer, pg_database: str, tmp_path: Path
) -> None:
    took = await takes_over("postgresql", pg_database, tmp_path)
    print(f"postgresql: taken over {took:.3f} s after the SIGKILL")


async def test_the_sqlite_payout_lock_file_moves_to_a_survivor(tmp_path: Path) -> None:
    took = await takes_over("sqlite", "", tmp_path)
    print(f"sqlite: taken over {took:.3f} s after the SIGKILL")
