"""Scenario files: the built-ins, --quick overrides, and errors that name the key (exit 2)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from pool import cli
from pool.scenarios import spec as scenario_spec
from pool.scenarios.miners import miner_command, share_difficulty
from pool.scenarios.spec import MinerSpec, ScenarioError, load, parse

BUILTINS = ("difficulty-drop", "feb-2026", "hashrate-exit")

MINIMAL = """
[chain]
retarget_interval = 10
target_spacing_seconds = 1.0

[end]
after_retargets = 2

[[miners]]
name = "a"
hashrate = 100000
"""


def parse_text(text: str, quick: bool = False) -> scenario_spec.ScenarioSpec:
    import tomllib

    return parse(tomllib.loads(text), where="test.toml", default_name="test", quick=quick)


def error_of(text: str, quick: bool = False) -> str:
    with pytest.raises(ScenarioError) as info:
        parse_text(text, quick)
    return str(info.value)


def test_builtins_are_package_data_and_load_in_both_variants() -> None:
    assert scenario_spec.builtin_names() == list(BUILTINS)
    for name in BUILTINS:
        default, quick = load(name), load(name, quick=True)
        assert default.name == quick.name == name
        assert not default.quick and quick.quick
        assert default.miners and quick.miners


def test_hashrate_exit_shape() -> None:
    for variant in (load("hashrate-exit"), load("hashrate-exit", quick=True)):
        assert len(variant.miners) == 4
        assert [m.name for m in variant.miners] == ["farm", "rig-1", "rig-2", "rig-3"]
        (entry,) = variant.timeline
        assert entry.leave == ("farm",) and entry.trigger.after_retargets == 2
        farm = variant.miner("farm").hashrate
        assert farm / sum(m.hashrate for m in variant.miners) == 0.5
    quick = load("hashrate-exit", quick=True)
    assert quick.chain.retarget_interval == 64 and quick.chain.target_spacing_seconds == 0.28


def test_feb_2026_calibration() -> None:
    assert load("feb-2026").run.fee_share == load("feb-2026", quick=True).run.fee_share == 0.0064
    assert parse_text(MINIMAL).run.fee_share == 0.0  # no fee transactions unless asked
    for variant, n, m in ((load("feb-2026"), 240, 142), (load("feb-2026", quick=True), 120, 68)):
        chain = variant.chain
        assert chain.retarget_interval == n
        assert chain.mainnet_difficulty == 141.6e12
        leave = [e for e in variant.timeline if e.leave]
        assert leave[0].trigger.after_blocks == m
        left = sum(variant.miner(x).hashrate for x in leave[0].leave)
        assert left / variant.start_hashrate == 0.25
        # Expected drop with the calibrated difficulty: the N - 1 gaps take s before the exit
        # and 4/3 (s - d) + d after it, against N * s.
        s, d = chain.target_spacing_seconds, chain.dead_time_seconds
        expected = (n - 1) * d + (s - d) * ((m - 1) + 4 / 3 * (n - m))
        assert n * s / expected == pytest.approx(0.888, abs=0.002)
        econ = variant.economics
        assert econ is not None
        assert (float(econ.price_usd), float(econ.subsidy_btc)) == (66680.0, 3.125)
        assert float(econ.fees_btc_per_block) == 0.02
        assert econ.machine_classes == ("S19-class", "S21-class")


def test_calibrated_difficulty() -> None:
    spec = parse_text(MINIMAL)
    assert spec.calibrated_difficulty() == 100000 * (1.0 - 0.035) / 2**32
    explicit = parse_text(MINIMAL.replace("[chain]", "[chain]\ninitial_difficulty = 0.5"))
    assert explicit.calibrated_difficulty() == 0.5


def test_quick_overrides_merge_tables_and_replace_arrays() -> None:
    text = (
        MINIMAL
        + """
[[timeline]]
at_seconds = 5
leave = ["a"]

