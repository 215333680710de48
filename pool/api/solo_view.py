"""Best shares and SOLO miners in the API (read-only; from memory, never a table read).

``best_share``: a worker's, an address's or the pool's best achieved share difficulty, all
time and in the current block round (``pool.best_share``). ``solo``: for a worker mining on a
SOLO port, its chance of finding a block at its hashrate (the 1 h window) and the current
network difficulty D (the simulated one when the chain simulation is on): a block takes
D * 2^32 hashes on average, so within t seconds p = 1 - exp(-hashrate * t / (D * 2^32)).
The SOLO workers are read from the live connections at most once per ``cache_seconds``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pool.bitcoin import target_to_difficulty
from pool.hashrate import HASHES_PER_DIFF1

if TYPE_CHECKING:
    from pool.server.server import StratumServer

DAY = 86_400.0
PERIODS = {"day": DAY, "week": 7 * DAY, "year": 365 * DAY}
SOLO_LIST = 50  # SOLO workers listed in /api/pool (the fastest first); the count is exact
HASHRATE_WINDOW = 3600


def chance(hashrate: float, difficulty: float | None) -> dict[str, Any]:
    """P(at least one block) per day, week and year for ``hashrate`` (H/s) at network
    difficulty ``difficulty``, and the expected time to a block (None without hashrate)."""
    if not difficulty or difficulty <= 0 or hashrate <= 0:
        return {**dict.fromkeys(PERIODS, 0.0), "expected_seconds": None}
    per_block = difficulty * HASHES_PER_DIFF1
    out: dict[str, Any] = {
        name: -math.expm1(-hashrate * seconds / per_block) for name, seconds in PERIODS.items()
    }
    out["expected_seconds"] = per_block / hashrate
    return out


def network_difficulty(server: StratumServer) -> float | None:
    """What a share must reach to be a block now (the simulated difficulty when it is on)."""
    job = server.jobs.current
    return target_to_difficulty(job.block_target) if job is not None else None


@dataclass
class _Snapshot:
    names: dict[str, str]  # SOLO worker -> address
    built: float  # monotonic


class SoloView:
    def __init__(self, cache_seconds: float = 1.0) -> None:
        self.cache_seconds = cache_seconds
        self._snapshot: _Snapshot | None = None

    def solo_workers(self, server: StratumServer) -> dict[str, str]:
        """The workers authorized on a SOLO port's live connections (name -> address)."""
        mono = time.monotonic()
        snap = self._snapshot
        if snap is not None and 0.0 <= mono - snap.built < self.cache_seconds:
            return snap.names
        names: dict[str, str] = {}
        for session in list(server.sessions.values()):
            core = session.core
            if core is None or core.settings.solo is None:
                continue
            for creds in core.workers.values():
                names[creds.name] = creds.address
        self._snapshot = _Snapshot(names, mono)
        return names

    def worker_fields(
        self, server: StratumServer, name: str, hashrate: dict[str, float]
    ) -> dict[str, Any]:
        """A worker's ``best_share`` and ``solo`` (None unless it mines on a SOLO port)."""
        best = server.ctx.best
        solo = None
        if name in self.solo_workers(server):
            rate = hashrate.get("1h", 0.0)
            solo = {"chance": chance(rate, network_difficulty(server)), "hashrate": rate}
        return {"best_share": best.view(best.workers.get(name)), "solo": solo}

    def address_fields(
        self, server: StratumServer, address: str, hashrate: dict[str, float]
    ) -> dict[str, Any]:
        best = server.ctx.best
        solo_here = address in self.solo_workers(server).values()
        rate = hashrate.get("1h", 0.0)
        return {
            "best_share": best.view(best.addresses.get(address)),
            "solo": {"chance": chance(rate, network_difficulty(server)), "hashrate": rate}
            if solo_here
            else None,
        }

    def pool_fields(self, server: StratumServer, now: float) -> dict[str, Any]:
        """The pool's best share and the SOLO summary: the ports, the network difficulty the
        chances are computed at, and the fastest SOLO workers with their best and chance."""
        best = server.ctx.best
        names = self.solo_workers(server)
        difficulty = network_difficulty(server)
        book = server.hashrate
        rated = []
        for name, address in names.items():
            meter = book.worker(name)
            rate = meter.hashrate(HASHRATE_WINDOW, now) if meter is not None else 0.0
            rated.append((rate, name, address))
        rated.sort(key=lambda r: (-r[0], r[1]))
        return {
            "best_share": best.view(best.pool),
            "solo": {
                "ports": [p for p in server.port_list if p.get("scheme") == "solo"],
                "network_difficulty": difficulty,
                "workers": len(names),
                "top": [
                    {
                        "name": name,
                        "address": address,
                        "hashrate": rate,
                        "best_share": best.view(best.workers.get(name)),
                        "chance": chance(rate, difficulty),
                    }
                    for rate, name, address in rated[:SOLO_LIST]
                ],
            },
        }
