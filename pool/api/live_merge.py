"""Workers as the whole pool serves them: this process's live state merged with the other
processes' (``pool.ledger.store_live``: their published rows, read into a snapshot on the
store's thread every ``ledger.shared_refresh_seconds``; the API never queries the store here).

The merge: a worker is online when any up process holds a connection of it; connections,
hashrates and share counters are summed over the processes; the last share is the latest;
the difficulty is this process's when it holds a connection, else the most recent other one.
With one process (no shared store) the snapshot is empty and everything is this process's.

``local_rows`` is the other side: this process's workers as rows to publish.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pool.ledger.store_live import LiveSnapshot, LiveWorker
from pool.stats import WorkerStats

if TYPE_CHECKING:
    from pool.hashrate import HashrateMeter
    from pool.server.server import StratumServer

WINDOW_NAMES = {60: "1m", 300: "5m", 3600: "1h"}


def window_name(seconds: int) -> str:
    return WINDOW_NAMES.get(seconds, f"{seconds}s")


def rates(meter: HashrateMeter | None, windows: Sequence[int], now: float) -> dict[str, float]:
    return {window_name(w): meter.hashrate(w, now) if meter else 0.0 for w in windows}


def remote_rates(remote: LiveWorker | None, windows: Sequence[int]) -> dict[str, float]:
    got = dict(remote.hashrate) if remote is not None else {}
    return {window_name(w): got.get(w, 0.0) for w in windows}


def summed(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: a.get(k, 0.0) + b.get(k, 0.0) for k in a}


def local_rows(server: StratumServer, now: float) -> Iterator[LiveWorker]:
    """This process's workers (its stats' and meters'), for ``SharedLedger.live_rows``. The
    names are copied first: the loop may change the workers between two rows."""
    stats, book = server.stats.workers, server.hashrate
    windows = book.windows
    horizon = now - max(windows)
    names = list(stats)
    names += [n for n in book.workers() if n not in stats]
    for name in names:
        w = stats.get(name)
        meter = book.worker(name)
        if w is None and meter is None:
            continue  # forgotten meanwhile
        hashrate: tuple[tuple[int, float], ...] = ()
        if meter is not None and meter.last_share is not None and meter.last_share > horizon:
            hashrate = tuple((win, meter.hashrate(win, now)) for win in windows)
        if w is None:
            yield LiveWorker(name, name.partition(".")[0], hashrate=hashrate)
            continue
        yield LiveWorker(
            name,
            w.address,
            connections=max(w.connections, 0),
            difficulty=w.difficulty,
            hashrate=hashrate,
            accepted=w.accepted,
            accepted_work=w.accepted_work,
            rejected=tuple(sorted(w.rejected.items())),
            blocks=w.blocks,
            last_share=w.last_share,
        )


def live_fields(
    server: StratumServer, snapshot: LiveSnapshot, name: str, now: float
) -> dict[str, Any]:
    """A worker's live part of ``/api/workers/<name>``, merged over the processes."""
    stats: WorkerStats | None = server.stats.workers.get(name)
    remote = snapshot.workers.get(name)
    hashrate = rates(server.hashrate.worker(name), server.hashrate.windows, now)
    if remote is not None:
        hashrate = summed(hashrate, remote_rates(remote, server.hashrate.windows))
    rejected = dict(stats.rejected) if stats else {}
    for reason, n in remote.rejected if remote else ():
        rejected[reason] = rejected.get(reason, 0) + n
    connections = (stats.connections if stats else 0) + (remote.connections if remote else 0)
    difficulty = stats.difficulty if stats and stats.connections > 0 else 0.0
    if not difficulty and remote is not None:
        difficulty = remote.difficulty
    if not difficulty and stats is not None:
        difficulty = stats.difficulty
    lasts = [t for t in (stats and stats.last_share, remote and remote.last_share) if t]
    return {
        "online": connections > 0,
        "connections": connections,
        "hashrate": hashrate,
        "difficulty": difficulty or None,
        "shares": {
            "accepted": (stats.accepted if stats else 0) + (remote.accepted if remote else 0),
            "rejected": rejected,
            "rejected_total": sum(rejected.values()),
            "accepted_difficulty": (stats.accepted_work if stats else 0.0)
            + (remote.accepted_work if remote else 0.0),
        },
        "blocks": (stats.blocks if stats else 0) + (remote.blocks if remote else 0),
        "live_last_share": max(lasts) if lasts else None,
    }


def is_known(server: StratumServer, snapshot: LiveSnapshot, name: str) -> bool:
    return (
        name in server.stats.workers
        or server.hashrate.worker(name) is not None
        or name in snapshot.workers
    )


