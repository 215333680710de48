"""The report builder is pure: a synthetic timeline in, report.json data and report.html out.

The timeline: a simulated chain of 4 blocks per period at 1 s spacing, difficulty 1, miners
"big" (3/4 of 2**32 H/s) and "small" (1/4). Period 1 is on time (3 s of gaps against 4 s), so
the difficulty rises by 4/3; "big" leaves right after that retarget; period 2's gaps take 5 s
(15 s against 4 s), so the difficulty falls to 4/15 of its value. The real ``ChainSim`` makes
the retargets, as in the pool.
"""

from __future__ import annotations

import json
import re
import tomllib
from fractions import Fraction

import pytest

from pool import economics as econ
from pool.bitcoin import target_to_difficulty
from pool.chain_sim import ChainSim
from pool.scenarios.html import PLOTS, render_html
from pool.scenarios.report import (
    ActionRecord,
    BlockRecord,
    ChangeRecord,
    MinerRecord,
    Recording,
    Sample,
    block_times_by_period,
    build_report,
    pps_value_units,
    windowed_rates,
)
from pool.scenarios.spec import parse
from pool.scenarios.svg import Line, chart, nice_ticks, si

H = 2**32  # hashes per second for one block per second at difficulty 1
START = 1_000_000.0  # Unix time of t = 0
SUBSIDY = 5_000_000_000
SPEC_TEXT = """
[scenario]
description = "synthetic <timeline> & co"

[chain]
retarget_interval = 4
target_spacing_seconds = 1.0
initial_difficulty = 1.0
dead_time_seconds = 0.0
mainnet_difficulty = 141.6e12

[run]
hashrate_window_seconds = 2.0
sample_seconds = 1.0

[end]
after_retargets = 2

[[miners]]
name = "big"
hashrate = 3221225472.0
machine_class = "S19-class"

[[miners]]
name = "small"
hashrate = 1073741824.0
machine_class = "S21-class"

[[timeline]]
after_retargets = 1
leave = ["big"]

[economics]
price_usd = 66680
subsidy_btc = 3.125
fees_btc_per_block = 0.02
reference_difficulty_after = 125.86e12
"""
BLOCK_TIMES = [1.0, 2.0, 3.0, 4.0, 9.0, 14.0, 19.0, 24.0]
END = 26.0


def work_at(name: str, t: float) -> float:
    """Cumulative accepted difficulty: big hashes 0.75 per second until it leaves at 4 s."""
    return 0.75 * min(t, 4.0) if name == "big" else 0.25 * t


def make_recording() -> Recording:
    spec = parse(tomllib.loads(SPEC_TEXT), where="synthetic", default_name="synthetic", quick=False)
    sim = ChainSim(
        initial_difficulty=1.0, retarget_interval=4, target_spacing=1.0, start_time=START
    )
    rec = Recording(
        scenario=spec,
        started_at=START,
        start_height=100,
        initial_target=sim.target,
        fee_bps=200,
        miners=[
            MinerRecord("big", "big", "addr.big", "addr", 0.75 * H, 1e-3, "S19-class"),
            MinerRecord("small", "small", "addr.small", "addr", 0.25 * H, 1e-3, "S21-class"),
        ],
        out_dir="/nowhere",
    )
    rec.miners[0].spans = [[0.0, 4.0]]
    rec.miners[1].spans = [[0.0, None]]
    for i, t in enumerate(BLOCK_TIMES):
        height = 101 + i
        target = sim.target
        old = sim.target
        changes = sim.on_block(height, START + t)
        rec.blocks.append(
            BlockRecord(i + 1, height, f"{height:064x}", "small", t, START + t, target)
        )
        for change in changes:
            rec.changes.append(
                ChangeRecord(
                    kind=change.kind,
                    height=change.height,
                    ordinal=i + 1,
                    t=t,
                    time=START + t,
                    old_target=old,
                    new_target=sim.target,
                    subsidy_sat=SUBSIDY,
                    actual_timespan=change.actual_timespan,
                    expected_timespan=change.expected_timespan,
                )
            )
        if i == 3:
            rec.actions.append(ActionRecord(4.0, "leave", ["big"], "after 1 retargets", 4, 1))
    for k in range(int(END) + 1):
        t = float(k)
        blocks = sum(b <= t for b in BLOCK_TIMES)
        changes = [c for c in rec.changes if c.t <= t]
        target = changes[-1].new_target if changes else rec.initial_target
        work = {n: work_at(n, t) for n in ("big", "small")}
        rec.samples.append(
            Sample(
                t=t,
                blocks=blocks,
                retargets=len(changes),
                target=target,
                subsidy_sat=SUBSIDY,
                running=["big", "small"] if t < 4 else ["small"],
                work=work,
                credited_units={n: int(w * 10**12) for n, w in work.items()},
                reserve_units=blocks * SUBSIDY * 10**6 - int(sum(work.values()) * 10**12),
                rewards_units=blocks * SUBSIDY * 10**6,
                credits_units=int(sum(work.values()) * 10**12),
                fees_units=0,
            )
        )
    rec.completed = True
    rec.duration = END
    return rec


