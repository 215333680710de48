"""PPS credit maths: exact integer units, documented rounding, nothing lost."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest

from pool.bitcoin.target import DIFF1_TARGET, bits_to_target, difficulty_to_target
from pool.ledger.pps import (
    UNITS_PER_SAT,
    Scheme,
    block_value,
    exact_gross_units,
    expected_blocks,
    format_btc,
    payable_sat,
    share_value,
)

SUBSIDY = 312_500_000  # 3.125 BTC


def test_difficulty_one_network_pays_the_whole_block() -> None:
    value = share_value(1.0, DIFF1_TARGET, SUBSIDY, 0)
    assert value.credit == SUBSIDY * UNITS_PER_SAT
    assert value.fee == 0


def test_fee_in_basis_points() -> None:
    value = share_value(1.0, DIFF1_TARGET, SUBSIDY, 200)
    assert value.credit == SUBSIDY * UNITS_PER_SAT * 98 // 100
    assert value.fee == SUBSIDY * UNITS_PER_SAT * 2 // 100
    assert value.gross == value.credit + value.fee


def test_mainnet_share_value_matches_formula() -> None:
    # A mainnet-sized target (compact bits 0x17023a04, difficulty ~1.26e14) and a difficulty 65536
    # share: credit = d / D * B * (1 - fee), D = DIFF1 / target.
    target = bits_to_target(0x17023A04)
    value = share_value(65536.0, target, SUBSIDY, 100)
    network_difficulty = Fraction(DIFF1_TARGET, target)
    exact = Fraction(65536) / network_difficulty * SUBSIDY * UNITS_PER_SAT * Fraction(99, 100)
    assert value.credit == exact.numerator // exact.denominator
    assert 0 < value.credit < UNITS_PER_SAT  # worth less than a satoshi: units are needed


def test_value_per_share_scales_exactly_with_difficulty_drop() -> None:
    old = difficulty_to_target(1000.0)
    new = difficulty_to_target(1000.0 * (1 - 0.1116))
    ratio = exact_gross_units(1.0, new, SUBSIDY) / exact_gross_units(1.0, old, SUBSIDY)
    assert ratio == Fraction(new, old)
    assert abs(float(ratio) - 1 / (1 - 0.1116)) < 1e-12


def test_fpps_adds_the_template_fees() -> None:
    assert block_value(Scheme.PPS, SUBSIDY, SUBSIDY + 2_000_000) == SUBSIDY
    assert block_value(Scheme.FPPS, SUBSIDY, SUBSIDY + 2_000_000) == SUBSIDY + 2_000_000


def test_rounding_loses_under_one_unit_per_share_over_many_shares() -> None:
    rng = random.Random(7)
    target = difficulty_to_target(12345.678)
    exact_total = Fraction(0)
    credited = fees = 0
    n = 100_000
    for _ in range(n):
        d = rng.choice([0.001, 0.37, 1.0, 3.3, 1024.0, rng.uniform(0.0001, 50)])
        v = share_value(d, target, 5_000_000_000, 150)
        exact_total += exact_gross_units(d, target, 5_000_000_000)
        credited += v.credit
        fees += v.fee
    residue = exact_total - (credited + fees)
    assert 0 <= residue < n  # at most one unit per share stays in the reserve
    assert residue < UNITS_PER_SAT  # i.e. under one satoshi over 100 000 shares


def test_a_share_is_never_worth_more_than_a_block() -> None:
    regtest_target = 0x7FFFFF << 232  # plain regtest: D ~ 4.66e-10, every share is a block
    value = share_value(0.001, regtest_target, 5_000_000_000, 0)
    assert value.credit == 5_000_000_000 * UNITS_PER_SAT
    assert expected_blocks(0.001, regtest_target) == 1.0
    assert share_value(2.0, DIFF1_TARGET, SUBSIDY, 0) == share_value(1.0, DIFF1_TARGET, SUBSIDY, 0)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="difficulty"):
        share_value(0.0, DIFF1_TARGET, SUBSIDY, 0)
    with pytest.raises(ValueError, match="basis points"):
        share_value(1.0, DIFF1_TARGET, SUBSIDY, 10_001)
    with pytest.raises(ValueError, match="target"):
        share_value(1.0, 0, SUBSIDY, 0)


def test_helpers() -> None:
    assert payable_sat(2 * UNITS_PER_SAT + 999_999) == 2
    assert format_btc(150_000_000 * UNITS_PER_SAT + 1) == "1.50000000000001"
    assert format_btc(-1) == "-0.00000000000001"
    assert expected_blocks(2.0, DIFF1_TARGET // 4) == pytest.approx(0.5)
