"""Exactly one payout runner: payout rounds and block checks run only in the process holding
this lock; the others retry taking it every ``ledger.payout_lock_retry_seconds``, so when the
holder dies a survivor takes over.

* PostgreSQL: a session advisory lock (``pg_try_advisory_lock``) on a connection of its own.
  PostgreSQL releases it when that session ends: the holder's process died, its host or the
  network went away, or the server restarted. The holder checks its session at every retry
  and right before a payout is sent; a lost session is a lost lock.
* SQLite (several processes on one host): ``fcntl.flock`` on ``payouts.lock`` in the ledger's
  directory, released by the kernel when the holder dies.

A payout round still never pays twice (``pool.ledger.payouts``): it is recorded pending
before it is sent, and a survivor settles a pending payout from the wallet first.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Any

import structlog

from pool.config import LedgerConfig

log = structlog.get_logger("pool.ledger.payouts")

# pg_advisory_lock key of the payout runner (any fixed 64-bit number: "pool" "pay")
PAYOUT_LOCK_KEY = 0x706F6F6C_706179
LOCK_FILE = "payouts.lock"


class PayoutLock:
    def __init__(self, config: LedgerConfig, ledger_dir: Path) -> None:
        self.backend = config.backend
        self.config = config
        self.path = ledger_dir / LOCK_FILE
        self.held = False
        self.since: float | None = None  # when this process took the lock
        self.takeovers = 0  # times this process took it
        self._fd: int | None = None
        self._conn: Any = None  # psycopg.Connection (PostgreSQL)

    # -- on a thread (blocking) -----------------------------------------------------------
    def try_take(self) -> bool:
        """Take the lock if it is free; check it is still ours if we hold it. Blocking."""
        was = self.held
        try:
            self.held = self._try_pg() if self.backend == "postgresql" else self._try_file()
        except Exception as exc:  # the database or the file is unreachable: not ours
            log.warning("payout_lock_check_failed", error=repr(exc))
            self._drop()
            self.held = False
        if self.held and not was:
            self.since = time.time()
            self.takeovers += 1
            log.info("payout_runner_taken", backend=self.backend, pid=os.getpid())
        elif was and not self.held:
            self.since = None
            log.warning("payout_runner_lost", backend=self.backend)
        return self.held

    def _try_file(self) -> bool:
        if self._fd is not None:
            return True  # flock is held until this process closes the file or dies
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def _try_pg(self) -> bool:
        from pool.ledger.pg import PgTarget

        if self._conn is not None and self.held:
            self._conn.execute("SELECT 1")  # raises when the session (and its lock) is gone
            return True
        if self._conn is None or self._conn.closed:
            target = PgTarget.from_env(self.config.dsn, self.config.password_env)
            self._conn = target.connect()
        row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (PAYOUT_LOCK_KEY,)).fetchone()
        return bool(row[0])

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def release(self) -> None:
        self._drop()
        self.held = False
        self.since = None

    # -- on the loop ----------------------------------------------------------------------
    async def refresh(self) -> bool:
        return await asyncio.to_thread(self.try_take)

    async def confirm(self) -> bool:
        """Right before an irreversible step (sendmany): still the runner?"""
        return self.held and await self.refresh()

    async def run(self) -> None:
        """Retry taking (or check holding) the lock, forever."""
        try:
            while True:
                await self.refresh()
                await asyncio.sleep(self.config.payout_lock_retry_seconds)
        finally:
            await asyncio.to_thread(self.release)

    def view(self) -> dict[str, Any]:
        return {
            "payout_runner": self.held,
            "payout_runner_since": self.since,
            "payout_lock": "postgresql advisory lock"
            if self.backend == "postgresql"
            else "lock file",
        }
