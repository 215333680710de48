"""Several writers on one store (worker processes on a host, instances on several hosts with a
PostgreSQL ledger): each process's in-memory totals only see the shares IT applied, so the
pool-wide totals are reloaded from the store every ``ledger.shared_refresh_seconds`` (on the
store's thread, never on the loop), and every process writes a heartbeat row
(``pool_processes``) every ``ledger.heartbeat_seconds`` for the whole-pool views.

A process whose heartbeat is older than ``STALE_HEARTBEATS`` intervals shows as down.

Live workers (``pool.ledger.store_live``): every ``ledger.live_workers_seconds`` each process
publishes the workers it serves (collected on the loop in chunks of ``LIVE_CHUNK``, written on
the store's thread, only what changed); the process serving the API (``read_live``) reads the
others' rows at every refresh into ``live``, a snapshot the API merges with its own workers.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import structlog

from pool.config import LedgerConfig
from pool.ledger.aggregates import ShareRecord
from pool.ledger.store_live import (
    EMPTY_SNAPSHOT,
    LivePublisher,
    LiveReader,
    LiveSnapshot,
    LiveWorker,
    Published,
    snapshot_of,
)
from pool.ledger.store_thread import StoreThread

log = structlog.get_logger("pool.ledger")

STALE_HEARTBEATS = 3  # heartbeats missed before a process shows as down
LIVE_PRUNE_STALE = 10  # a process down this many staleness limits loses its live rows
LIVE_CHUNK = 100  # live workers collected per step on the loop (then it yields: ~2 ms a step)


def store_for(
    config: LedgerConfig,
    data_dir: Path,
    convert: Callable[[dict[str, Any]], ShareRecord],
    journal_id: str,
    instance_id: int,
) -> StoreThread:
    """The ledger's store: SQLite in ``data_dir``, or the PostgreSQL of ``ledger.dsn`` (one
    database for every instance: each keeps its own checkpoint there, named by its
    instance_id and process)."""
    if config.backend != "postgresql":
        return StoreThread(
            data_dir / "ledger.sqlite3",
            convert=convert,
            journal_id=journal_id,
            pplns_max_rows=config.pplns_max_log_shares,
            busy_timeout_seconds=config.sqlite_busy_timeout_seconds,
        )
    from pool.ledger.pg import PgTarget

    pg = PgTarget.from_env(config.dsn, config.password_env)
    store_journal = f"i{instance_id}" + (f"-{journal_id}" if journal_id else "")
    return StoreThread(
        data_dir / "ledger.sqlite3",
        convert,
        store_journal,
        pg=pg,
        pplns_max_rows=config.pplns_max_log_shares,
        busy_timeout_seconds=config.sqlite_busy_timeout_seconds,
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class InstanceInUse(RuntimeError):
    """Another live process already writes with this instance_id and process name."""


class SharedLedger:
    def __init__(
        self, store: StoreThread, config: LedgerConfig, instance_id: int, process: str
    ) -> None:
        self.store = store
        self.config = config
        self.instance_id = instance_id
        self.process = process or "main"
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.started_at = time.time()
        self.stats: Callable[[], dict[str, Any]] | None = None  # set by the app
        self.payout_runner: Callable[[], bool] = lambda: False  # set by the app
        # live workers: this process's (``live_rows(now)``, set by the app), the others'
        self.live_rows: Callable[[float], Iterable[LiveWorker]] | None = None
        self.read_live = False  # the app: this process serves the API or the webhooks monitor
        self.live: LiveSnapshot = EMPTY_SNAPSHOT
        self.live_stale = False  # the last read failed: ``live`` is older than a refresh
        self.publisher = LivePublisher(
            instance_id, self.process, LIVE_PRUNE_STALE * self.stale_seconds
        )
        self.reader = LiveReader(instance_id, self.process)
        self.last_publish: Published | None = None

    @property
    def stale_seconds(self) -> float:
        return STALE_HEARTBEATS * self.config.heartbeat_seconds

    def row(self, now: float) -> dict[str, Any]:
        stats: dict[str, Any] = {}
        if self.stats is not None:
            try:
                stats = self.stats()
            except Exception as exc:  # a view must never stop the heartbeat
                log.warning("process_stats_failed", error=repr(exc))
        return {
            "instance_id": self.instance_id,
            "process": self.process,
            "pid": self.pid,
            "host": self.host,
            "started_at": self.started_at,
            "heartbeat_at": now,
            "payout_runner": self.payout_runner(),
            "stats": stats,
        }

    def check_unique(self, rows: list[dict[str, Any]], now: float) -> None:
        """Refuse to start when a live process (another host or pid) has this identity: two
        writers with one checkpoint would credit shares twice or lose them."""
        for row in rows:
            if (row["instance_id"], row["process"]) != (self.instance_id, self.process):
                continue
            if (row["host"], row["pid"]) == (self.host, self.pid):
                continue
            if row["host"] == self.host and not _alive(int(row["pid"])):
                continue  # this host's earlier run of this process, killed: a restart
            age = now - float(row["heartbeat_at"])
            if age < self.stale_seconds:
                raise InstanceInUse(
                    f"pool.instance_id {self.instance_id} (process {self.process}) is in use by "
                    f"host {row['host']} pid {row['pid']} (heartbeat {age:.1f} s ago): give "
                    "every instance sharing the ledger its own pool.instance_id"
                )

    def view(self, now: float) -> list[dict[str, Any]]:
        """Every process's row as the API shows it: up or down by its heartbeat's age."""
        out = []
        for row in self.store.processes:
            age = now - float(row["heartbeat_at"])
            out.append(
                row | {"heartbeat_age_seconds": round(age, 3), "up": age < self.stale_seconds}
            )
        return out

    async def run(self) -> None:
        """Heartbeat, reload and live workers, forever (a failing store is retried by the
        ledger)."""
        await asyncio.gather(self._refresh_loop(), self._live_loop())

    async def _refresh_loop(self) -> None:
        last_beat = 0.0
        while True:
            now = time.time()
            if now - last_beat >= self.config.heartbeat_seconds:
                try:
                    await self.store.heartbeat(self.row(now))
                    last_beat = now
                except Exception as exc:
                    log.warning("process_heartbeat_failed", error=repr(exc))
            try:
                await self.store.refresh_shared(time.time())
            except Exception as exc:
                log.warning("shared_refresh_failed", error=repr(exc))
            if self.read_live:
                try:
                    await self.refresh_live(time.time())
                except Exception as exc:
                    log.warning("live_workers_read_failed", error=repr(exc))
            await asyncio.sleep(self.config.shared_refresh_seconds)

    async def refresh_live(self, now: float) -> None:
        """The other processes' live workers, read and merged on the store's thread. While
        the store is degraded (or a read fails) the last snapshot stands, marked stale."""
        if self.store.broken is not None:
            self.live_stale = True  # its last shares would look frozen
            return
        stale, version = self.stale_seconds, self.live.version + 1

        def read(store: Any) -> LiveSnapshot | None:
            rows = self.reader.read(store, now, stale)
            return None if rows is None else snapshot_of(rows, version)

        self.live_stale = True
        snapshot = await self.store.run(read)
        if snapshot is not None:
            self.live = snapshot
            self.live_stale = False

    async def _live_loop(self) -> None:
        while True:
            if self.live_rows is not None:
                try:
                    await self.publish_live()
                except Exception as exc:
                    log.warning("live_workers_publish_failed", error=repr(exc))
            await asyncio.sleep(self.config.live_workers_seconds)

    async def forget_live(self) -> None:
        """A clean stop (after the miners left and the tasks stopped): this process's live
        rows are deleted at once, not left to its heartbeat going stale."""
        if self.live_rows is None:
            return  # never publishes (one process, no shared store): nothing to delete
        try:
            await self.store.shared_write(self.publisher.forget)
        except Exception as exc:  # its heartbeat goes stale: readers ignore the rows then
            log.warning("live_workers_forget_failed", error=repr(exc))

    async def publish_live(self) -> Published | None:
        """Collect this process's live workers (on the loop, ``LIVE_CHUNK`` at a time) and
        write what changed (on the store's thread). None when there is nothing to collect or
        the store is degraded."""
        if self.live_rows is None:
            return None
        rows: list[LiveWorker] = []
        for row in self.live_rows(time.time()):
            rows.append(row)
            if len(rows) % LIVE_CHUNK == 0:
                await asyncio.sleep(0)  # 20 000 workers' hashrates: never one long stall
        now = time.time()
        result = await self.store.shared_write(
            lambda store: self.publisher.publish(store, rows, now)
        )
        if result is not None:
            self.last_publish = result
        return result


def processes_view(ledger: Any, now: float) -> dict[str, Any]:
    """/api/pool's whole-pool part: every process of every instance (up or down by its
    heartbeat), their summed live stats, and who runs the payouts. ``ledger``: the Ledger."""
    shared: SharedLedger = ledger.shared
    rows = shared.view(now) if ledger.is_shared else []
    up = [row for row in rows if row["up"]]

    def total(key: str) -> float:
        return sum(float(row["stats"].get(key, 0) or 0) for row in up)

    runner = next((row for row in up if row["payout_runner"]), None)
    return {
        "processes": rows,
        "pool_wide": {
            "processes": len(rows),
            "processes_up": len(up),
            "connections": int(total("connections")),
            "hashrate": total("hashrate"),
            "accepted_shares": int(total("accepted_shares")),
        },
        "payout_runner": {
            "this_process": shared.payout_runner(),
            "instance_id": None if runner is None else runner["instance_id"],
            "process": None if runner is None else runner["process"],
        },
    }