@pytest.fixture(scope="module")
def report() -> dict[str, object]:
    return build_report(make_recording())


def test_report_is_plain_json(report: dict[str, object]) -> None:
    again = json.loads(json.dumps(report))
    assert again == report


def test_retargets_follow_the_block_times_and_pps_rises_by_old_over_new(report: dict) -> None:
    first, second = report["retargets"]
    assert first["kind"] == second["kind"] == "retarget"
    # Period 1: 3 s of gaps against 4 s; period 2: 15 s against 4 s (compact rounding ~1e-5).
    assert first["new_difficulty"] / first["old_difficulty"] == pytest.approx(4 / 3, rel=1e-4)
    assert second["new_difficulty"] / second["old_difficulty"] == pytest.approx(4 / 15, rel=1e-4)
    assert second["old_difficulty"] == first["new_difficulty"]
    for r in (first, second):
        before = Fraction(r["pps_value_before_units"])
        after = Fraction(r["pps_value_after_units"])
        assert after / before == Fraction(int(r["new_target"], 16), int(r["old_target"], 16))
        assert r["pps_value_ratio"] == pytest.approx(
            r["old_difficulty"] / r["new_difficulty"], rel=1e-12
        )
        assert r["mainnet_old_difficulty"] == pytest.approx(r["old_difficulty"] * 141.6e12)
    # Independently: Bitcoin's rule on the recorded block times.
    periods = block_times_by_period(report)
    assert sorted(periods) == [1, 2]
    times = periods[2]
    actual = max(4 / 4, min(times[-1] - times[0], 4 * 4))
    assert second["change"] == pytest.approx(4 / actual - 1, rel=1e-4)


def test_summary_exit_and_key_change(report: dict) -> None:
    summary = report["summary"]
    assert summary["completed"] and summary["blocks"] == 8 and summary["retargets"] == 2
    exit_info = summary["exit"]
    assert exit_info["miners"] == ["big"]
    assert exit_info["set_hashrate_before"] == H and exit_info["set_hashrate_after"] == H / 4
    assert exit_info["set_fraction_left"] == 0.75
    assert exit_info["measured_hashrate_before"] == pytest.approx(H)
    assert exit_info["measured_hashrate_after"] == pytest.approx(H / 4)
    assert exit_info["measured_fraction_left"] == pytest.approx(0.75)
    key = summary["key_change"]
    assert summary["key_change_reason"] == "the first retarget after the first miners left"
    assert key["index"] == 1 and key["drop"] == pytest.approx(1 - 4 / 15, rel=1e-4)
    # Expected: 3 gaps at difficulty 4/3 with 1/4 of 2**32 H/s: 16/3 s each -> 4/16 - 1.
    assert key["expected_change_from_set_hashrates"] == pytest.approx(-0.75, rel=1e-4)
    assert summary["start_mainnet_difficulty"] == pytest.approx(141.6e12)


def test_series(report: dict) -> None:
    series = report["series"]
    pool = dict((t, v) for t, v in series["pool_hashrate"])
    assert pool[3.0] == pytest.approx(H, rel=1e-5)  # before the exit: (0.75 + 0.25) * 2**32
    assert pool[20.0] == pytest.approx(H / 4, rel=1e-5)
    assert dict(series["worker_hashrate"]["big"])[20.0] == 0
    assert series["set_hashrate"][0] == [0.0, H] and series["set_hashrate"][-1][1] == H / 4
    steps = series["difficulty"]
    assert steps[0] == [0.0, pytest.approx(141.6e12)]
    assert steps[-1][0] == END and len(steps) == 4
    assert series["blocks"][-1] == [24.0, 8.0]
    index = dict((t, v) for t, v in series["pps_value_index"])
    assert index[0.0] == 1.0
    assert index[24.0] == pytest.approx(1 / (4 / 3 * 4 / 15), rel=1e-4)
    value0 = series["pps_value_sat"][0][1]
    assert value0 == pytest.approx(SUBSIDY, rel=1e-9)  # difficulty 1: a share is a block
    assert series["earnings_sat"]["small"][-1][1] == pytest.approx(0.25 * END * 10**6)
    assert series["reserve_sat"][0][1] == 0


