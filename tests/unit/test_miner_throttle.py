"""The bundled miner's throttle: a miner that fell behind (CPU busy) keeps its rate steady."""

from __future__ import annotations

import pytest

from pool.miner import MAX_THROTTLE_DEBT, throttle


def test_ahead_sleeps_behind_a_little_goes_on() -> None:
    assert throttle(1500, 1000.0, 1.0) == (pytest.approx(0.5), 0.0)
    assert throttle(1000, 1000.0, 1.2) == (0.0, 0.0)  # within the debt allowed


def test_far_behind_is_forgiven_not_caught_up() -> None:
    """Simulated: the CPU stalls the miner for 10 s, then it may hash as fast as it likes.
    With the stall forgiven it must never run faster than its rate for more than the debt."""
    rate, start, now, done = 1000.0, 0.0, 0.0, 0
    stalled = False
    for _ in range(200):
        pause, forgive = throttle(done, rate, now - start)
        start += forgive
        now += pause
        if not stalled and now >= 5.0:
            now += 10.0  # the stall
            stalled = True
            continue
        done += 100  # one batch, taking no time
    assert done / rate <= (now - start) + MAX_THROTTLE_DEBT + 1e-9
    # after the stall the miner's pace over the last 10 000 hashes is its rate (no burst)
    assert (now - 15.0) >= (done - 5000) / rate - MAX_THROTTLE_DEBT - 0.1 - 1e-9