def is_online(server: StratumServer, snapshot: LiveSnapshot, name: str) -> bool:
    w = server.stats.workers.get(name)
    if w is not None and w.connections > 0:
        return True
    remote = snapshot.workers.get(name)
    return remote is not None and remote.connections > 0


def live_names(server: StratumServer, snapshot: LiveSnapshot) -> tuple[set[str], int]:
    """Every live name (this process's and the others') and how many are online."""
    stats = server.stats.workers
    online = {n for n, w in stats.items() if w.connections > 0}
    online.update(n for n, r in snapshot.workers.items() if r.connections > 0)
    names = stats.keys() | set(server.hashrate.workers()) | snapshot.workers.keys()
    return names, len(online)


def address_rates(
    server: StratumServer, snapshot: LiveSnapshot, address: str, now: float
) -> dict[str, float]:
    """An address's hashrate: this process's meter plus the other processes' workers of it."""
    windows = server.hashrate.windows
    out = rates(server.hashrate.address(address), windows, now)
    for name in snapshot.by_address.get(address, ()):
        out = summed(out, remote_rates(snapshot.workers[name], windows))
    return out


def others_rate(
    snapshot: LiveSnapshot, window: int, *, worker: str | None = None, address: str | None = None
) -> float:
    """The other processes' hashrate over ``window`` of one worker or of an address's workers."""
    names = [worker] if worker is not None else snapshot.by_address.get(address or "", [])
    total = 0.0
    for name in names:
        remote = snapshot.workers.get(name)
        if remote is not None:
            total += dict(remote.hashrate).get(window, 0.0)
    return total


def has_address(server: StratumServer, snapshot: LiveSnapshot, address: str) -> bool:
    return server.hashrate.address(address) is not None or address in snapshot.by_address


def merged_stats(
    local: Mapping[str, WorkerStats], snapshot: LiveSnapshot
) -> Mapping[str, WorkerStats]:
    """The workers as the webhooks monitor watches them: this process's, with the other
    processes' connections and last shares merged in (copies: the local stats are not
    touched), and the workers only the others hold."""
    if not snapshot.workers:
        return local
    out = dict(local)
    for name, remote in snapshot.workers.items():
        mine = local.get(name)
        if mine is None:
            out[name] = WorkerStats(
                name=name,
                address=remote.address,
                accepted=remote.accepted,
                accepted_work=remote.accepted_work,
                blocks=remote.blocks,
                last_share=remote.last_share,
                difficulty=remote.difficulty,
                connections=remote.connections,
            )
            continue
        lasts = [t for t in (mine.last_share, remote.last_share) if t is not None]
        out[name] = dataclasses.replace(
            mine,
            connections=mine.connections + remote.connections,
            last_share=max(lasts) if lasts else None,
        )
    return out


class MonitorView:
    """The workers the webhooks monitor watches (``pool.webhooks.WorkerWatch``: offline when
    the last share is ``offline_seconds`` old). ``merged_stats``, and two cases it misses:

    * a worker held only by another process that stopped (its rows leave the snapshot when
      its heartbeat goes stale) is kept, with no connection, until ``keep_seconds`` after its
      last share, so its worker_offline still fires;
    * while the snapshot is stale (this process's store degraded), the other processes'
      workers are left out rather than shown with frozen last shares (which would send a
      worker_offline for every one of them, still mining, then a worker_back each).
    """

    def __init__(self, keep_seconds: float) -> None:
        self.keep_seconds = keep_seconds
        self.remote: dict[str, WorkerStats] = {}  # the last view's workers only others held
        self.gone: dict[str, WorkerStats] = {}  # those whose process stopped

    def __call__(
        self,
        local: Mapping[str, WorkerStats],
        snapshot: LiveSnapshot,
        stale: bool,
        now: float,
    ) -> Mapping[str, WorkerStats]:
        if stale:
            return local
        merged = merged_stats(local, snapshot)
        for name, stats in self.remote.items():
            if name not in merged:
                self.gone[name] = dataclasses.replace(stats, connections=0)
        self.remote = {n: w for n, w in merged.items() if n not in local}
        for name in [n for n in self.gone if n in merged]:
            del self.gone[name]  # back on some process
        for name in [n for n, w in self.gone.items() if _older(w, now, self.keep_seconds)]:
            del self.gone[name]
        return {**self.gone, **merged} if self.gone else merged


def _older(stats: WorkerStats, now: float, seconds: float) -> bool:
    return stats.last_share is None or now - stats.last_share > seconds
