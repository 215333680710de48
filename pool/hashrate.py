"""Hashrate over sliding windows, per worker, per payout address and for the pool.

Pure: no I/O, no clock (``now`` is always passed in, seconds on any consistent clock).

A share at difficulty ``d`` stands for ``d * 2**32`` hashes on average, so the hashrate over a
window is ``sum(difficulty of shares in the window) * 2**32 / window``. Three things make that
estimate honest:

* **Effective window.** A meter knows when it started (a worker: when it authorized). Over the
  first ``window`` seconds it divides by ``now - started``, not by the full window, so a miner that
  connected 30 s ago is not reported at 10 % of its speed on the 5-minute graph. ``now - started``
  is floored at ``MIN_WINDOW`` = 1 s so the very first moments cannot divide by ~0.
* **Bounded memory, O(1) adds.** Each window keeps a ring of ``buckets + 1`` time buckets of
  ``window / buckets`` seconds (default 120 buckets: 0.5 s for 1 minute, 2.5 s for 5 minutes,
  30 s for 1 hour), each holding the work and the share count that fell in it. An add touches one
  bucket per window (plus clearing buckets that time has passed, each at most once per turn of
  the ring); a query sums one ring (in C: ``math.fsum`` over array slices). Memory is
  3 * 121 * 2 numbers per meter, about 6 KB, whatever the share rate, allocated at the
  meter's first share (an idle worker's meter is a few hundred bytes).
* **No bias at the bucket edges.** The window ``(now - window, now]`` starts inside the oldest
  bucket. That bucket is counted pro rata: with a fraction ``f`` of its (occupied) time span inside
  the window, ``f`` of its work counts. For shares arriving at a constant rate this is exact in
  expectation, so the estimate is unbiased at any ``now``, not only at bucket boundaries. When the
  rate changes within that one bucket the error is at most the bucket's own work, i.e. at most
  1/120 = 0.83 % of the window's work at a steady rate. (Counting the whole oldest bucket instead
  would overstate by up to one bucket, 0.83 %, and 0.42 % on average.)

Statistics, for the tests and the dashboard: with ``n`` shares expected in a window at one
difficulty, the estimate's relative standard deviation is ``1/sqrt(n)`` (Poisson), e.g. 5.8 % for
a worker at one share per 5 s on the 5-minute window (60 shares: 13 %), and 3.7 % for the hour
(720 shares). Shares of mixed difficulty widen it to ``sqrt(E[d^2]) / E[d] / sqrt(n)``.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from typing import Any

HASHES_PER_DIFF1 = 2**32
WINDOWS: tuple[int, ...] = (60, 300, 3600)
BUCKETS_PER_WINDOW = 120
MIN_WINDOW = 1.0  # seconds: the effective window never goes below this
_EMPTY_WORK = array("d")
_EMPTY_COUNT = array("q")


class _Ring:
    """Work and share counts of one window in ``buckets + 1`` time buckets."""

    __slots__ = ("buckets", "count", "head", "size", "width", "window", "work")

    def __init__(self, window: float, buckets: int, now: float) -> None:
        self.window = float(window)
        self.buckets = buckets
        self.size = buckets + 1
        self.width = self.window / buckets
        # The buckets are allocated at the first add: an idle worker's meter costs ~nothing.
        self.work = _EMPTY_WORK
        self.count = _EMPTY_COUNT
        self.head = self._index(now)  # absolute index of the newest bucket the ring holds

    def _index(self, t: float) -> int:
        return math.floor(t / self.width)

    def add(self, difficulty: float, t: float, count: int = 1) -> None:
        if not self.work:
            self.work = array("d", bytes(8 * self.size))
            self.count = array("q", bytes(8 * self.size))
        i = self._index(t)
        if i > self.head:
            for j in range(max(self.head + 1, i - self.size + 1), i + 1):
                slot = j % self.size
                self.work[slot] = 0.0
                self.count[slot] = 0
            self.head = i
        elif i <= self.head - self.size:
            return  # older than anything the ring holds: outside every window
        slot = i % self.size
        self.work[slot] += difficulty
        self.count[slot] += count

    def totals(self, now: float, started: float) -> tuple[float, float]:
        """(work, shares) in ``(now - window, now]``; the oldest bucket pro rata."""
        if not self.work:
            return 0.0, 0.0
        i_now = self._index(now)
        oldest = i_now - self.buckets  # the bucket the window's start falls in
        lo = max(oldest, self.head - self.size + 1)
        hi = min(i_now, self.head)
        if lo > hi:
            return 0.0, 0.0
        start = lo % self.size
        stop = start + hi - lo + 1
        if stop <= self.size:
            work = math.fsum(self.work[start:stop])
            shares = float(sum(self.count[start:stop]))
        else:
            stop -= self.size
            work = math.fsum(self.work[start:]) + math.fsum(self.work[:stop])
            shares = float(sum(self.count[start:]) + sum(self.count[:stop]))
        if lo == oldest and self.count[start]:
            end = (oldest + 1) * self.width
            occupied = max(oldest * self.width, started)  # nothing was added before the start
            if end > occupied:
                inside = end - max(now - self.window, occupied)
                outside = 1.0 - min(max(inside / (end - occupied), 0.0), 1.0)
                work -= outside * self.work[start]
                shares -= outside * self.count[start]
        return max(work, 0.0), max(shares, 0.0)


class HashrateMeter:
    """Accepted work of one worker, one address or the whole pool over sliding windows."""

    def __init__(
        self,
        now: float,
        windows: Sequence[int] = WINDOWS,
        buckets: int = BUCKETS_PER_WINDOW,
    ) -> None:
        """``now``: when the meter started (a worker: when it authorized). ``buckets``: per
        window; the bucket edge error is at most 1/buckets of a window's work (see module doc)."""
        if not windows or any(int(w) != w or w <= 0 for w in windows):
            raise ValueError(f"windows must be positive whole seconds, got {list(windows)!r}")
        if buckets < 1:
            raise ValueError(f"buckets must be >= 1, got {buckets}")
        self.windows: tuple[int, ...] = tuple(int(w) for w in windows)
        self.started = now
        self.last_share: float | None = None
        self.total_work = 0.0  # since the start, for totals and tests
        self.total_shares = 0
        self._rings = {w: _Ring(w, buckets, now) for w in self.windows}

    def add(self, difficulty: float, now: float, count: int = 1) -> None:
        """An accepted share of ``difficulty`` at ``now`` (or ``count`` shares of that total
        difficulty, all at ``now``: the shares of one read)."""
        if not (math.isfinite(difficulty) and difficulty >= 0):
            raise ValueError(f"share difficulty must be a finite number >= 0, got {difficulty!r}")
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        for ring in self._rings.values():
            ring.add(difficulty, now, count)
        self.total_work += difficulty
        self.total_shares += count
        if self.last_share is None or now > self.last_share:
            self.last_share = now

    def _ring(self, window: int) -> _Ring:
        try:
            return self._rings[window]
        except KeyError:
            raise ValueError(f"no {window} s window; this meter has {self.windows}") from None

    def effective_window(self, window: int, now: float) -> float:
        """Seconds the ``window`` really covers: ``min(window, now - started)``, at least 1 s."""
        self._ring(window)
        return max(min(float(window), now - self.started), MIN_WINDOW)

    def work(self, window: int, now: float) -> float:
        """Sum of share difficulties in the last ``window`` seconds."""
        return self._ring(window).totals(now, self.started)[0]

    def shares(self, window: int, now: float) -> int:
        """Number of shares in the last ``window`` seconds (the oldest bucket pro rata, rounded)."""
        return round(self._ring(window).totals(now, self.started)[1])

    def hashrate(self, window: int, now: float) -> float:
        """Hashes per second over the last ``window`` seconds (the effective window)."""
        return self.work(window, now) * HASHES_PER_DIFF1 / self.effective_window(window, now)

    def idle_since(self) -> float:
        """The last share's time, or the start when there was none."""
        return self.started if self.last_share is None else self.last_share

    def snapshot(self, now: float) -> dict[str, Any]:
        """Plain data: hashrate (H/s), shares and work per window (keys: seconds as strings)."""
        hashrate: dict[str, float] = {}
        shares: dict[str, int] = {}
        work: dict[str, float] = {}
        for w in self.windows:
            total_work, total_shares = self._rings[w].totals(now, self.started)
            key = str(w)
            work[key] = total_work
            shares[key] = round(total_shares)
            hashrate[key] = total_work * HASHES_PER_DIFF1 / self.effective_window(w, now)
        return {
            "hashrate": hashrate,
            "shares": shares,
            "work": work,
            "started": self.started,
            "last_share": self.last_share,
        }


