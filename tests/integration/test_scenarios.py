"""Acceptance of the regtest scenarios, through the real CLI (``python -m pool scenario``): a
managed bitcoind, the pool with a simulated chain, bundled miner processes, report.json and
report.html. Each scenario runs once per module (``--quick``); the tests read its report.

Statistics. The checks on retarget ratios, PPS values and block times are exact (they follow
from the recorded timestamps and targets). Two checks depend on luck:

- hashrate-exit, "the next retarget lowers the difficulty". The farm carries half of the
  hashrate (p = 1/2) and leaves right after the second retarget. With N blocks per period,
  the k-th period takes s * a_k * G_k, G_k ~ Gamma(N - 1), and each retarget sets
  a_{k+1} = a_k * N / G_k, so the difficulty of period 3 is N / G_2 times the calibrated one
  (the earlier periods cancel out) and its retarget is new/old = (1 - p) * G_2 / G_3. It fails
  to drop when G_2 / G_3 >= 2, and G_2 / (G_2 + G_3) ~ Beta(N - 1, N - 1):
  P(fail) = P(Beta(63, 63) >= 2/3) = 6.0e-5 for N = 64 (quick), under 1 in 10 000. (The dead
  time after each block, ~35 ms, adds a constant to every gap and lowers this: 3.2e-5 in a
  Monte Carlo run of 4 million.) With equal miners (p = 1/4) it would take N >= 330.
- feb-2026 --quick is calibrated to a drop of ~11.2 %, and one period of 120 blocks cannot show
  that drop with 1-in-10 000 certainty: the ratio's standard deviation is ~9 %, so about one
  run in 20-25 ends with a rise. Its direction is therefore checked against the blocks actually
  found (slower than N * spacing: a drop; faster: a rise), its size against Bitcoin's rule on
  their times, and the period's length against the model within 5 standard deviations
  (P < 1e-5). The hashrate exit is checked on the pool's share-based measurement: with 10
  shares/s per miner, ~1300 shares before the exit and ~1000 after, the measured fraction that
  left is 0.25 +- 0.031 (one standard deviation); the test allows 0.10-0.40 (> 4.8 sigma).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from pool.bitcoin import REGTEST
from pool.scenarios.html import PLOTS
from pool.scenarios.schemes_html import SCHEME_PLOTS

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
QUICK_LIMIT_SECONDS = 120.0
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


@dataclass
class Run:
    name: str
    out: Path
    seconds: float
    stdout: str
    report: dict[str, Any]


def run_scenario(name: str, out: Path, *args: str) -> Run:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pool", "scenario", name, "--out", str(out), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    seconds = time.monotonic() - started
    assert proc.returncode == 0, (
        f"scenario {name} exited {proc.returncode} after {seconds:.1f} s\n"
        f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
    )
    print(f"\nscenario {name} {' '.join(args)}: {seconds:.1f} s wall")
    report = json.loads((out / "report.json").read_text())
    return Run(name, out, seconds, proc.stdout, report)


@pytest.fixture(scope="module")
def hashrate_exit(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return run_scenario(
        "hashrate-exit", tmp_path_factory.mktemp("hashrate-exit") / "out", "--quick"
    )


@pytest.fixture(scope="module")
def feb_2026(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return run_scenario("feb-2026", tmp_path_factory.mktemp("feb-2026") / "out", "--quick")


# -- independent helpers (not the pool's code) ----------------------------------------------------


def bitcoin_rule(first: float, last: float, blocks: int, spacing: float, clamp: float) -> float:
    """new/old difficulty by Bitcoin's rule: blocks * spacing over the period's timespan (its
    first to its last block), the timespan clamped to a factor ``clamp`` either way."""
    expected = blocks * spacing
    actual = min(max(last - first, expected / clamp), expected * clamp)
    return expected / actual


def period_times(report: dict[str, Any], period: int) -> list[float]:
    n = report["chain"]["retarget_interval"]
    ordinals = range((period - 1) * n + 1, period * n + 1)
    by_ordinal = {b["ordinal"]: b["time"] for b in report["blocks"]}
    missing = [o for o in ordinals if o not in by_ordinal]
    assert not missing, f"blocks {missing[:5]}... of period {period} are not in the report"
    return [by_ordinal[o] for o in ordinals]


def retargets(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in report["retargets"] if r["kind"] == "retarget"]


def check_pps_rise(change: dict[str, Any]) -> None:
    """The PPS value of a share rises by exactly old/new difficulty."""
    before = Fraction(change["pps_value_before_units"])
    after = Fraction(change["pps_value_after_units"])
    old_target, new_target = int(change["old_target"], 16), int(change["new_target"], 16)
    assert after / before == Fraction(new_target, old_target)  # difficulty = DIFF1 / target
    old_over_new = change["old_difficulty"] / change["new_difficulty"]
    assert after / before == pytest.approx(old_over_new, rel=1e-12)
    assert change["pps_value_ratio"] == pytest.approx(old_over_new, rel=1e-12)


# -- hashrate-exit --------------------------------------------------------------------------------


def test_hashrate_exit_next_retarget_follows_bitcoins_rule(hashrate_exit: Run) -> None:
    report = hashrate_exit.report
    n = report["chain"]["retarget_interval"]
    spacing = report["chain"]["target_spacing_seconds"]
    assert report["summary"]["completed"], report["summary"]["end_reason"]
    assert [m["name"] for m in report["miners"]] == ["farm", "rig-1", "rig-2", "rig-3"]
    (leave,) = [a for a in report["actions"] if a["action"] == "leave"]
    assert leave["miners"] == ["farm"] and leave["trigger"] == "after 2 retargets"
    assert (leave["retargets"], leave["blocks"]) == (2, 2 * n)  # right at the second retarget
    farm = report["miners"][0]
    assert farm["spans"][-1][1] == leave["t"]
    assert all(m["spans"][-1][1] >= leave["t"] for m in report["miners"][1:])

    first, second, third = retargets(report)[:3]
    assert third["ordinal"] == 3 * n and third["t"] > leave["t"]
    assert third["old_difficulty"] == second["new_difficulty"]
    assert report["summary"]["key_change"]["ordinal"] == third["ordinal"]
    # The next retarget lowers the difficulty (P(fail) = 6.0e-5, see the module docstring)...
    assert third["new_difficulty"] < third["old_difficulty"], third
    # ...and its ratio is Bitcoin's rule applied to the recorded block times of period 3.
    times = period_times(report, 3)
    assert third["actual_timespan"] == pytest.approx(times[-1] - times[0], abs=2e-3)
    rule = bitcoin_rule(times[0], times[-1], n, spacing, report["chain"]["clamp_factor"])
    ratio = third["new_difficulty"] / third["old_difficulty"]
    assert ratio == pytest.approx(rule, rel=0.02), (ratio, rule)
    for change in (first, second):  # the periods before it follow the same rule
        period = change["ordinal"] // n
        t = period_times(report, period)
        assert change["new_difficulty"] / change["old_difficulty"] == pytest.approx(
            bitcoin_rule(t[0], t[-1], n, spacing, 4.0), rel=0.02
        )
    for change in (first, second, third):
        check_pps_rise(change)


# -- feb-2026 --quick -----------------------------------------------------------------------------


def test_feb_2026_shows_the_exit(feb_2026: Run) -> None:
    report = feb_2026.report
    summary = report["summary"]
    assert summary["completed"], summary["end_reason"]
    exit_info = summary["exit"]
    assert exit_info["miners"] == ["s19-fleet"] and exit_info["trigger"] == "after 68 blocks"
    assert exit_info["set_fraction_left"] == pytest.approx(0.25)
    assert 0.10 <= exit_info["measured_fraction_left"] <= 0.40, exit_info  # see the docstring
    # The fleet's hashrate and its earnings stop at the exit.
    earnings = report["series"]["earnings_sat"]["s19-fleet"]
    after = [v for t, v in earnings if t >= exit_info["t"] + 2.0]
    assert after and after[0] == after[-1] > 0
    rates = [v for t, v in report["series"]["worker_hashrate"]["s19-fleet"] if t > exit_info["t"]]
    assert rates[-1] == 0
    (leave,) = [a for a in report["actions"] if a["action"] == "leave"]
    assert leave["blocks"] == 68


def test_feb_2026_difficulty_change_fits_the_blocks_found(feb_2026: Run) -> None:
    report = feb_2026.report
    chain = report["chain"]
    n, spacing = chain["retarget_interval"], chain["target_spacing_seconds"]
    (change,) = retargets(report)
    assert report["summary"]["key_change"]["ordinal"] == change["ordinal"] == n
    times = period_times(report, 1)
    measured = times[-1] - times[0]
    rule = bitcoin_rule(times[0], times[-1], n, spacing, chain["clamp_factor"])
    ratio = change["new_difficulty"] / change["old_difficulty"]
    # Size: Bitcoin's rule on the blocks actually found. Direction: those blocks took longer
    # than n * spacing -> a drop; shorter -> a rise.
    assert ratio == pytest.approx(rule, rel=0.02), (ratio, rule)
    assert (ratio < 1) == (measured > n * spacing), (ratio, measured)
    # The period's length fits the model (gaps of s before the exit, 4/3 (s - d) + d after).
    d = report["scenario"]["chain"]["dead_time_seconds"]
    m = 68
    expected = (n - 1) * d + (spacing - d) * ((m - 1) + 4 / 3 * (n - m))
    sigma = (spacing - d) * ((m - 1) + 16 / 9 * (n - m)) ** 0.5
    slack = 0.02 * (n - 1)  # the dead time is a machine-dependent estimate (+-20 ms)
    assert abs(measured - expected) <= 5 * sigma + slack, (measured, expected, sigma)
    # The expected drop from the set hashrates is the calibrated ~11.2 %.
    key = report["summary"]["key_change"]
    assert key["expected_change_from_set_hashrates"] == pytest.approx(-0.112, abs=0.002)
    # The PPS value per share rises by 1 / (1 - drop).
    drop = 1 - ratio
    assert change["pps_value_ratio"] == pytest.approx(1 / (1 - drop), rel=1e-12)
    check_pps_rise(change)


def test_feb_2026_mainnet_figures_and_economics(feb_2026: Run) -> None:
    report = feb_2026.report
    (change,) = retargets(report)
    assert report["summary"]["start_mainnet_difficulty"] == pytest.approx(141.6e12, rel=1e-9)
    assert change["mainnet_old_difficulty"] == pytest.approx(141.6e12, rel=1e-9)
    econ = report["economics"]
    assert econ["inputs"]["price_usd_per_btc"] == 66680
    assert econ["inputs"]["subsidy_btc_per_block"] == 3.125
    assert econ["inputs"]["fees_btc_per_block"] == 0.02
    before, after = econ["before"], econ["after"]
    assert before["difficulty"] == pytest.approx(141.6e12, rel=1e-9)
    # hashprice = 144 * (3.125 + 0.02) * 66680 / (D * 2**32 / 600 / 1e15)
    hashprice = 144 * 3.145 * 66680 / (141.6e12 * 2**32 / 600 / 1e15)
    assert before["hashprice_usd_per_ph_day"] == pytest.approx(hashprice, rel=1e-9)
    assert after["hashprice_usd_per_ph_day"] / before["hashprice_usd_per_ph_day"] == (
        pytest.approx(change["old_difficulty"] / change["new_difficulty"], rel=1e-9)
    )
    assert econ["reference_after"]["hashprice_usd_per_ph_day"] == pytest.approx(33.5, rel=0.05)
    classes = {c["name"]: c for c in econ["classes"]}
    assert classes["S19-class"]["power_price_usd_per_kwh"] == 0.06
    assert classes["S19-class"]["verdict_before"] == "underwater"
    assert classes["S21-class"]["power_price_usd_per_kwh"] == 0.05
    assert classes["S21-class"]["verdict_before"] == "profitable"
    assert classes["S19-class"]["miners"] == ["s19-fleet"]
    assert classes["S21-class"]["miners"] == ["s21-fleet-1", "s21-fleet-2", "s21-fleet-3"]
    for c in classes.values():
        assert c["credited_sat"] > 0
    assert "hashprice $" in feb_2026.stdout


# -- feb-2026 --quick: the payout schemes compared on the same run ------------------------------


def store_rows(out: Path, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(out / "pool" / "ledger" / "ledger.sqlite3")
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def test_feb_2026_compares_the_schemes_on_the_same_run(feb_2026: Run) -> None:
    """The section is there, PPS is the ledger's balances to the unit, SOLO is every earned
    block's reward (less the fee) to its finder, PPLNS shares out exactly what SOLO does in
    total, and the Monte Carlo settings are stated."""
    report = feb_2026.report
    schemes = report["schemes"]
    assert "error" not in schemes, schemes
    fee = report["pool"]["fee_bps"]
    assert schemes["settings"]["fee_bps"] == fee
    miners = {m["address"]: m for m in schemes["miners"]}
    assert sorted(m["miner"] for m in miners.values()) == sorted(
        m["name"] for m in report["miners"]
    )
    # PPS: the store's balances, read here, to the unit
    balances = dict(store_rows(feb_2026.out, "SELECT address, credited_units FROM balances"))
    assert balances and {a: m["pps"]["units"] for a, m in miners.items()} == balances
    assert schemes["pps_matches_ledger"] is True
    # SOLO: each pending/confirmed block's coinbase value, less the fee, to its finder
    blocks = store_rows(feb_2026.out, "SELECT address, reward_sat, status FROM blocks")
    solo: dict[str, int] = {}
    rewards = 0
    for address, reward_sat, status in blocks:
        if status in ("pending", "confirmed"):
            units = reward_sat * 1_000_000
            rewards += units
            solo[address] = solo.get(address, 0) + units * (10_000 - fee) // 10_000
    assert {a: m["solo"]["units"] for a, m in miners.items() if m["solo"]["units"]} == solo
    assert schemes["totals"]["blocks_earned"] == sum(m["blocks_found"] for m in miners.values())
    # PPLNS: every earned block's reward is split; miners + pool = the rewards
    pplns = sum(m["pplns"]["units"] for m in miners.values())
    assert pplns + schemes["pool"]["pplns"]["result"]["units"] == rewards
    assert schemes["pool"]["pps"]["rewards_units"] == rewards
    assert schemes["totals"]["pplns_blocks_without_share"] == 0
    # FPPS: the templates carried the fee transaction of each block ([run] fee_share of the
    # subsidy, pool/scenarios/fees.py), so every miner's FPPS is about that share above PPS
    traffic = report["fee_traffic"]
    assert traffic["fee_share"] == 0.0064 and traffic["transactions"] > 0
    assert traffic["failed"] == 0
    rewards_by_height = store_rows(feb_2026.out, "SELECT height, reward_sat FROM blocks")
    with_fees = [h for h, r in rewards_by_height if r > REGTEST.block_subsidy(h)]
    assert len(with_fees) >= len(rewards_by_height) // 2, "most blocks carry the fee transaction"
    for m in miners.values():
        ratio = m["fpps"]["units"] / m["pps"]["units"] - 1
        assert 0.5 * traffic["fee_share"] < ratio < 1.5 * traffic["fee_share"], m
    # spread: none under PPS/FPPS, some under PPLNS and SOLO for every miner who worked
    for m in miners.values():
        assert m["pps"]["spread_btc"] == m["fpps"]["spread_btc"] == 0.0
        assert m["pplns"]["spread_btc"] > 0 and m["solo"]["spread_btc"] > 0
    # the pool's PPS result ends at its reserve plus the fees (the ledger takes them out)
    reserve = schemes["pps_reserve"]
    assert reserve["result"]["units"] == rewards - sum(balances.values())
    assert reserve["needed"]["units"] >= 0
    ruin = schemes["ruin"]
    assert ruin["paths"] == 2000 and ruin["seed"] == 20260207
    assert ruin["reserves"][0]["blocks"] == 0.0
    assert all(row[0] == 1.0 for row in ruin["probability"])  # no reserve: ruined at once
    assert len(ruin["horizons"]) == 3 and ruin["horizons"][0]["run_seconds"] > 0
    html = (feb_2026.out / "report.html").read_text()
    assert "<h2>Payout schemes compared</h2>" in html
    for plot in SCHEME_PLOTS:
        assert f'id="plot-{plot}"' in html
    assert "schemes compared (PPS, FPPS, PPLNS, SOLO)" in feb_2026.stdout
    print(f"scheme comparison: {schemes['seconds_to_compute']:.2f} s of the run's wall time")
    assert schemes["seconds_to_compute"] < 30.0


# -- the HTML report in a real browser ------------------------------------------------------------


def test_html_report_renders_in_headless_chromium(feb_2026: Run, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("Debian's chromium is needed for this test: apt-get install chromium")
    html = feb_2026.out / "report.html"
    proc = subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            html.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert "<title>Scenario feb-2026 (quick)</title>" in dom
    for plot in PLOTS:
        figure = re.search(
            rf'<figure class="plot-figure" id="plot-{plot}">(.*?)</figure>', dom, re.S
        )
        assert figure is not None, f"plot {plot} is not in the rendered DOM"
        svg = re.search(rf'<svg [^>]*data-plot="{plot}"', figure.group(1))
        assert svg is not None, f"plot {plot} has no <svg>"
        points = re.findall(r'<polyline [^>]*points="([^"]+)"', figure.group(1))
        assert any(len(p.split()) >= 2 for p in points), f"plot {plot} draws no line"
    for plot in SCHEME_PLOTS:
        figure = re.search(
            rf'<figure class="plot-figure" id="plot-{plot}">(.*?)</figure>', dom, re.S
        )
        assert figure is not None, f"plot {plot} is not in the rendered DOM"
        if plot == "scheme-earnings":  # bars: 4 miners x 4 schemes
            assert len(re.findall(r'<rect class="bar"', figure.group(1))) == 16
        else:
            points = re.findall(r'<polyline [^>]*points="([^"]+)"', figure.group(1))
            assert any(len(p.split()) >= 2 for p in points), f"plot {plot} draws no line"


# -- a scenario file of one's own, an external miner command, Ctrl-C ------------------------------

CUSTOM = """
[scenario]
description = "A user's file: a bundled miner and an external miner command"

