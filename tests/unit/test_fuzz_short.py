"""The short version of the long fuzz run (``make fuzz``: a million inputs): 20 000 inputs
against framing, codec and the per-connection core, whole and byte by byte, with a fixed seed
(reproducible) and with a fresh one each run (printed on failure). About 25 s on one core."""

from __future__ import annotations

import os

import pytest

from tests.fuzz import engine


def test_twenty_thousand_inputs_break_no_invariant() -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    stats = engine.run(15_000, 20_260_101)
    fresh = engine.run(5_000, seed)  # a FuzzFailure names the seed and the input to replay
    assert stats.inputs + fresh.inputs == 20_000
    # The inputs reach every part: real requests of each kind, accepted shares, over-long
    # lines, and each way a connection ends.
    for kind in ("Subscribe", "Authorize", "Submit", "Configure", "SuggestDifficulty"):
        assert stats.events[kind] > 100, stats.events
    assert stats.events["InvalidRequest"] > 1000 and stats.shares > 100
    assert stats.line_too_long > 100
    assert set(stats.closes) >= {"protocol error", "peer closed", "idle timeout"}


def test_inputs_are_reproducible_from_seed_and_index() -> None:
    rig = engine.CoreRig.make()
    assert rig.job is not None
    first = [engine.make_input(7, i, rig.job.job_id) for i in range(50)]
    assert [engine.make_input(7, i, rig.job.job_id) for i in range(50)] == first
    assert [engine.make_input(8, i, rig.job.job_id) for i in range(50)] != first
    assert engine.replay_hint(7, 1234) == "--seed 7 --start 1000 --count 235"


def test_a_broken_invariant_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks can fail: with the input's request ids hidden from the checker, the core's
    (correct) answers look like answers to no request, and the run stops, saying which input
    to replay."""
    monkeypatch.setattr(engine, "request_ids", lambda lines: [None])
    with pytest.raises(engine.FuzzFailure, match=r"replay: --seed 5 --start 0 --count \d+"):
        engine.run(2_000, 5)
