"""Best share difficulty per worker, per address and for the pool (pure; the clock is passed in).

A share's achieved difficulty is what its hash reached (``DIFF1_TARGET / hash``,
``ShareResult.share_difficulty``), not the difficulty it was judged at. Each name keeps its
all-time best and its best of the current block round; a round ends when the pool finds a
block (the block's own share is the last share of the round it ends). The same rules run in
the ledger store (``pool.ledger.store_best``), which keeps them across restarts; the pool
loads the store's values at start and keeps them here for the API (no table read per request).
A best is a maximum: seeing a share twice changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pool.server.auth import Credentials
    from pool.shares import ShareResult

WORKER = "worker"
ADDRESS = "address"
POOL = "pool"  # one row, name ""
SCOPES = (WORKER, ADDRESS, POOL)


@dataclass(slots=True)
class Best:
    difficulty: float = 0.0
    at: float | None = None
    round_difficulty: float = 0.0
    round_at: float | None = None

    def see(self, difficulty: float, now: float, round_started: float) -> None:
        if difficulty > self.difficulty:
            self.difficulty, self.at = difficulty, now
        if self.round_at is None or self.round_at <= round_started:
            self.round_difficulty = 0.0  # the last round's best: this round has none yet
        if difficulty > self.round_difficulty:
            self.round_difficulty, self.round_at = difficulty, now


def finite(difficulty: float) -> float:
    """A hash of zero has an infinite difficulty: kept as the largest float (storable)."""
    return difficulty if math.isfinite(difficulty) else 1.7976931348623157e308


class BestShares:
    """Best shares in memory: ``worker``, ``address`` and ``pool`` scopes."""

    def __init__(self) -> None:
        self.workers: dict[str, Best] = {}
        self.addresses: dict[str, Best] = {}
        self.pool = Best()
        self.round_started = 0.0  # when the current round began (the last block's share)

    def observe(self, worker: str, address: str, difficulty: float, now: float) -> None:
        difficulty = finite(difficulty)
        if difficulty <= 0:
            return
        started = self.round_started
        best = self.workers.get(worker)
        if best is None:
            best = self.workers[worker] = Best()
        best.see(difficulty, now, started)
        best = self.addresses.get(address)
        if best is None:
            best = self.addresses[address] = Best()
        best.see(difficulty, now, started)
        self.pool.see(difficulty, now, started)

    def observe_shares(self, shares: Iterable[tuple[ShareResult, Credentials]], now: float) -> None:
        """Recorded shares (in journal order, all recorded at ``now``): a block candidate's
        share is the last of its round."""
        for result, creds in shares:
            self.observe(creds.name, creds.address, result.share_difficulty, now)
            if result.block_candidate:
                self.end_round(now)

    def end_round(self, now: float) -> None:
        """The pool found a block at ``now``: every round best from then on starts afresh
        (nothing is walked: a round best older than ``round_started`` reads as none)."""
        self.round_started = max(self.round_started, now)

    def view(self, best: Best | None) -> dict[str, Any]:
        """The API's form of one entry (zeros and None when there is none)."""
        current = best is not None and best.round_at is not None
        in_round = current and best.round_at > self.round_started  # type: ignore[union-attr,operator]
        return {
            "best_difficulty": best.difficulty if best else 0.0,
            "best_at": best.at if best else None,
            "round_best_difficulty": best.round_difficulty if in_round and best else 0.0,
            "round_best_at": best.round_at if in_round and best else None,
            "round_started": self.round_started or None,
        }

    def load(
        self,
        rows: Iterable[tuple[str, str, float, float | None, float, float | None]],
        round_started: float,
    ) -> None:
        """The store's rows: (scope, name, best, best_at, round_best, round_best_at)."""
        self.round_started = max(self.round_started, round_started)
        for scope, name, best, at, round_best, round_at in rows:
            if scope == POOL:
                entry = self.pool
            else:
                table = self.workers if scope == WORKER else self.addresses
                entry = table.get(name) or table.setdefault(name, Best())
            if best > entry.difficulty:
                entry.difficulty, entry.at = best, at
            if round_at is not None and round_best > 0 and round_at > self.round_started:
                entry.see(round_best, round_at, self.round_started)
