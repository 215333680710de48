"""Share and block counters per worker and for the pool (pure; the clock is passed in)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from pool.shares import ShareResult


@dataclass
class WorkerStats:
    name: str
    address: str
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    accepted_work: float = 0.0  # sum of the difficulty of accepted shares
    blocks: int = 0
    last_share: float | None = None
    difficulty: float = 0.0
    connections: int = 0
    last_seen: float = 0.0  # its last connect or disconnect (idle workers are evicted)


@dataclass
class FoundBlock:
    height: int
    hash: str
    worker: str
    status: str
    reason: str | None
    time: float


@dataclass
class PoolStats:
    workers: dict[str, WorkerStats] = field(default_factory=dict)
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    accepted_work: float = 0.0
    blocks: list[FoundBlock] = field(default_factory=list)

    def worker(self, name: str, address: str) -> WorkerStats:
        stats = self.workers.get(name)
        if stats is None:
            stats = self.workers[name] = WorkerStats(name=name, address=address)
        return stats

    def record(self, name: str | None, address: str, result: ShareResult, now: float) -> None:
        """Count a judged share; ``name`` None (a worker never authorized on the connection)
        counts for the pool only, so made-up worker names cannot grow memory."""
        stats = self.worker(name, address) if name is not None else None
        if result.accepted:
            self.accepted += 1
            self.accepted_work += result.difficulty
            if stats is not None:
                stats.accepted += 1
                stats.accepted_work += result.difficulty
                stats.last_share = now
        else:
            key = result.reject.key if result.reject else "other"
            self.rejected[key] += 1
            if stats is not None:
                stats.rejected[key] += 1

    def record_block(self, block: FoundBlock) -> None:
        self.blocks.append(block)
        if (
            block.status in ("accepted", "duplicate", "inconclusive")
            and block.worker in self.workers
        ):
            self.workers[block.worker].blocks += 1