class HashrateBook:
    """Meters per worker, per payout address and for the pool."""

    def __init__(self, now: float, windows: Sequence[int] = WINDOWS) -> None:
        self.windows: tuple[int, ...] = tuple(windows)
        self.pool = HashrateMeter(now, self.windows)
        self._workers: dict[str, HashrateMeter] = {}
        self._worker_address: dict[str, str] = {}
        self._address_workers: dict[str, int] = {}  # workers mapped to each address
        self._addresses: dict[str, HashrateMeter] = {}

    def start_worker(self, worker: str, address: str, now: float) -> HashrateMeter:
        """A worker authorized: its meter starts now (the unbiased start of its windows).

        A worker already known keeps its meter and history (a reconnect is not a new start); an
        address gets its meter when its first worker starts.
        """
        self._set_address(worker, address)
        if address not in self._addresses:
            self._addresses[address] = HashrateMeter(now, self.windows)
        meter = self._workers.get(worker)
        if meter is None:
            meter = self._workers[worker] = HashrateMeter(now, self.windows)
        return meter

    def add_share(
        self, *, worker: str, address: str, difficulty: float, now: float, count: int = 1
    ) -> None:
        """An accepted share (or ``count`` shares of total ``difficulty`` at ``now``). A worker
        never started is started now (call ``start_worker`` at authorize time: a meter started
        at its first share over-reports its first seconds)."""
        meter = self._workers.get(worker)
        if meter is None or address not in self._addresses:
            meter = self.start_worker(worker, address, now)
        elif self._worker_address.get(worker) != address:
            self._set_address(worker, address)
        meter.add(difficulty, now, count)
        self._addresses[address].add(difficulty, now, count)
        self.pool.add(difficulty, now, count)

    def forget_worker(self, name: str) -> None:
        """Drop a worker's meter; its address's meter too once no worker of it is left and it
        never had a share (an address with shares keeps its history until ``prune``)."""
        self._workers.pop(name, None)
        address = self._set_address(name, None)
        if address is not None and not self._address_workers.get(address):
            meter = self._addresses.get(address)
            if meter is not None and meter.last_share is None:
                del self._addresses[address]

    def _set_address(self, worker: str, address: str | None) -> str | None:
        """Map ``worker`` to ``address`` (None: unmap), keeping the per-address worker counts;
        returns the address it had."""
        before = self._worker_address.get(worker)
        if before == address:
            return before
        counts = self._address_workers
        if before is not None:
            counts[before] -= 1
            if counts[before] <= 0:
                del counts[before]
            del self._worker_address[worker]
        if address is not None:
            self._worker_address[worker] = address
            counts[address] = counts.get(address, 0) + 1
        return before

    def worker(self, name: str) -> HashrateMeter | None:
        return self._workers.get(name)

    def address(self, addr: str) -> HashrateMeter | None:
        return self._addresses.get(addr)

    def workers(self) -> list[str]:
        return list(self._workers)

    @property
    def worker_count(self) -> int:
        """How many workers have a meter (without copying their names)."""
        return len(self._workers)

    def addresses(self) -> list[str]:
        return list(self._addresses)

    def snapshot(self, now: float) -> dict[str, Any]:
        """Plain data (JSON-ready): the pool, every address and every worker."""
        workers = {
            name: {"address": self._worker_address.get(name, ""), **meter.snapshot(now)}
            for name, meter in self._workers.items()
        }
        by_address: dict[str, list[str]] = {}
        for name in self._workers:
            by_address.setdefault(self._worker_address.get(name, ""), []).append(name)
        addresses = {
            addr: {"workers": sorted(by_address.get(addr, [])), **meter.snapshot(now)}
            for addr, meter in self._addresses.items()
        }
        return {
            "time": now,
            "windows": list(self.windows),
            "pool": self.pool.snapshot(now),
            "addresses": addresses,
            "workers": workers,
        }

    def prune(self, now: float, idle_seconds: float | None = None) -> None:
        """Forget workers and addresses without a share for ``idle_seconds`` (default: the
        largest window, after which their meters read zero anyway). The pool meter stays."""
        idle = float(max(self.windows)) if idle_seconds is None else idle_seconds
        cutoff = now - idle
        for name in [n for n, m in self._workers.items() if m.idle_since() < cutoff]:
            del self._workers[name]
            self._set_address(name, None)
        for addr in [a for a, m in self._addresses.items() if m.idle_since() < cutoff]:
            if not self._address_workers.get(addr):
                del self._addresses[addr]
