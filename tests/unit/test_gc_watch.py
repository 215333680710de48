"""The garbage collector's passes, timed (pool/gc_watch.py): real passes through gc.callbacks,
and a long full pass logged and kept as the longest."""

from __future__ import annotations

import gc
import time

from pool.api.metrics import render
from pool.gc_watch import LONG_PAUSE_SECONDS, GcWatch, gc_metrics


def test_real_passes_are_counted_by_generation() -> None:
    watch = GcWatch()
    gc.callbacks.append(watch)
    try:
        for _ in range(3):
            a: list[object] = []
            a.append(a)  # a cycle: only the collector frees it
            del a
            gc.collect(2)
        gc.collect(0)
    finally:
        gc.callbacks.remove(watch)
    assert watch.passes[2] >= 3 and watch.passes[0] >= 1
    assert watch.pause_seconds[2] > 0 and watch.longest > 0
    assert watch.started is None  # every start had its stop


def test_a_long_full_pass_is_the_longest_and_shows_in_metrics() -> None:
    watch = GcWatch()
    watch("start", {"generation": 2})
    time.sleep(LONG_PAUSE_SECONDS * 1.5)  # stands for the collector walking many objects
    watch("stop", {"generation": 2, "collected": 0})
    assert watch.passes == [0, 0, 1]
    assert watch.longest >= LONG_PAUSE_SECONDS
    watch("stop", {"generation": 2})  # a stop without a start (installed mid-pass): ignored
    assert watch.passes == [0, 0, 1]
    text = render(gc_metrics("stratum_pool_", watch))
    assert 'stratum_pool_gc_passes_total{generation="2"} 1' in text
    assert "stratum_pool_gc_full_pass_longest_seconds" in text
