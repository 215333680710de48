"""What every connection of one pool process shares (pure: no asyncio, no clock, no sockets).

The live jobs, the duplicate filter, the per-worker statistics and hashrate, the worker bans,
the extranonce1 allocator and the rejected-share tally. The asyncio server owns one and hands
it to each :class:`~pool.server.core.PoolConnection`; the API reads it.
"""

from __future__ import annotations

import os
from collections import Counter, OrderedDict
from dataclasses import dataclass

from pool.bitcoin import Network
from pool.hashrate import HashrateBook
from pool.jobs import JobTable
from pool.server.auth import Credentials
from pool.shares import DuplicateFilter, Reject, ShareResult
from pool.stats import PoolStats

RESUMABLE_SESSIONS = 4096
REJECT_SUMMARY_WORKERS = 20  # workers named in one rejected-share summary (the rest summed)


class ExtranonceAllocator:
    """Unique extranonce1 values for live connections; released ones are parked so a miner
    that reconnects with its old session id (mining.subscribe's second param) gets it back."""

    def __init__(self, size: int, *, start: int | None = None) -> None:
        self.size = size
        self._bits = 8 * size
        self._next = int.from_bytes(os.urandom(size), "big") if start is None else start
        self._live: set[bytes] = set()
        self._released: OrderedDict[bytes, None] = OrderedDict()

    def allocate(self) -> bytes:
        for _ in range(1 << 16):
            self._next = (self._next + 1) % (1 << self._bits)
            en1 = self._next.to_bytes(self.size, "big")
            if en1 not in self._live and en1 not in self._released:
                self._live.add(en1)
                return en1
        # Every nearby value is taken or parked for resumption: reuse the oldest parked one.
        en1, _ = self._released.popitem(last=False)
        self._live.add(en1)
        return en1

    def release(self, en1: bytes) -> None:
        self._live.discard(en1)
        self._released[en1] = None
        while len(self._released) > RESUMABLE_SESSIONS:
            self._released.popitem(last=False)

    def resume(self, current: bytes, session_id: str) -> bytes | None:
        """Swap ``current`` for the parked extranonce1 named by ``session_id`` (hex), if free."""
        try:
            wanted = bytes.fromhex(session_id)
        except ValueError:
            return None
        if len(wanted) != len(current) or wanted not in self._released:
            return None
        del self._released[wanted]
        self._live.discard(current)
        self._released[current] = None
        self._live.add(wanted)
        return wanted


@dataclass(frozen=True, slots=True)
class RejectSummary:
    """Rejected shares since the last summary: per reason, and per (worker, reason) for the
    workers with the most (``None`` stands for shares of workers never authorized)."""

    total: int
    by_reason: dict[str, int]
    by_worker: list[tuple[str | None, str, int]]


class PoolContext:
    """The shared, pure state of one pool process's connections."""

    def __init__(
        self,
        *,
        network: Network,
        jobs: JobTable,
        extranonce1_size: int,
        now: float,
    ) -> None:
        self.network = network
        self.jobs = jobs
        self.duplicates = DuplicateFilter()
        self.stats = PoolStats()
        self.hashrate = HashrateBook(now)
        self.extranonces = ExtranonceAllocator(extranonce1_size)
        # Worker names or bare addresses (all of that address's workers) refused at authorize.
        self.banned_workers: set[str] = set()
        self._rejects: Counter[tuple[str | None, str]] = Counter()

    def worker_banned(self, creds: Credentials) -> bool:
        return creds.name in self.banned_workers or creds.address in self.banned_workers

    def worker_connected(self, creds: Credentials, now: float) -> None:
        self.stats.worker(creds.name, creds.address).connections += 1
        if self.hashrate.worker(creds.name) is None:
            self.hashrate.start_worker(creds.name, creds.address, now)

    def worker_disconnected(self, creds: Credentials) -> None:
        stats = self.stats.workers.get(creds.name)
        if stats is not None:
            stats.connections -= 1

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
