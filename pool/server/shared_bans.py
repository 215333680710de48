"""Bans shared through the ledger store when several processes write it (worker processes on one
SQLite file, instances on one PostgreSQL: ``Ledger.is_shared``); the rows: ``store_bans.py``.

Every process writes, in a transaction of its own on the store's thread:

* the operator's bans and unbans its admin API made (found by comparing the server's ban sets
  with what was last synced, so the API handlers stay as they are);
* each temporary IP ban its abuse guard gives (``IpGuard.on_ban``), and each operator's unban
  of one (``IpGuard.on_unban``; an unban of an IP also lifts its temporary ban everywhere);

and every ``ledger.shared_refresh_seconds`` reads the rows changed since the last seq it saw
(one indexed query on the store's thread, never on the event loop and never per connection:
admission checks stay in memory), applying bans made elsewhere: operator bans into the
server's sets (then ``drop_banned``), temporary ones into its guard (``IpGuard.install``,
bounded like its own, then the IP's live connections are dropped), lifts likewise.

Order: every change takes the next seq of one counter, so the last change of a target wins
everywhere. A local change not yet written is not overwritten by an older row read meanwhile.

Start: the table wins for every target it knows (a ban lifted elsewhere stays lifted even if
this process's ``bans.json`` still lists it); bans in ``bans.json`` the table never saw are
written to it (a single-process pool switching to a shared store keeps its bans). The process
that receives an admin call still saves ``bans.json``; the others do not rewrite it, so with a
shared store the table is the source of truth. Temporary bans are in the table with their end
time, so they survive a restart (and reach processes started later) until they end.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import structlog

from pool.ledger.store import Store
from pool.server.guard import TempBan

if TYPE_CHECKING:
    from pool.ledger.ledger import Ledger
    from pool.server.server import StratumServer
    from pool.tasks import Supervisor

log = structlog.get_logger("pool.bans")

PRUNE_SECONDS = 300.0  # how often a process deletes ended temporary bans and old lifts
KEEP_LIFTED_SECONDS = 3600.0  # a lift stays readable this long (pollers are seconds behind)


class SharedBans:
    def __init__(self, store: Any, server: StratumServer, refresh: float, set_by: str) -> None:
        self.store = store  # the StoreThread
        self.server = server
        self.guard = server.ctx.guard
        self.refresh = refresh
        self.set_by = set_by
        self.seq = 0  # the last change read
        self.synced: dict[str, set[str]] = {"ip": set(), "worker": set()}  # as in the table
        self.pending: list[dict[str, Any]] = []
        self.wake = asyncio.Event()
        self.syncing = asyncio.Lock()  # one round at a time (the task's, an unban's catch-up)
        self.applied = 0  # changes made elsewhere applied here
        self.written = 0
        self.guard.on_ban = self._temp_banned
        self.guard.on_unban = self._temp_unbanned

    def _local(self, kind: str) -> set[str]:
        return self.server.banned_ips if kind == "ip" else self.server.banned_workers

    # -- local changes: queued, written by ``run`` ------------------------------------------------
    def _queue(self, change: dict[str, Any]) -> None:
        # bounded while the store fails: as many as the guard's bans, plus the operator's
        bound = (
            self.guard.settings.max_tracked_ips
            + len(self.server.banned_ips)
            + len(self.server.banned_workers)
        )
        if len(self.pending) >= bound:
            del self.pending[0]  # the oldest change
        self.pending.append(change | {"set_by": self.set_by})
        self.wake.set()

    def _temp_banned(self, ban: TempBan) -> None:
        self._queue({"kind": "temp_ip", "key": ban.ip, "until": ban.until, "reason": ban.reason})

    def _temp_unbanned(self, key: str) -> None:
        self._queue({"kind": "temp_ip", "key": key, "lift": True})

    def _diff(self) -> None:
        """Queue the operator's bans and unbans made here since the last sync."""
        for kind in ("ip", "worker"):
            local, synced = self._local(kind), self.synced[kind]
            for key in sorted(local - synced):
                self._queue({"kind": kind, "key": key, "until": None, "reason": "operator"})
            for key in sorted(synced - local):
                self._queue({"kind": kind, "key": key, "lift": True})
                if kind == "ip":  # an unban of an IP lifts its temporary ban everywhere too
                    self._queue({"kind": "temp_ip", "key": key, "lift": True})
            self.synced[kind] = set(local)

    # -- changes made elsewhere -------------------------------------------------------------------
    def apply(self, rows: list[dict[str, Any]], now: float, start: bool = False) -> int:
        """Apply rows read from the table (oldest change first); how many changed something
        here. At ``start`` the table wins over the server's sets for every target it holds."""
        changed = banned = temp = 0
        for row in rows:
            self.seq = max(self.seq, int(row["seq"]))
            kind, key, lifted = str(row["kind"]), str(row["ban_key"]), bool(row["lifted"])
            if kind == "temp_ip":
                if lifted:
                    changed += self.guard.lift(key)
                elif row["until_at"] is not None:
                    got = self.guard.install(key, float(row["until_at"]), str(row["reason"]), now)
                    temp += got is not None
                    changed += got is not None
                continue
            if kind not in self.synced:
                continue
            local, synced = self._local(kind), self.synced[kind]
            if not start and (key in local) != (key in synced):
                continue  # changed here, not yet written: that later change wins
            if lifted:
                if key in local:
                    local.discard(key)
                    changed += 1
                synced.discard(key)
            else:
                if key not in local:
                    local.add(key)
                    banned += 1
                    changed += 1
                synced.add(key)
        if banned:
            dropped = self.server.drop_banned()
            log.warning("shared_bans_applied", bans=banned, dropped=dropped)
        if temp:
            dropped = 0
            for session in list(self.server.sessions.values()):
                if self.guard.banned(session.ip, now) is not None:
                    session.abort("IP temporarily banned")
                    dropped += 1
            log.warning("shared_temp_bans_applied", bans=temp, dropped=dropped)
        self.applied += changed
        return changed

    # -- the store ------------------------------------------------------------------------------
    async def _read(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        while True:
            page = await self.store.run(Store.bans_since, self.seq)
            rows += page
            if len(page) < 10_000:
                return rows
            self.seq = int(page[-1]["seq"])

    async def load(self) -> None:
        """At start (before miners arrive): the table wins for every target it holds; bans
        of ``bans.json`` it never saw are then written to it (by ``_diff``)."""
        self.apply(await self._read(), time.time(), start=True)
        await self.flush()
        log.info(
            "shared_bans_loaded",
            ips=len(self.server.banned_ips),
            workers=len(self.server.banned_workers),
            temporary=len(self.guard.bans(time.time())),
            seq=self.seq,
        )

    async def flush(self) -> None:
        self._diff()
        if not self.pending or self.store.broken is not None:
            return
        changes, self.pending = self.pending, []
        try:
            await self.store.run(Store.ban_changes, changes, time.time())
            self.written += len(changes)
        except Exception:
            self.pending[:0] = changes  # tried again at the next round
            raise

    async def sync(self) -> int:
        """One round: write this process's changes, apply the others'; how many applied."""
        async with self.syncing:
            await self.flush()
            if self.store.broken is not None:
                return 0
            return self.apply(await self._read(), time.time())

    async def catch_up(self) -> int:
        """A round now, not at the next refresh (the admin API's unban of a ban made
        elsewhere that this process has not read yet)."""
        return await self.sync()

    async def run(self) -> None:
        """Write this process's changes and read the others', every ``refresh`` seconds (at
        once when a change is made here)."""
        last_prune = time.time()
        while True:
            self.wake.clear()  # a change made while this round runs wakes the next at once
            try:
                await self.sync()
                now = time.time()
                if now - last_prune >= PRUNE_SECONDS and self.store.broken is None:
                    last_prune = now
                    await self.store.run(Store.prune_bans, now, KEEP_LIFTED_SECONDS)
            except Exception as exc:  # the store is retried by the ledger; so are these
                log.warning("shared_bans_failed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.refresh)


class _WakingLock(asyncio.Lock):
    """The server's ``bans_lock``, which the admin API holds while it saves a ban or unban it
    just made: its release wakes the shared bans' task, so the change is written at once
    rather than at the next refresh."""

    def __init__(self, wake: asyncio.Event) -> None:
        super().__init__()
        self._wake = wake

    def release(self) -> None:
        super().release()
        self._wake.set()


async def attach_shared_bans(
    ledger: Ledger, server: StratumServer, tasks: Supervisor
) -> SharedBans | None:
    """With a shared store: load its bans into ``server`` and keep them in step (a task)."""
    if not ledger.is_shared:
        return None
    shared = ledger.shared
    bans = SharedBans(
        ledger.store,
        server,
        ledger.config.shared_refresh_seconds,
        f"instance {shared.instance_id} process {shared.process}",
    )
    await bans.load()
    server.bans_lock = _WakingLock(bans.wake)  # the admin API's ban saves: written at once
    tasks.spawn("shared-bans", bans.run)
    return bans
