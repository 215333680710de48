"""The simulated network difficulty: Bitcoin's retarget rule, scripted events, persistence.

Known answers are Bitcoin Core's own ``src/test/pow_tests.cpp`` vectors (real mainnet headers:
the first retarget at block 32256, ``1d00ffff -> 1d00d86a``, and the clamp/limit cases).
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from pool.bitcoin import DIFF1_TARGET, bits_to_target, difficulty_to_target, target_to_bits
from pool.chain_sim import (
    MIN_DIFFICULTY,
    SIM_POW_LIMIT,
    ChainSim,
    Retarget,
    SimEvent,
    bitcoin_retarget,
    compact_target,
)

T0 = 1_700_000_000.0
MAINNET_POW_LIMIT = (1 << 224) - 1  # Core's mainnet powLimit 00000000ffff...ff


def make(**kw: Any) -> ChainSim:
    args: dict[str, Any] = {
        "initial_difficulty": 1.0,
        "retarget_interval": 10,
        "target_spacing": 60.0,
        "start_time": T0,
    }
    args.update(kw)
    return ChainSim(**args)


def feed_period(
    sim: ChainSim, first_height: int, first_time: float, timespan: float
) -> list[Retarget]:
    """One full period of evenly spaced blocks whose first-to-last timespan is ``timespan``."""
    n = sim.retarget_interval
    changes: list[Retarget] = []
    for i in range(n):
        t = first_time + (timespan * i / (n - 1) if n > 1 else 0.0)
        changes += sim.on_block(first_height + i, t)
    return changes


def roundtrip(sim: ChainSim, events: tuple[SimEvent, ...] = ()) -> ChainSim:
    state = json.loads(json.dumps(sim.to_state()))
    return ChainSim.from_state(state, events=events)


# -- known answers: Bitcoin Core's pow_tests.cpp (mainnet headers) --------------------------------
@pytest.mark.parametrize(
    ("bits", "first_time", "last_time", "new_bits", "pow_limit"),
    [
        # get_next_work: block 30240 (first of the period) and 32255 (last), no clamp
        (0x1D00FFFF, 1261130161, 1262152739, 0x1D00D86A, MAINNET_POW_LIMIT),
        # get_next_work_pow_limit: blocks 0 and 2015, capped at the mainnet pow limit
        (0x1D00FFFF, 1231006505, 1233061996, 0x1D00FFFF, MAINNET_POW_LIMIT),
        # get_next_work_lower_limit_actual: blocks 66528 and 68543, clamped to 1/4 the timespan
        (0x1C05A3F4, 1279008237, 1279297671, 0x1C0168FD, MAINNET_POW_LIMIT),
        # get_next_work_upper_limit_actual: block 46367 (first time not a real block), clamped x4
        (0x1C387F6F, 1263163443, 1269211443, 0x1D00E1FD, MAINNET_POW_LIMIT),
    ],
)
def test_core_known_answers(
    bits: int, first_time: int, last_time: int, new_bits: int, pow_limit: int
) -> None:
    new = bitcoin_retarget(
        bits_to_target(bits), first_time, last_time, 2016, 600, pow_limit=pow_limit
    )
    assert target_to_bits(new) == new_bits
    assert new == bits_to_target(new_bits)  # already in compact form


def test_first_mainnet_retarget_through_the_simulator() -> None:
    """Block 32256 through ChainSim itself: 2016 blocks, the first and last at their real times."""
    sim = ChainSim(
        initial_difficulty=1.0,
        retarget_interval=2016,
        target_spacing=600,
        start_time=1261130161,
    )
    changes: list[Retarget] = []
    for height in range(30240, 32256):
        t = 1262152739 if height == 32255 else 1261130161 + (height - 30240)
        changes += sim.on_block(height, t)
    assert sim.bits == 0x1D00D86A
    assert [c.kind for c in changes] == ["retarget"]
    assert changes[0].height == 32255
    assert changes[0].actual_timespan == 1022578
    assert changes[0].expected_timespan == 1209600
    assert changes[0].new_difficulty == pytest.approx(1.1828995343128408, rel=1e-15)


# -- the retarget rule ----------------------------------------------------------------------------
def test_measured_timespan_on_schedule_leaves_difficulty_unchanged() -> None:
    sim = make()
    changes = feed_period(sim, 0, T0, timespan=sim.expected_timespan)
    assert len(changes) == 1 and changes[0].kind == "retarget"
    assert sim.target == DIFF1_TARGET
    assert sim.difficulty == 1.0
    assert changes[0].actual_timespan == changes[0].expected_timespan == 600.0


def test_blocks_exactly_spacing_apart_raise_difficulty_by_core_off_by_one() -> None:
    """Only interval-1 gaps are measured against interval * spacing (Core's off-by-one)."""
    sim = make()
    for i in range(10):
        sim.on_block(i, T0 + 60.0 * i)
    assert sim.target == compact_target(DIFF1_TARGET * 9 // 10)
    assert sim.difficulty == pytest.approx(10 / 9, rel=1e-4)
    assert sim.history[-1].actual_timespan == 540.0


def test_twice_too_slow_halves_difficulty() -> None:
    sim = make()
    feed_period(sim, 0, T0, timespan=2 * 600)
    assert sim.target == 2 * DIFF1_TARGET
    assert sim.difficulty == 0.5
    feed_period(sim, 10, T0 + 10_000, timespan=2 * 600)
    assert sim.target == 4 * DIFF1_TARGET
    assert sim.difficulty == 0.25


def test_ten_times_too_slow_is_clamped_to_a_quarter() -> None:
    sim = make()
    (change,) = feed_period(sim, 0, T0, timespan=10 * 600)
    assert sim.target == 4 * DIFF1_TARGET
    assert sim.difficulty == 0.25
    assert change.actual_timespan == 6000.0  # recorded before clamping
    assert change.change == pytest.approx(-0.75)


def test_ten_times_too_fast_is_clamped_to_four_times() -> None:
    sim = make()
    feed_period(sim, 0, T0, timespan=600 / 10)
    assert sim.target == DIFF1_TARGET // 4
    assert sim.difficulty == 4.0


def test_helper_clamps_with_other_factors_and_millisecond_times() -> None:
    old = DIFF1_TARGET
    # clamp 2: 10x slow -> x2, 10x fast -> /2
    assert bitcoin_retarget(old, 0, 6000, 10, 60, clamp=2) == 2 * old
    assert bitcoin_retarget(old, 0, 60, 10, 60, clamp=2) == old // 2
    # clamp 1: never changes
    assert bitcoin_retarget(old, 0, 6000, 10, 60, clamp=1) == old
    # sub-second spacing and times: 1.5x slower in milliseconds
    assert bitcoin_retarget(old, 0.25, 0.25 + 4.5, 10, 0.3) == compact_target(old * 3 // 2)
    # negative timespan (clock went back) clamps to the fastest case
    assert bitcoin_retarget(old, 100, 50, 10, 60) == old // 4


def test_difficulty_may_go_below_one_down_to_regtest_limit() -> None:
    sim = make(initial_difficulty=1e-9)
    assert sim.difficulty == pytest.approx(1e-9, rel=1e-4)
    feed_period(sim, 0, T0, timespan=10 * 600)  # would be 2.5e-10, below regtest's own
    assert sim.target == SIM_POW_LIMIT == 0x7FFFFF << 232
    assert sim.bits == 0x207FFFFF
    assert sim.difficulty == pytest.approx(MIN_DIFFICULTY)
    assert 4.6565e-10 < MIN_DIFFICULTY < 4.6566e-10


def test_hashrate_exit_drops_difficulty_by_a_quarter() -> None:
    """Exponential block times at hashrate h for one period, then 0.75 h for the next."""
    rng = random.Random(1)
    sim = ChainSim(
        initial_difficulty=1.0, retarget_interval=2016, target_spacing=600, start_time=T0
    )
    times: list[float] = []
    t = T0
    height = 1000
    targets_before: list[int] = []
    for hashrate in (1.0, 0.75):
        targets_before.append(sim.target)
        for _ in range(2016):
            # mean time per block = spacing * difficulty / hashrate (hashrate 1 = difficulty 1
            # in 600 s)
            t += rng.expovariate(hashrate / (600.0 * sim.difficulty))
            t = round(t, 3)
            times.append(t)
            sim.on_block(height, t)
            height += 1
    first, second = sim.history
    assert abs(first.change) < 0.07  # ~2.2 % noise per period
    assert second.change == pytest.approx(-0.25, abs=0.07)
    assert second.old_difficulty == first.new_difficulty
    # the same retarget, independently from the recorded times
    assert sim.target == bitcoin_retarget(targets_before[1], times[2016], times[-1], 2016, 600)
    assert second.actual_timespan == pytest.approx(times[-1] - times[2016])


def test_an_11_16_percent_drop_means_a_period_12_56_percent_longer() -> None:
    longer = 1 / (1 - 0.1116)
    assert longer - 1 == pytest.approx(0.1256, abs=5e-5)
    sim = ChainSim(
        initial_difficulty=1.0, retarget_interval=2016, target_spacing=600, start_time=T0
    )
    (change,) = feed_period(sim, 0, T0, timespan=1209600 * longer)
    assert change.change == pytest.approx(-0.1116, abs=1e-4)
    assert change.actual_timespan == pytest.approx(1209600 * 1.1256, rel=1e-4)


# -- periods: counted in blocks seen, any start height --------------------------------------------
def test_periods_count_blocks_seen_not_heights() -> None:
    sim = make(retarget_interval=4, target_spacing=10)
    heights = [102, 103, 107, 110]  # a chain not at 0, with blocks the pool did not find
    changes = [c for i, h in enumerate(heights) for c in sim.on_block(h, T0 + 20 * i)]
    assert len(changes) == 1 and changes[0].height == 110
    assert changes[0].actual_timespan == 60.0  # 1.5x slower than 40 s
    assert sim.target == compact_target(DIFF1_TARGET * 3 // 2)
    assert sim.blocks_seen == 4 and sim.blocks_in_period == 0


def test_replayed_or_lower_height_is_ignored() -> None:
    sim = make(retarget_interval=3)
    sim.on_block(5, T0)
    sim.on_block(6, T0 + 1)
    assert sim.on_block(6, T0 + 2) == []
    assert sim.on_block(4, T0 + 3) == []
    assert sim.blocks_seen == 2 and sim.last_height == 6
    with pytest.raises(ValueError, match="height"):
        sim.on_block(-1, T0)
    with pytest.raises(ValueError, match="time"):
        sim.on_block(7, float("nan"))


def test_interval_one_always_clamps_fast() -> None:
    sim = make(retarget_interval=1)
    (change,) = sim.on_block(0, T0)
    assert change.actual_timespan == 0.0
    assert sim.difficulty == 4.0


# -- events ---------------------------------------------------------------------------------------
def test_event_validation() -> None:
    with pytest.raises(ValueError, match="at_height and at_seconds"):
        SimEvent(scale=0.5)
    with pytest.raises(ValueError, match="at_height and at_seconds"):
        SimEvent(at_height=1, at_seconds=1.0, scale=0.5)
    with pytest.raises(ValueError, match="set_difficulty and scale"):
        SimEvent(at_height=1)
    with pytest.raises(ValueError, match="set_difficulty and scale"):
        SimEvent(at_height=1, set_difficulty=2.0, scale=0.5)
    with pytest.raises(ValueError, match="at_height"):
        SimEvent(at_height=-1, scale=0.5)
    with pytest.raises(ValueError, match="at_seconds"):
        SimEvent(at_seconds=float("inf"), scale=0.5)
    with pytest.raises(ValueError, match="scale"):
        SimEvent(at_height=1, scale=0.0)
    with pytest.raises(ValueError, match="set_difficulty"):
        SimEvent(at_height=1, set_difficulty=-1.0)


def test_height_events_apply_once_to_the_next_block() -> None:
    events = (
        SimEvent(at_height=3, set_difficulty=2.0),
        SimEvent(at_height=5, scale=0.8888),
    )
    sim = make(events=events, retarget_interval=100)
    assert sim.on_block(2, T0 + 1) == []
    (change,) = sim.on_block(3, T0 + 2)
    assert (change.kind, change.height, change.time) == ("event", 3, T0 + 2)
    assert (change.old_difficulty, change.new_difficulty) == (1.0, 2.0)
    assert sim.target == difficulty_to_target(2.0)
    assert sim.on_block(4, T0 + 3) == []
    (change,) = sim.on_block(6, T0 + 4)  # height 5 skipped: fires at the first block above
    assert sim.target == compact_target(difficulty_to_target(2.0) * 10000 // 8888)
    assert change.change == pytest.approx(-0.1112, abs=1e-4)
    assert sim.on_block(7, T0 + 5) == []
    assert sim.pending_events == ()
    assert [c.kind for c in sim.history] == ["event", "event"]


def test_time_events_apply_once_in_due_order() -> None:
    events = (
        SimEvent(at_seconds=120, scale=0.5),
        SimEvent(at_seconds=60, set_difficulty=8.0),
    )
    sim = make(events=events)
    assert sim.on_time(T0 + 59.999) == []
    (change,) = sim.on_time(T0 + 60)
    assert change.height == -1 and change.new_difficulty == 8.0
    assert sim.on_time(T0 + 61) == []
    sim.on_block(200, T0 + 100)
    (change,) = sim.on_time(T0 + 500)
    assert change.height == 200 and change.time == T0 + 500
    assert sim.difficulty == 4.0
    assert sim.on_time(T0 + 10_000) == []
    assert len(sim.history) == 2


def test_on_block_applies_due_time_events_first_and_height_events_after_retarget() -> None:
    events = (
        SimEvent(at_height=3, set_difficulty=3.0),
        SimEvent(at_seconds=10, scale=2.0),
    )
    sim = make(events=events, retarget_interval=4, target_spacing=10)
    sim.on_block(0, T0)
    sim.on_block(1, T0 + 5)
    sim.on_block(2, T0 + 9)
    changes = sim.on_block(3, T0 + 40)  # timespan 40 = expected
    assert [c.kind for c in changes] == ["event", "retarget", "event"]
    assert changes[0].new_difficulty == 2.0
    assert (changes[1].old_difficulty, changes[1].new_difficulty) == (2.0, 2.0)
    assert sim.difficulty == pytest.approx(3.0, rel=1e-4)  # the scripted value wins


def test_events_survive_a_json_round_trip_and_are_not_reapplied() -> None:
    events = (
        SimEvent(at_height=2, scale=0.5),
        SimEvent(at_seconds=30, set_difficulty=3.0),
        SimEvent(at_height=8, scale=2.0),
        SimEvent(at_seconds=90, scale=0.25),
    )
    sim = make(events=events, retarget_interval=100)
    sim.on_block(1, T0 + 1)
    sim.on_block(2, T0 + 2)  # height event 1
    sim.on_time(T0 + 31)  # time event 2
    target = sim.target
    restored = roundtrip(sim, events)
    assert restored.target == target
    assert restored.pending_events == events[2:]
    assert restored.on_block(3, T0 + 40) == []
    assert restored.on_time(T0 + 60) == []
    (change,) = restored.on_block(8, T0 + 70)
    assert change.new_difficulty == pytest.approx(2 * sim.difficulty)
    (change,) = restored.on_time(T0 + 90)
    assert change.new_difficulty == pytest.approx(sim.difficulty / 2)
    assert not restored.pending_events
    again = roundtrip(restored, events)
    assert again.on_block(9, T0 + 100) == [] and again.on_time(T0 + 1000) == []
    assert again.history == restored.history
    assert len(again.history) == 4


def test_restore_with_a_changed_event_list_matches_by_value() -> None:
    done = SimEvent(at_height=1, scale=0.5)
    new = SimEvent(at_height=1, scale=0.9)
    sim = make(events=(done,))
    sim.on_block(1, T0)
    restored = roundtrip(sim, (new, done))
    assert restored.pending_events == (new,)
    (change,) = restored.on_block(2, T0 + 1)
    assert change.change == pytest.approx(-0.1, abs=1e-4)


# -- persistence ----------------------------------------------------------------------------------
def test_restart_mid_period_gives_the_same_next_retarget() -> None:
    rng = random.Random(7)
    times = [T0]
    for _ in range(40):
        times.append(round(times[-1] + rng.expovariate(1 / 75), 3))
    events = (SimEvent(at_height=112, scale=0.9), SimEvent(at_seconds=900, scale=1.2))

    whole = make(events=events)
    for i, t in enumerate(times):
        whole.on_block(100 + i, t)
        whole.on_time(t + 0.5)

    part = make(events=events)
    for i, t in enumerate(times[:25]):  # stop in the middle of the third period
        part.on_block(100 + i, t)
        part.on_time(t + 0.5)
    assert part.blocks_in_period == 5
    state = json.loads(json.dumps(part.to_state()))
    resumed = ChainSim.from_state(state, events=events)
    assert resumed.to_state() == state
    for i, t in enumerate(times[25:], start=25):
        resumed.on_block(100 + i, t)
        resumed.on_time(t + 0.5)

    assert resumed.target == whole.target
    assert resumed.history == whole.history
    assert resumed.to_state() == whole.to_state()
    assert sum(c.kind == "retarget" for c in whole.history) == 4


def test_state_is_json_and_keeps_the_target_as_hex() -> None:
    sim = make(mainnet_difficulty=141.6e12)
    sim.on_block(1, T0)
    state = sim.to_state()
    assert json.loads(json.dumps(state)) == state
    assert int(state["target"], 16) == sim.target
    assert state["period_blocks"] == [[1, T0]]
    assert state["start_time"] == T0


def test_malformed_state_is_a_value_error() -> None:
    state = make().to_state()
    for key in ("target", "blocks_seen", "history"):
        broken = dict(state)
        del broken[key]
        with pytest.raises(ValueError, match="malformed"):
            ChainSim.from_state(broken)
    with pytest.raises(ValueError, match="target"):
        ChainSim.from_state({**state, "target": f"{SIM_POW_LIMIT + 1:064x}"})
    with pytest.raises(ValueError, match="version"):
        ChainSim.from_state({**state, "version": 99})
    with pytest.raises(ValueError, match="period_blocks"):
        ChainSim.from_state({**state, "period_blocks": [[i, T0 + i] for i in range(10)]})


# -- reports --------------------------------------------------------------------------------------
def test_mainnet_equivalent() -> None:
    sim = make(mainnet_difficulty=141.6e12, events=(SimEvent(at_height=1, scale=1 - 0.1116),))
    assert sim.mainnet_equivalent() == 141.6e12
    assert sim.mainnet_equivalent(0.5) == 70.8e12
    sim.on_block(1, T0)
    assert sim.mainnet_equivalent() == pytest.approx(141.6e12 * (1 - 0.1116), rel=1e-4)
    assert sim.mainnet_equivalent() == pytest.approx(125.8e12, rel=1e-3)
    plain = make(initial_difficulty=3.0)
    assert plain.mainnet_equivalent() == plain.difficulty
    assert plain.mainnet_equivalent(7.0) == 7.0


# -- arguments ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"retarget_interval": 0}, "retarget_interval"),
        ({"retarget_interval": 2.5}, "retarget_interval"),
        ({"target_spacing": 0}, "target_spacing"),
        ({"target_spacing": -1.0}, "target_spacing"),
        ({"target_spacing": float("nan")}, "target_spacing"),
        ({"target_spacing": 1e-9}, "target_spacing"),
        ({"clamp_factor": 0.5}, "clamp_factor"),
        ({"initial_difficulty": 0.0}, "initial_difficulty"),
        ({"initial_difficulty": -1.0}, "initial_difficulty"),
        ({"initial_difficulty": float("inf")}, "initial_difficulty"),
        ({"initial_difficulty": 1e-12}, "initial_difficulty"),
        ({"mainnet_difficulty": 0.0}, "mainnet_difficulty"),
        ({"start_time": float("nan")}, "start_time"),
    ],
)
def test_invalid_arguments_name_the_argument(kw: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        make(**kw)


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((DIFF1_TARGET, 0, 1, 0, 60), "retarget_interval"),
        ((DIFF1_TARGET, 0, 1, 10, 0), "target_spacing"),
        ((DIFF1_TARGET, 0, 1, 10, 60, 0.9), "clamp_factor"),
        ((0, 0, 1, 10, 60), "old_target"),
    ],
)
def test_helper_invalid_arguments(args: tuple[Any, ...], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        bitcoin_retarget(*args)


def test_initial_target_is_compact() -> None:
    sim = make(initial_difficulty=0.001)
    assert sim.target == compact_target(difficulty_to_target(0.001))
    assert bits_to_target(sim.bits) == sim.target
    assert sim.difficulty == pytest.approx(0.001, rel=1e-4)
    assert sim.mainnet_equivalent() == sim.difficulty