[chain]
retarget_interval = 8
target_spacing_seconds = 0.5

[run]
max_seconds = {max_seconds}
progress_seconds = 2

[end]
after_retargets = {retargets}

[[miners]]
name = "bundled"
hashrate = 100000

[[miners]]
name = "external"
hashrate = 100000
# The bundled miner speaking exactly as cpuminer 2.5.1 stands in for cpuminer (not installed).
command = "{command}"
"""
EXTERNAL = " -m pool miner --cpuminer-compat -o {url} -u {user} -p {password} --hashrate {hashrate}"


def custom_file(path: Path, *, retargets: int, max_seconds: int) -> Path:
    path.write_text(
        CUSTOM.format(
            command=shlex.quote(sys.executable) + EXTERNAL,
            retargets=retargets,
            max_seconds=max_seconds,
        )
    )
    return path


def test_a_scenario_file_with_an_external_miner_command(tmp_path: Path) -> None:
    scenario = custom_file(tmp_path / "mine.toml", retargets=1, max_seconds=90)
    flags = ("--paths", "700", "--resamples", "30", "--seed", "11", "--pplns-window", "1.5")
    flags += ("--reserves", "3,0.25")
    run = run_scenario(str(scenario), tmp_path / "out", *flags)
    report = run.report
    schemes = report["schemes"]  # the comparison's settings are the flags given
    assert schemes["settings"] == {
        "fee_bps": 200,
        "pplns_window_blocks": 1.5,
        "seed": 11,
        "resamples": 30,
        "paths": 700,
    }
    assert schemes["ruin"]["paths"] == 700 and schemes["ruin"]["seed"] == 11
    assert [r["blocks"] for r in schemes["ruin"]["reserves"]] == [0.25, 3.0]
    assert report["scenario"]["name"] == "mine" and report["summary"]["completed"]
    miners = {m["name"]: m for m in report["miners"]}
    assert "--cpuminer-compat" in miners["external"]["command"]
    assert miners["bundled"]["command"] == ""
    for m in miners.values():
        assert m["accepted_work"] > 0 and m["exits"][-1]["returncode"] == 0, m
    (change,) = retargets(report)
    times = period_times(report, 1)
    assert change["new_difficulty"] / change["old_difficulty"] == pytest.approx(
        bitcoin_rule(times[0], times[-1], 8, 0.5, 4.0), rel=0.02
    )


def test_ctrl_c_stops_the_run_and_still_writes_the_report(tmp_path: Path) -> None:
    scenario = custom_file(tmp_path / "long.toml", retargets=1000, max_seconds=300)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pool", "scenario", str(scenario), "--out", str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:  # wait for the first progress line
            seen.append(line)
            if line.startswith("["):
                break
        assert seen and seen[-1].startswith("["), seen
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-3000:]
    assert "NOT completed: interrupted" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["completed"] is False
    assert report["summary"]["end_reason"] == "interrupted"
    assert all(m["exits"] and m["exits"][-1]["returncode"] is not None for m in report["miners"])
    svgs = (out / "report.html").read_text().count('<svg class="plot"')
    assert svgs == len(PLOTS) + len(SCHEME_PLOTS)
    assert "error" not in report["schemes"], report["schemes"]


# -- timing ---------------------------------------------------------------------------------------


def test_quick_runs_finish_in_under_two_minutes(hashrate_exit: Run, feb_2026: Run) -> None:
    for run in (hashrate_exit, feb_2026):
        assert run.seconds < QUICK_LIMIT_SECONDS, f"{run.name} --quick took {run.seconds:.1f} s"
