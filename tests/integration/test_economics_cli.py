"""``stratum-pool economics`` through the real console entry (``python -m pool``)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def run_economics(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pool", "economics", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_json_output_with_the_seeds() -> None:
    result = run_economics("--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)  # exactly one JSON object on stdout
    assert isinstance(data, dict)
    assert data["inputs"] == {
        "difficulty": 125_860_000_000_000,
        "price_usd_per_btc": 66_680,
        "fees_btc_per_block": 0.02,
        "subsidy_btc_per_block": 3.125,
        "share_difficulty": 1,
        "blocks_per_day": 144,
    }
    assert abs(data["hashprice_usd_per_ph_day"] - 33.5) <= 33.5 * 0.05
    assert data["hashprice_usd_per_th_day"] == pytest.approx(
        data["hashprice_usd_per_ph_day"] / 1000
    )
    assert round(data["network_hashrate_hs"] / 1e21, 2) == 0.90
    machines = {m["name"]: m for m in data["machines"]}
    assert machines["S19-class"]["verdict"] == "underwater"
    assert machines["S19-class"]["power_price_usd_per_kwh"] == 0.06
    assert machines["S19-class"]["energy_kwh_per_ph_day"] == 720
    assert machines["S21-class"]["verdict"] == "profitable"
    assert machines["S21-class"]["power_price_usd_per_kwh"] == 0.05
    share = data["share_value"]
    assert share["fpps_value_btc"] == pytest.approx(3.145 / 125.86e12)
    assert share["pps_value_btc"] == pytest.approx(3.125 / 125.86e12)
    assert share["fpps_value_sat"] == pytest.approx(share["fpps_value_btc"] * 1e8)
    assert result.stderr == ""


def test_options_reach_the_report() -> None:
    result = run_economics(
        "--difficulty", "141.6T", "--efficiency", "22", "--power-price", "0.04", "--json"
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["inputs"]["difficulty"] == 141_600_000_000_000
    assert [(m["name"], m["power_price_usd_per_kwh"]) for m in data["machines"]] == [
        ("S19-class", 0.04),
        ("S21-class", 0.04),
        ("custom-22", 0.04),
    ]


def test_text_output() -> None:
    result = run_economics()
    assert result.returncode == 0, result.stderr
    assert "$33.52" in result.stdout and "underwater" in result.stdout


def test_bad_difficulty_exits_2_naming_the_option() -> None:
    result = run_economics("--difficulty", "abc", "--json")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "--difficulty" in lines[0] and "'abc'" in lines[0]


def test_bad_power_price_exits_2_naming_the_option() -> None:
    result = run_economics("--power-price", "-0.01")
    assert result.returncode == 2
    assert "--power-price" in result.stderr
