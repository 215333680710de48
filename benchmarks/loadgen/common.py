"""Shared bits of the load generator: output, clocks, the pool process seen through /proc."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

Spec = dict[str, Any]
now = time.monotonic  # CLOCK_MONOTONIC: the same clock in every process of this machine

SUBSCRIBE_ID = 1
FIRST_AUTHORIZE_ID = 2
TRUE_MARKS = (b'"result":true', b'"result": true')


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def raise_nofile() -> int:
    """Raise the soft open-files limit to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# ------------------------------------------------------------------ the pool process, from /proc


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads) in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_tree_cpu_seconds(pid: int) -> float:
    """``proc_cpu_seconds`` of ``pid`` and of its descendants (a pool of several worker
    processes: the supervisor and its workers), those alive now."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += proc_cpu_seconds(p)
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children", "rb") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return total


def proc_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cores_busy() -> dict[int, tuple[int, int]]:
    """Per CPU: (busy ticks, total ticks) from /proc/stat (busy: all but idle and iowait)."""
    out = {}
    with open("/proc/stat", "rb") as f:
        for line in f:
            if line.startswith(b"cpu") and line[3:4].isdigit():
                name, *values = line.split()
                ticks = [int(v) for v in values[:8]]
                total = sum(ticks)
                out[int(name[3:])] = (total - ticks[3] - ticks[4], total)
    return out


class Meter:
    """Snapshots over a window: the wall clock, the pool's CPU, this process's CPU, and how
    busy the pool's core and this process's core were (anything beyond the pool's and the
    generator's own use is other load on the machine, which makes the figures noisy)."""

    def __init__(self, pool_pid: int) -> None:
        self.pool_pid = pool_pid
        self.t0 = self.pool0 = self.own0 = 0.0
        self.cores0: dict[int, tuple[int, int]] = {}

    def start(self) -> None:
        self.cores0 = cores_busy()
        self.t0, self.pool0, self.own0 = (
            now(),
            proc_tree_cpu_seconds(self.pool_pid),
            time.process_time(),
        )

    def stop(self) -> dict[str, float]:
        wall = now() - self.t0
        pool = proc_tree_cpu_seconds(self.pool_pid) - self.pool0
        own = time.process_time() - self.own0
        cores = cores_busy()
        result = {
            "seconds": round(wall, 3),
            "pool_cpu_seconds": round(pool, 3),
            "pool_cpu_share": round(pool / wall, 3),
            "loadgen_cpu_seconds": round(own, 3),
            "loadgen_cpu_share": round(own / wall, 3),
        }
        for label, pid in (("pool_core", self.pool_pid), ("loadgen_core", os.getpid())):
            cpus = os.sched_getaffinity(pid)
            if len(cpus) == 1:
                (cpu,) = cpus
                busy0, total0 = self.cores0.get(cpu, (0, 0))
                busy1, total1 = cores.get(cpu, (0, 0))
                result[f"{label}_busy_share"] = round((busy1 - busy0) / max(total1 - total0, 1), 3)
        return result


def percentiles(values: list[float], scale: float = 1000.0) -> dict[str, float | int | None]:
    """count, p50, p99, max (times ``scale``: seconds -> ms by default)."""
    if not values:
        return {"count": 0, "p50": None, "p99": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * scale, 3)

    return {"count": len(ordered), "p50": at(0.50), "p99": at(0.99), "max": at(1.0)}


def stratum_prevhash(block_hash: str) -> str:
    """Stratum's prevhash of a block whose RPC (display) hash is ``block_hash``: the display
    hex with the order of its eight 4-byte words reversed."""
    words = [block_hash[i : i + 8] for i in range(0, 64, 8)]
    return "".join(reversed(words))


# ------------------------------------------------------------------ miners


async def poll_until(done: Callable[[], bool], deadline: float, interval: float = 0.02) -> None:
    """Sleep in short steps until ``done()`` or the (monotonic) deadline. Polling a counter is
    cheaper under load than waking a waiter on every event."""
    while True:
        if done() or now() >= deadline:
            return
        await asyncio.sleep(interval)