def test_economics_section(report: dict) -> None:
    e = report["economics"]
    key = report["summary"]["key_change"]
    before = econ.hashprice_usd_per_ph_day(
        Fraction(key["mainnet_old_difficulty"]),
        Fraction(66680),
        Fraction(3125, 1000),
        Fraction(2, 100),
    )
    assert e["before"]["hashprice_usd_per_ph_day"] == pytest.approx(float(before))
    assert e["after"]["hashprice_usd_per_ph_day"] / e["before"][
        "hashprice_usd_per_ph_day"
    ] == pytest.approx(key["old_difficulty"] / key["new_difficulty"])
    assert e["reference_after"]["hashprice_usd_per_ph_day"] == pytest.approx(33.5, rel=0.05)
    classes = {c["name"]: c for c in e["classes"]}
    assert classes["S19-class"]["miners"] == ["big"]
    assert classes["S21-class"]["miners"] == ["small"]
    assert classes["S19-class"]["credited_sat"] == pytest.approx(0.75 * 4 * 10**6)
    assert 0 < classes["S19-class"]["credit_share"] < 1
    for c in e["classes"]:
        assert c["verdict_before"] in ("profitable", "underwater")


def test_html_is_self_contained_and_has_every_plot(report: dict) -> None:
    page = render_html(report)
    assert page.startswith("<!doctype html>")
    assert "<script" not in page
    assert re.findall(r"https?://[^\"' ]+", page) == ["http://www.w3.org/2000/svg"] * len(PLOTS)
    for plot in PLOTS:
        block = re.search(rf'<svg class="plot" data-plot="{plot}".*?</svg>', page, re.S)
        assert block is not None, plot
        assert re.search(r'<polyline class="series"[^>]* points="[\d.]+,[\d.]+ ', block.group(0))
    assert "synthetic &lt;timeline&gt; &amp; co" in page
    assert "Economics" in page and "S19-class" in page


def test_incomplete_run_still_renders() -> None:
    rec = make_recording()
    rec.blocks, rec.changes, rec.actions, rec.samples = [], [], [], []
    rec.completed, rec.end_reason = False, "interrupted"
    data = build_report(rec)
    assert data["summary"]["key_change"] is None
    page = render_html(data)
    assert "not completed: interrupted" in page and page.count("no data") == 3


def test_windowed_rates() -> None:
    times = [0.0, 1.0, 2.0, 3.0, 4.0]
    rates = windowed_rates(times, [0, 1, 2, 3, 4, 4.5][:5], 2.0)
    assert [t for t, _ in rates] == [1.0, 2.0, 3.0, 4.0]
    assert [r for _, r in rates] == pytest.approx([H] * 4, rel=1e-5)
    late = windowed_rates([*times, 5.0], [0, 1, 2, 3, 4, 4.5], 2.0)
    assert late[-1][1] == pytest.approx(0.75 * H, rel=1e-5)  # (4.5 - 3) over 2 s
    assert windowed_rates([0.0], [0.0], 1.0) == []


def test_pps_value_units_is_exact() -> None:
    target = 0x00000000FFFF << 208  # difficulty 1
    assert pps_value_units(target, SUBSIDY) == SUBSIDY * 10**6
    assert pps_value_units(target, SUBSIDY, fee_bps=200) == Fraction(SUBSIDY * 10**6 * 98, 100)
    assert target_to_difficulty(target) == 1.0


def test_svg_helpers() -> None:
    assert nice_ticks(0, 1) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(0, 7, 5)[-1] >= 7
    assert si(1_234_567, "H/s") == "1.23 MH/s" and si(0) == "0" and si(0.00123) == "0.00123"
    empty = chart("x", "nothing", [Line("a", [], "#000")])
    assert 'data-plot="x"' in empty and "no data" in empty and "<polyline" not in empty
    flat = chart("y", "flat", [Line("a", [[0, 5], [10, 5]], "#000", step=True)])
    assert flat.count("<polyline") == 1