[quick]
chain = { target_spacing_seconds = 0.5 }
timeline = [{ after_blocks = 3, leave = ["a"] }]
"""
    )
    quick = parse_text(text, quick=True)
    assert quick.chain.retarget_interval == 10  # kept
    assert quick.chain.target_spacing_seconds == 0.5  # overridden
    assert [e.trigger.after_blocks for e in quick.timeline] == [3]
    assert parse_text(text).timeline[0].trigger.at_seconds == 5


def test_groups_and_commands() -> None:
    text = (
        MINIMAL.replace(
            'name = "a"\nhashrate = 100000',
            'name = "rig"\ncount = 2\nhashrate = 5\n'
            'command = "minerd -o {url} -u {user} -p {password}"',
        )
        + '\n[[timeline]]\nafter_blocks = 1\nleave = ["rig"]\n'
    )
    spec = parse_text(text)
    assert [m.name for m in spec.miners] == ["rig-1", "rig-2"]
    assert spec.timeline[0].leave == ("rig-1", "rig-2")
    assert spec.miners[0].command.startswith("minerd")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (("retarget_interval = 10", "retarget_interval = 10\nbogus = 1"), "chain.bogus"),
        (("retarget_interval = 10", 'retarget_interval = "ten"'), "chain.retarget_interval"),
        (("hashrate = 100000", "hashrate = -1"), "miners[0].hashrate"),
        (("after_retargets = 2", "after_retargets = 2\nat_seconds = 3"), "end needs exactly"),
        (('name = "a"', 'name = "a b"'), "miners[0].name"),
        (("[[miners]]", "[run]\nfee_bps = 20000\n[[miners]]"), "run.fee_bps"),
        (("[[miners]]", "[run]\nfee_share = 0.5\n[[miners]]"), "run.fee_share"),
        (("[[miners]]", "[run]\nfee_share = -0.01\n[[miners]]"), "run.fee_share"),
        (("[[miners]]", '[run]\nminer_command = "x {nope}"\n[[miners]]'), "run.miner_command"),
        (("target_spacing_seconds = 1.0", "target_spacing_seconds = 0.01"), "dead_time_seconds"),
    ],
)
def test_errors_name_the_key(change: tuple[str, str], named: str) -> None:
    old, new = change
    text = MINIMAL.replace(old, new, 1)
    message = error_of(text)
    assert "test.toml" in message
    assert named in message, message


def test_more_errors() -> None:
    assert "unknown key surprise" in error_of("surprise = 1\n" + MINIMAL)
    assert "no [quick] section" in error_of(MINIMAL, quick=True)
    assert "[end] is required" in error_of(MINIMAL.replace("[end]\nafter_retargets = 2", ""))
    assert "names no miner or group 'zz'" in error_of(
        MINIMAL + '\n[[timeline]]\nat_seconds = 1\nleave = ["zz"]\n'
    )
    assert "timeline[0] needs join or leave" in error_of(
        MINIMAL + "\n[[timeline]]\nat_seconds = 1\n"
    )
    assert "chain.mainnet_difficulty" in error_of(MINIMAL + "\n[economics]\nprice_usd = 1\n")
    assert "economics.machine_classes" in error_of(
        MINIMAL.replace("[chain]", "[chain]\nmainnet_difficulty = 1e12")
        + '\n[economics]\nmachine_classes = ["S9"]\n'
    )
    assert "every miner has start = false" in error_of(
        MINIMAL.replace("hashrate = 100000", "hashrate = 100000\nstart = false")
    )
    assert "chain.events[0] needs exactly one of set_difficulty and scale" in error_of(
        MINIMAL + "\n[[chain.events]]\nat_block = 3\n"
    )


def test_load_unknown_name_and_files(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="unknown scenario 'nope': the built-ins are"):
        load("nope")
    with pytest.raises(ScenarioError, match="no such scenario file"):
        load(str(tmp_path / "missing.toml"))
    broken = tmp_path / "broken.toml"
    broken.write_text("[chain\n")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load(str(broken))
    good = tmp_path / "mine.toml"
    good.write_text(MINIMAL)
    assert load(str(good)).name == "mine"


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any, Any]:
    code = cli.main(["scenario", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_unknown_name_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "no-such-scenario")
    assert code == 2 and out == ""
    assert "unknown scenario 'no-such-scenario'" in err
    assert "feb-2026" in err


def test_cli_bad_file_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(MINIMAL.replace("hashrate = 100000", 'hashrate = "fast"'))
    code, _, err = run_cli(capsys, str(bad), "--out", str(tmp_path / "out"))
    assert code == 2
    assert "miners[0].hashrate must be a number" in err and str(bad) in err
    assert not (tmp_path / "out").exists()  # nothing started


def test_miner_commands() -> None:
    external = MinerSpec(
        "x", 1000.0, "x", command="minerd -a sha256d -o {url} -u {user} -p '{password}' -n {name}"
    )
    args = {
        "url": "stratum+tcp://127.0.0.1:1",
        "user": "addr.x",
        "password": "x,d=1e-06",
        "duration": 5.0,
        "record": Path("x.jsonl"),
    }
    assert miner_command(external, **args) == [
        "minerd",
        "-a",
        "sha256d",
        "-o",
        "stratum+tcp://127.0.0.1:1",
        "-u",
        "addr.x",
        "-p",
        "x,d=1e-06",
        "-n",
        "x",
    ]
    bundled = miner_command(MinerSpec("y", 50000.0, "y"), **args)
    assert bundled[:4] == [sys.executable, "-m", "pool", "miner"]
    assert bundled[bundled.index("--hashrate") + 1] == "50000"
    assert bundled[bundled.index("--password") + 1] == "x,d=1e-06"
    assert share_difficulty(2**32, 0.5) == 0.5
