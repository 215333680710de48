"""The garbage collector's pauses, watched: a full (generation 2) pass walks every tracked
object, so with thousands of connections it stops the event loop for tens of milliseconds,
and a miner's answer or a new block's notify waits that long. ``settle()`` at start moves
what lives as long as the pool out of those passes (``gc.freeze``); ``GcWatch`` times every
pass through ``gc.callbacks`` (two clock reads), counts them and logs a full pass longer
than ``LONG_PAUSE_SECONDS``, so a stall in the figures can be told apart from the pool's own
work. /metrics shows the counts (``stratum_pool_gc_*``)."""

from __future__ import annotations

import gc
import time
from typing import Any

import structlog

log = structlog.get_logger("pool.gc")

LONG_PAUSE_SECONDS = 0.02  # a full pass this long is logged (warning level: a stall)


class GcWatch:
    def __init__(self) -> None:
        self.started: float | None = None
        self.passes = [0, 0, 0]  # per generation
        self.pause_seconds = [0.0, 0.0, 0.0]
        self.longest = 0.0  # of the full passes

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
            return
        if self.started is None:
            return
        took = time.perf_counter() - self.started
        self.started = None
        generation = int(info.get("generation", 0))
        if not 0 <= generation <= 2:
            return
        self.passes[generation] += 1
        self.pause_seconds[generation] += took
        if generation == 2:
            self.longest = max(self.longest, took)
            if took >= LONG_PAUSE_SECONDS:
                log.warning("gc_full_pass", seconds=round(took, 4), collected=info.get("collected"))


WATCH = GcWatch()


def settle() -> GcWatch:
    """At the end of the start: collect, freeze what exists (it lives as long as the pool),
    and start timing the passes (once per process)."""
    gc.collect()
    gc.freeze()
    if WATCH not in gc.callbacks:
        gc.callbacks.append(WATCH)
    return WATCH


def gc_metrics(prefix: str, watch: GcWatch = WATCH) -> list[Any]:
    """The collector's passes and pauses for /metrics."""
    from pool.api.metrics import counter, gauge, sample

    generations = range(3)
    return [
        counter(
            prefix + "gc_passes_total",
            "Garbage-collector passes, by generation (2: full).",
            [sample(watch.passes[g], {"generation": str(g)}) for g in generations],
        ),
        counter(
            prefix + "gc_pause_seconds_total",
            "Time the event loop stood still in garbage-collector passes, by generation.",
            [sample(watch.pause_seconds[g], {"generation": str(g)}) for g in generations],
        ),
        gauge(
            prefix + "gc_full_pass_longest_seconds",
            "The longest full garbage-collector pass since the start.",
            watch.longest,
        ),
    ]
