"""What every connection of one pool process shares (pure: no asyncio, no clock, no sockets).

The live jobs, the duplicate filter, the per-worker statistics and hashrate, the worker bans,
the extranonce1 allocator (pool/server/extranonce.py) and the rejected-share tally. The asyncio
server owns one and hands it to each :class:`~pool.server.core.PoolConnection`; the API reads
it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from pool.best_share import BestShares
from pool.bitcoin import Network
from pool.hashrate import HashrateBook
from pool.jobs import JobTable
from pool.logs import LogLimiter
from pool.server.auth import Credentials
from pool.server.extranonce import ExtranonceAllocator, ExtranonceSpace
from pool.server.guard import GuardSettings, IpGuard
from pool.shares import DuplicateFilter, Reject, ShareResult
from pool.stats import PoolStats

REJECT_SUMMARY_WORKERS = 20  # workers named in one rejected-share summary (the rest summed)


@dataclass(frozen=True, slots=True)
class RejectSummary:
    """Rejected shares since the last summary: per reason, and per (worker, reason) for the
    workers with the most (``None`` stands for shares of workers never authorized)."""

    total: int
    by_reason: dict[str, int]
    by_worker: list[tuple[str | None, str, int]]


@dataclass(frozen=True, slots=True)
class WorkerLimits:
    """Bounds on per-worker state (limits.max_workers_per_address / _per_ip and
    limits.worker_idle_seconds)."""

    per_address: int = 4096
    per_ip: int = 4096
    idle_seconds: float = 7200.0


class PoolContext:
    """The shared, pure state of one pool process's connections."""

    def __init__(
        self,
        *,
        network: Network,
        jobs: JobTable,
        extranonce1_size: int,
        now: float,
        guard: GuardSettings | None = None,
        workers: WorkerLimits | None = None,
        log_limiter: LogLimiter | None = None,
        extranonce_space: ExtranonceSpace | None = None,
    ) -> None:
        """``extranonce_space``: this process's extranonce1 values (its prefix among several
        processes and instances, see pool/server/extranonce.py); default the whole space."""
        self.network = network
        self.jobs = jobs
        self.duplicates = DuplicateFilter()
        self.stats = PoolStats()
        self.best = BestShares()  # best share per worker/address/pool (loaded from the ledger)
        self.hashrate = HashrateBook(now)
        self.extranonces = ExtranonceAllocator(extranonce1_size, space=extranonce_space)
        # Worker names or bare addresses (all of that address's workers) refused at authorize.
        self.banned_workers: set[str] = set()
        self._rejects: Counter[tuple[str | None, str]] = Counter()
        self.guard = IpGuard(guard)
        self.worker_limits = workers or WorkerLimits()
        self.log_limiter = log_limiter or LogLimiter()
        # Live worker names (connections holding each), per address and per IP.
        self._live: dict[str, int] = {}
        self._address_live: Counter[str] = Counter()
        self._ip_live: dict[str, Counter[str]] = {}

    def worker_banned(self, creds: Credentials) -> bool:
        """Banned by its name or address; also when the ban was written with an upper-case
        bech32 address (the canonical form is lower case, and both pay the same script)."""
        banned = self.banned_workers
        if creds.name in banned or creds.address in banned:
            return True
        if creds.address.islower():
            upper = creds.address.upper()
            return upper in banned or f"{upper}.{creds.worker}" in banned
        return False

    def worker_refused(self, creds: Credentials, ip: str) -> str | None:
        """Why a new worker may not log in from ``ip`` (too many live names for its address
        or IP), or None. A name already live anywhere is always allowed."""
        if creds.name in self._live and creds.name in self._ip_live.get(ip, ()):
            return None
        limits = self.worker_limits
        if creds.name not in self._live and self._address_live[creds.address] >= limits.per_address:
            return (
                f"too many workers for address {creds.address} "
                f"(limits.max_workers_per_address = {limits.per_address})"
            )
        on_ip = self._ip_live.get(ip)
        if on_ip is not None and creds.name not in on_ip and len(on_ip) >= limits.per_ip:
            return f"too many workers from one IP (limits.max_workers_per_ip = {limits.per_ip})"
        return None

    def worker_connected(self, creds: Credentials, now: float, ip: str = "") -> None:
        stats = self.stats.worker(creds.name, creds.address)
        stats.connections += 1
        stats.last_seen = now
        if self.hashrate.worker(creds.name) is None:
            self.hashrate.start_worker(creds.name, creds.address, now)
        name = creds.name
        held = self._live.get(name, 0)
        if not held:
            self._address_live[creds.address] += 1
        self._live[name] = held + 1
        on_ip = self._ip_live.get(ip)
        if on_ip is None:
            on_ip = self._ip_live[ip] = Counter()
        on_ip[name] += 1

    def worker_disconnected(self, creds: Credentials, now: float = 0.0, ip: str = "") -> None:
        """A connection holding ``creds`` is gone. A worker with no live connection that never
        had a share accepted is forgotten at once (made-up names cost nothing lasting); one
        with shares stays until ``worker_idle_seconds`` without a share (``evict_idle``)."""
        name = creds.name
        held = self._live.get(name, 0)
        if held > 1:
            self._live[name] = held - 1
        elif held == 1:
            del self._live[name]
            self._address_live[creds.address] -= 1
            if self._address_live[creds.address] <= 0:
                del self._address_live[creds.address]
        on_ip = self._ip_live.get(ip)
        if on_ip is not None and name in on_ip:
            on_ip[name] -= 1
            if on_ip[name] <= 0:
                del on_ip[name]
                if not on_ip:
                    del self._ip_live[ip]
        stats = self.stats.workers.get(name)
        if stats is not None:
            stats.connections -= 1
            stats.last_seen = max(stats.last_seen, now)
            if stats.connections <= 0 and not stats.accepted and name not in self._live:
                self._forget_worker(name)

    def _forget_worker(self, name: str) -> None:
        self.stats.workers.pop(name, None)
        self.hashrate.forget_worker(name)

    def evict_idle(self, now: float) -> int:
        """Forget the statistics of workers with no live connection and nothing (no share, no
        connection) for ``worker_idle_seconds``; how many were forgotten."""
        cutoff = now - self.worker_limits.idle_seconds
        idle = [
            name
            for name, w in self.stats.workers.items()
            if w.connections <= 0
            and name not in self._live
            and max(w.last_seen, w.last_share or 0.0) < cutoff
        ]
        for name in idle:
            self._forget_worker(name)
        return len(idle)

    @property
    def live_workers(self) -> int:
        return len(self._live)

    # -- shares -----------------------------------------------------------------------------------
    def count_rejected(self, creds: Credentials | None, reject: Reject) -> None:
        """A rejected share: counted per worker and reason, and tallied for the periodic
        summary (no log line per share). A worker never authorized counts for the pool only,
        so made-up names cannot grow memory."""
        key = reject.key
        stats = self.stats
        stats.rejected[key] += 1
        if creds is not None:
            worker = stats.workers.get(creds.name)
            if worker is not None:
                worker.rejected[key] += 1
            self._rejects[creds.name, key] += 1
        else:
            self._rejects[None, key] += 1

    def count_accepted(self, shares: list[tuple[ShareResult, Credentials]], now: float) -> None:
        """Accepted shares (of one read), once the ledger recorded them. The hashrate meters
        get one add per worker for the lot."""
        record = self.stats.record
        work: dict[str, tuple[Credentials, float, int]] = {}
        for result, creds in shares:
            record(creds.name, creds.address, result, now)
            name = creds.name
            before = work.get(name)
            if before is None:
                work[name] = (creds, result.difficulty, 1)
            else:
                work[name] = (creds, before[1] + result.difficulty, before[2] + 1)
        for name, (creds, difficulty, count) in work.items():
            self.hashrate.add_share(
                worker=name, address=creds.address, difficulty=difficulty, now=now, count=count
            )
        self.best.observe_shares(shares, now)

    def take_reject_summary(self) -> RejectSummary | None:
        """The rejected shares since the last call (None if there were none); resets."""
        if not self._rejects:
            return None
        tally, self._rejects = self._rejects, Counter()
        by_reason: Counter[str] = Counter()
        for (_, reason), count in tally.items():
            by_reason[reason] += count
        top = tally.most_common(REJECT_SUMMARY_WORKERS)
        return RejectSummary(
            total=sum(by_reason.values()),
            by_reason=dict(by_reason),
            by_worker=[(worker, reason, count) for (worker, reason), count in top],
        )
