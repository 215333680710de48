"""The scheme comparison of the scenario lab (pure parts), on a run small enough to check by
hand.

The run: network target ``DIFF1 / 4`` (difficulty D = 4 exactly, so a difficulty-1 share is
a block with probability 1/4), subsidy 50 BTC, coinbase value 50.001 BTC (0.001 BTC of fees),
fee 1 %. Eight shares in journal order (difficulty, miner):

    0: 1 A   1: 1 A   2: 1 B   3: 1 A = block h1 (confirmed)
    4: 2 B   5: 1 B = block h2 (pending)   6: 1 A = block h3 (orphaned)   7: 1 B

A submitted 4 difficulty-units, B 5.

- PPS: a difficulty-1 share is worth 1/4 x 50 BTC x 0.99 = 12.375 BTC: A 49.5, B 61.875 BTC.
- FPPS: 1/4 x 50.001 x 0.99 = 12.3752475 BTC per unit: A 4x, B 5x.
- SOLO: h1 and h2 earned (h3 orphaned pays nobody): each 50.001 x 0.99 = 49.50099 BTC to its
  finder (A for h1, B for h2); the pool keeps 2 x 0.50001 BTC.
- PPLNS, window 9/8 blocks = 4.5 units: h1's window holds only 4 units (the whole log: A 3,
  B 1): A 3/4, B 1/4 of 49.50099 BTC. h2's window: shares 5, 4, 3 (B 1 + B 2 + A 1 = 4) and
  half of share 2 (B 0.5): A 1/4.5 = 2/9, B 7/9. A = 37.1257425 + 11.00022, B = 12.3752475 +
  38.50077 BTC; each fraction comes out exact, so nothing is rounded away.
- The pool's PPS result: -3 x 12.375 before share 3, -49.5 BTC at its low point (just before
  h1), ends at 2 x 50.001 - 111.375 = -11.373 BTC.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import pytest

from pool.bitcoin.target import DIFF1_TARGET
from pool.ledger.pps import share_value
from pool.scenarios import schemes_mc as mc
from pool.scenarios.schemes_compare import RunBlock, RunShare, compare, pps_pool_path
from pool.scenarios.schemes_html import SCHEME_PLOTS, schemes_html
from pool.scenarios.schemes_input import shares_from_records
from pool.scenarios.schemes_report import CompareSettings, schemes_section

BTC = 100_000_000 * 1_000_000  # units per BTC
TARGET = DIFF1_TARGET // 4
SUBSIDY = 5_000_000_000
COINBASE = 5_000_100_000
FEE = 100
A, B = "bcrt1qminera", "bcrt1qminerb"
LAYOUT = [(1.0, A), (1.0, A), (1.0, B), (1.0, A), (2.0, B), (1.0, B), (1.0, A), (1.0, B)]
BLOCK_AT = {3: ("h1", "confirmed"), 5: ("h2", "pending"), 6: ("h3", "orphaned")}


def btc(text: str) -> int:
    return int(Fraction(text) * BTC)


def run() -> tuple[list[RunShare], list[RunBlock]]:
    shares = [
        RunShare(
            time=float(i),
            address=who,
            difficulty=d,
            target=TARGET,
            subsidy_sat=SUBSIDY,
            coinbase_value_sat=COINBASE,
            block_hash=BLOCK_AT[i][0] if i in BLOCK_AT else None,
        )
        for i, (d, who) in enumerate(LAYOUT)
    ]
    blocks = [
        RunBlock(h, 100 + i, LAYOUT[i][1], COINBASE, status, float(i))
        for i, (h, status) in BLOCK_AT.items()
    ]
    return shares, blocks


def test_pps_and_fpps_are_the_ledgers_credits() -> None:
    shares, blocks = run()
    c = compare(shares, blocks, FEE, pplns_window_blocks=Fraction(9, 8))
    assert c.results["pps"].earnings == {A: btc("49.5"), B: btc("61.875")}
    assert c.results["fpps"].earnings == {A: btc("12.3752475") * 4, B: btc("12.3752475") * 5}
    # ...and to the unit what the ledger's own function credits share by share
    for scheme, value in (("pps", SUBSIDY), ("fpps", COINBASE)):
        ledger: dict[str, int] = {}
        for s in shares:
            credit = share_value(s.difficulty, s.target, value, FEE).credit
            ledger[s.address] = ledger.get(s.address, 0) + credit
        assert c.results[scheme].earnings == ledger
    pool = c.results["pps"].pool
    assert pool.rewards == 2 * COINBASE * 1_000_000  # h3 is orphaned: not the pool's
    assert pool.result == 2 * COINBASE * 1_000_000 - btc("111.375") == -btc("11.373")
    assert pool.fees == btc("0.125") * 9  # 1 % of 12.5 BTC per difficulty-unit


def test_solo_pays_each_earned_block_to_its_finder() -> None:
    shares, blocks = run()
    c = compare(shares, blocks, FEE)
    assert c.results["solo"].earnings == {A: btc("49.50099"), B: btc("49.50099")}
    assert c.results["solo"].pool.result == btc("1.00002")
    assert c.blocks_found == {A: 1, B: 1}
    # a miner who found nothing earns nothing
    only_a = [b for b in blocks if b.address == A]
    assert compare(shares, only_a, FEE).results["solo"].earnings == {A: btc("49.50099")}


def test_pplns_splits_over_the_window_and_skips_the_orphan() -> None:
    shares, blocks = run()
    c = compare(shares, blocks, FEE, pplns_window_blocks=Fraction(9, 8))
    earnings = c.results["pplns"].earnings
    assert earnings[A] == btc("37.1257425") + btc("11.00022")
    assert earnings[B] == btc("12.3752475") + btc("38.50077")
    assert c.results["pplns"].pool.result == btc("1.00002")  # the fee, no rounding dust
    assert c.pplns_blocks_without_share == 0
    # a wider window reaches the whole log for h2 too: A 3/7, B 4/7
    wide = compare(shares, blocks, FEE, pplns_window_blocks=Fraction(2)).results["pplns"]
    assert wide.earnings[A] == btc("37.1257425") + btc("49.50099") * 3 // 7


def test_the_pps_pool_path_has_the_low_point_before_the_first_block() -> None:
    shares, blocks = run()
    path = pps_pool_path(shares, blocks, FEE)
    assert min(v for _, v in path) == -btc("49.5")
    assert path[-1][1] == -btc("11.373")
    assert path == sorted(path, key=lambda p: p[0])  # in time order


def test_spread_is_zero_for_pps_and_binomial_for_solo() -> None:
    shares, blocks = run()
    c = compare(shares, blocks, FEE)
    per_share = {s: c.results[s].earnings for s in ("pps", "fpps")}
    spread = mc.resample_spread(shares, per_share, FEE, Fraction(2), resamples=20_000, seed=7)
    for scheme in ("pps", "fpps"):
        for address, stats in spread.miners[scheme].items():
            assert stats.std == 0.0 and stats.mean == per_share[scheme][address]
    # SOLO: A's 4 shares of p = 1/4 -> Binomial(4, 1/4) blocks of 49.50099 BTC each.
    net = btc("49.50099")
    solo_a = spread.miners["solo"][A]
    assert solo_a.mean == pytest.approx(net * 1.0, rel=0.03)
    assert solo_a.std == pytest.approx(net * math.sqrt(4 * 0.25 * 0.75), rel=0.03)
    # B: three difficulty-1 shares (p 1/4) and one of difficulty 2 (p 1/2)
    var_b = 3 * 0.25 * 0.75 + 0.5 * 0.5
    assert spread.miners["solo"][B].std == pytest.approx(net * math.sqrt(var_b), rel=0.03)
    # PPLNS spreads the luck over both miners: less spread than SOLO for each
    for address in (A, B):
        assert spread.miners["pplns"][address].std < spread.miners["solo"][address].std
    # the pool carries the luck under PPS; under PPLNS only its fee varies
    assert spread.pool["pps"].std > 10 * spread.pool["pplns"].std > 0
    assert spread.blocks.mean == pytest.approx(sum(s.expected_blocks for s in shares), rel=0.02)


def test_spread_is_reproducible_by_seed() -> None:
    shares, blocks = run()
    c = compare(shares, blocks, FEE)
    per_share = {s: c.results[s].earnings for s in ("pps", "fpps")}

    def once(seed: int) -> mc.Spread:
        return mc.resample_spread(shares, per_share, FEE, Fraction(2), resamples=300, seed=seed)

    assert once(1) == once(1)
    assert once(1).miners["solo"] != once(2).miners["solo"]
    with pytest.raises(ValueError, match="resamples"):
        mc.resample_spread(shares, per_share, FEE, Fraction(2), resamples=0, seed=1)


def test_ruin_bounds_and_a_hand_checked_case() -> None:
    result = mc.ruin(
        payout_ratio=1.0, horizons=[1.0, 50.0], reserves=[0.0, 0.5, 60.0], paths=20_000, seed=3
    )
    one, fifty = result.probability
    assert one[0] == fifty[0] == 1.0  # no reserve: the first credit comes before any block
    assert one[2] == fifty[2] == 0.0  # more than everything credited up to the horizon
    # Horizon 1 expected block, reserve 1/2 block, fee 0: ruined iff the first block comes
    # after t = 1/2 (one block before then lifts the reserve above what is left to pay).
    se = math.sqrt(math.exp(-0.5) * (1 - math.exp(-0.5)) / 20_000)
    assert one[1] == pytest.approx(math.exp(-0.5), abs=5 * se)
    assert fifty[1] > one[1]  # a longer horizon is riskier
    # a fee makes ruin rarer on the same paths
    with_fee = mc.ruin(
        payout_ratio=0.9, horizons=[1.0, 50.0], reserves=[0.0, 0.5, 60.0], paths=20_000, seed=3
    )
    assert with_fee.probability[1][1] < fifty[1]


def test_ruin_is_monotonic_and_seeded() -> None:
    reserves = [0.0, 1.0, 2.0, 5.0, 10.0]
    a = mc.ruin(payout_ratio=0.98, horizons=[100, 300], reserves=reserves, paths=500, seed=9)
    b = mc.ruin(payout_ratio=0.98, horizons=[100, 300], reserves=reserves, paths=500, seed=9)
    c = mc.ruin(payout_ratio=0.98, horizons=[100, 300], reserves=reserves, paths=500, seed=10)
    assert a.probability == b.probability
    assert a.probability != c.probability
    for row in a.probability:
        assert row == sorted(row, reverse=True)
    assert all(x <= y for x, y in zip(*a.probability, strict=True))
    for bad in ({"paths": 0}, {"horizons": [0.0]}, {"reserves": [-1.0]}):
        kwargs = {"payout_ratio": 1.0, "horizons": [1.0], "reserves": [1.0], "paths": 10}
        kwargs.update(bad)
        with pytest.raises(ValueError):
            mc.ruin(seed=1, **kwargs)  # type: ignore[arg-type]


def test_section_json_and_html() -> None:
    shares, blocks = run()
    pps = compare(shares, blocks, FEE).results["pps"].earnings
    settings = CompareSettings(seed=5, paths=300, resamples=50, pplns_window_blocks=Fraction(9, 8))
    section = schemes_section(
        shares,
        blocks,
        fee_bps=FEE,
        names={A: "rig-a", B: "rig-b"},
        origin=0.0,
        settings=settings,
        ledger_balances=pps,
    )
    assert section["pps_matches_ledger"] is True
    off = {**pps, A: pps[A] + 1}
    assert (
        schemes_section(
            shares,
            blocks,
            fee_bps=FEE,
            names={},
            origin=0.0,
            settings=settings,
            ledger_balances=off,
        )["pps_matches_ledger"]
        is False
    )
    rows = {m["miner"]: m for m in section["miners"]}
    assert rows["rig-a"]["pplns"]["units"] == btc("37.1257425") + btc("11.00022")
    assert rows["rig-b"]["solo"]["units"] == btc("49.50099")
    assert section["totals"]["blocks_by_status"] == {"confirmed": 1, "pending": 1, "orphaned": 1}
    assert section["pps_reserve"]["needed"]["units"] == btc("49.5")
    ruin = section["ruin"]
    assert ruin["paths"] == 300 and ruin["seed"] == 5
    assert ruin["horizons"][0]["expected_blocks"] == pytest.approx(2.25)  # 9 units / D
    assert ruin["payout_ratio"] == pytest.approx(0.99 * 50 / 50.001)
    html = schemes_html(section, 8.0)
    for plot in SCHEME_PLOTS:
        assert f'data-plot="{plot}"' in html
    assert html.count('<rect class="bar"') == 2 * 4  # two miners x four schemes
    assert "rig-a" in html and "PPLNS BTC" in html


def test_fpps_value_of_a_pps_record_comes_from_the_block_at_its_height() -> None:
    def record(height: int, block: dict[str, object] | None = None) -> dict[str, object]:
        r: dict[str, object] = {
            "time": 1.0,
            "address": A,
            "difficulty": 1.0,
            "target": TARGET.to_bytes(32, "big"),
            "height": height,
            "scheme": "pps",
            "block_value_sat": SUBSIDY,
        }
        if block:
            r["block"] = block
        return r

    from pool.bitcoin import REGTEST

    subsidy = REGTEST.block_subsidy(10)
    found = RunBlock("h", 10, A, subsidy + 777, "pending", 1.0)
    shares, unknown = shares_from_records(
        [
            record(10),
            record(11),
            record(10, {"hash": "h", "height": 10, "reward_sat": subsidy + 777}),
        ],
        [found],
        REGTEST,
    )
    assert [s.coinbase_value_sat - s.subsidy_sat for s in shares] == [777, 0, 777]
    assert unknown == 1 and shares[2].block_hash == "h"


def test_the_window_slice_never_cuts_the_pplns_window_short() -> None:
    """The lab finds each block's window from float prefix sums, then lets the ledger's PPLNS
    walk it exactly: the result must equal the walk over the whole log before the block."""
    import random

    from pool.ledger.pplns import pplns_credits
    from pool.scenarios.schemes_compare import PplnsLog, pplns_window

    rng = random.Random(4)
    shares = [
        RunShare(
            time=float(i),
            address=rng.choice("abc"),
            difficulty=rng.choice([0.1, 0.25, 1.0, 3.0, 1e-3 * (1 + i % 7)]),
            target=TARGET,
            subsidy_sat=SUBSIDY,
            coinbase_value_sat=COINBASE,
        )
        for i in range(300)
    ]
    log = PplnsLog(shares)
    for window in (Fraction(1, 8), Fraction(1), Fraction(3, 2), Fraction(100)):
        for index in range(0, 300, 7):
            units = pplns_window(shares[index], window)
            whole = [(s.address, s.difficulty) for s in shares[: index + 1]]
            expected = pplns_credits(whole, units, COINBASE * 1_000_000, FEE)
            assert log.split(index, COINBASE * 1_000_000, window, FEE) == (
                expected.credits,
                expected.pool,
            )


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--paths", "0", "argument --paths: must be 1..1000000, got 0"),
        ("--resamples", "many", "argument --resamples: not a whole number: 'many'"),
        ("--seed", "-1", "argument --seed: must be 0.."),
        ("--pplns-window", "0", "argument --pplns-window: must be > 0"),
        ("--reserves", "1,x", "argument --reserves: not a number: 'x'"),
        ("--reserves", "-1", "argument --reserves: must be 0..1000000 blocks, got -1"),
    ],
)
def test_cli_refuses_bad_comparison_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, message: str
) -> None:
    from pool import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["scenario", "feb-2026", "--quick", "--out", str(tmp_path / "o"), flag, value])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing started


def test_html_without_a_section_or_with_an_error() -> None:
    assert schemes_html(None, 1.0) == ""
    html = schemes_html({"error": "ValueError('<bad>')"}, 1.0)
    assert "Not computed: ValueError(&#x27;&lt;bad&gt;&#x27;)" in html
    shares, blocks = run()
    settings = CompareSettings(seed=1, paths=50, resamples=10)
    section = schemes_section(shares, blocks, fee_bps=FEE, names={}, origin=0.0, settings=settings)
    assert "pps_matches_ledger" not in section  # no balances given: nothing claimed
    assert "FPPS equals PPS" not in schemes_html(section, 8.0)  # this run's blocks had fees
    empty = schemes_section([], [], fee_bps=FEE, names={}, origin=0.0, settings=settings)
    assert empty["ruin"] is None and empty["miners"] == []
    assert schemes_html(empty, 1.0).count('<svg class="plot"') == len(SCHEME_PLOTS)
