"""Known answers for pool.bitcoin.target.

Sources:
- compact <-> target: Bitcoin Core src/test/arith_uint256_tests.cpp (SetCompact / GetCompact).
- difficulty: Core src/test/blockchain_tests.cpp (GetDifficulty vectors), regtest
  getblockchaininfo ("bits": "207fffff", "target": "7fffff00...", "difficulty":
  4.656542373906925e-10), block 100000 getblock ("bits": "1b04864c", "difficulty":
  14484.1623612254), genesis bits 1d00ffff = difficulty 1.
- proof of work: block 125552 (Bitcoin wiki "Block hashing algorithm") and block 100000.
"""

import math
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pool.bitcoin.target import (
    DIFF1_TARGET,
    bits_to_difficulty,
    bits_to_target,
    difficulty_to_target,
    hash_to_int,
    target_to_bits,
    target_to_difficulty,
)

MAX = 2**256 - 1


def test_diff1_constant() -> None:
    diff1 = int("00000000FFFF0000000000000000000000000000000000000000000000000000", 16)
    assert diff1 == DIFF1_TARGET


@pytest.mark.parametrize(
    ("bits", "target_hex", "compact"),
    [
        (0x00000000, "0", 0),
        (0x00123456, "0", 0),
        (0x01003456, "0", 0),
        (0x02000056, "0", 0),
        (0x03000000, "0", 0),
        (0x04000000, "0", 0),
        (0x00923456, "0", 0),
        (0x01803456, "0", 0),
        (0x02800056, "0", 0),
        (0x03800000, "0", 0),
        (0x04800000, "0", 0),
        (0x01123456, "12", 0x01120000),
        (0x02123456, "1234", 0x02123400),
        (0x03123456, "123456", 0x03123456),
        (0x04123456, "12345600", 0x04123456),
        (0x05009234, "92340000", 0x05009234),
        (
            0x20123456,
            "1234560000000000000000000000000000000000000000000000000000000000",
            0x20123456,
        ),
        (0x1D00FFFF, "ffff0000000000000000000000000000000000000000000000000000", 0x1D00FFFF),
    ],
)
def test_core_set_compact_get_compact(bits: int, target_hex: str, compact: int) -> None:
    target = bits_to_target(bits)
    assert target == int(target_hex, 16)
    assert target_to_bits(target) == compact


def test_core_get_compact_avoids_sign_bit() -> None:
    assert target_to_bits(0x80) == 0x02008000


@pytest.mark.parametrize("bits", [0x04923456, 0x01FEDCBA, 0x1D80FFFF])
def test_negative_bits_rejected(bits: int) -> None:
    with pytest.raises(ValueError, match="negative"):
        bits_to_target(bits)


@pytest.mark.parametrize("bits", [0xFF123456, 0x23000001, 0x22000100, 0x21010000])
def test_overflowing_bits_rejected(bits: int) -> None:
    with pytest.raises(ValueError, match="overflow"):
        bits_to_target(bits)


@pytest.mark.parametrize("bits", [0x22000001, 0x210000FF, 0x2000FFFF])
def test_largest_non_overflowing_bits(bits: int) -> None:
    assert 0 < bits_to_target(bits) <= MAX


@pytest.mark.parametrize("bits", [-1, 2**32])
def test_bits_must_be_uint32(bits: int) -> None:
    with pytest.raises(ValueError):
        bits_to_target(bits)


@pytest.mark.parametrize("target", [-1, 2**256])
def test_target_out_of_range(target: int) -> None:
    with pytest.raises(ValueError):
        target_to_bits(target)


def test_regtest_target() -> None:
    target = bits_to_target(0x207FFFFF)
    assert target == 0x7FFFFF << 232
    assert f"{target:064x}" == "7fffff" + "0" * 58


@pytest.mark.parametrize(
    ("bits", "difficulty"),
    [
        (0x1D00FFFF, 1.0),
        (0x207FFFFF, 4.656542373906925e-10),
        (0x1B04864C, 14484.1623612254),
        (0x12345678, 5913134931067755359633408.0),
        (0x1F111111, 8.94056082500228e-07),
    ],
)
def test_bits_to_difficulty(bits: int, difficulty: float) -> None:
    assert bits_to_difficulty(bits) == pytest.approx(difficulty, rel=1e-14)


def test_core_low_target_vector_within_core_tolerance() -> None:
    # blockchain_tests.cpp: TestDifficulty(0x1f111111, 0.000001) with epsilon 0.00001
    assert abs(bits_to_difficulty(0x1F111111) - 0.000001) < 0.00001


def test_target_to_difficulty() -> None:
    assert target_to_difficulty(DIFF1_TARGET) == 1.0
    assert target_to_difficulty(DIFF1_TARGET // 2) == 2.0
    assert target_to_difficulty(DIFF1_TARGET * 1000) == 0.001
    with pytest.raises(ValueError):
        target_to_difficulty(0)


@pytest.mark.parametrize(
    ("difficulty", "target"),
    [
        (1, DIFF1_TARGET),
        (1.0, DIFF1_TARGET),
        (2.0, DIFF1_TARGET // 2),
        (0.5, DIFF1_TARGET * 2),
        (3, DIFF1_TARGET // 3),
        (1e-80, MAX),
    ],
)
def test_difficulty_to_target(difficulty: float, target: int) -> None:
    assert difficulty_to_target(difficulty) == target


def test_difficulty_to_target_uses_exact_float_value() -> None:
    numerator, denominator = (0.001).as_integer_ratio()
    expected = DIFF1_TARGET * denominator // numerator
    assert difficulty_to_target(0.001) == expected
    # 0.001 as a double is a little above 1/1000, so the target is a little below 1000x
    assert expected < DIFF1_TARGET * 1000
    assert DIFF1_TARGET * 1000 - expected < DIFF1_TARGET * 1000 // 10**15


@pytest.mark.parametrize("bad", [0, 0.0, -1, -0.001, math.inf, -math.inf, math.nan])
def test_difficulty_to_target_rejects(bad: float) -> None:
    with pytest.raises(ValueError):
        difficulty_to_target(bad)


def test_hash_to_int_is_little_endian() -> None:
    assert hash_to_int(b"\x01" + bytes(31)) == 1
    assert hash_to_int(bytes(31) + b"\x01") == 1 << 248


@pytest.mark.parametrize(
    ("internal_hash", "bits"),
    [
        # block 125552
        ("1dbd981fe6985776b644b173a4d0385ddc1aa2a829688d1e0000000000000000", 0x1A44B9F2),
        # block 100000 (display 000000000003ba27aa200b1cecaad478d2b00432346c3f1f3986da1afd33e506)
        ("06e533fd1ada86391f3f6c343204b0d278d4aaec1c0b20aa27ba030000000000", 0x1B04864C),
    ],
)
def test_real_blocks_meet_their_target(internal_hash: str, bits: int) -> None:
    h = bytes.fromhex(internal_hash)
    target = bits_to_target(bits)
    assert hash_to_int(h) <= target
    # read in the wrong byte order the same hash is far above the target
    assert int.from_bytes(h, "big") > target


@given(st.integers(min_value=1, max_value=MAX))
def test_target_bits_round_trip(target: int) -> None:
    bits = target_to_bits(target)
    rounded = bits_to_target(bits)
    # compact keeps the top 3 significant bytes (or 2 when the sign bit would be set)
    assert rounded <= target
    assert target - rounded < max(1, rounded >> 15)
    assert target_to_bits(rounded) == bits


@given(
    st.integers(min_value=3, max_value=32),
    st.integers(min_value=0x008000, max_value=0x7FFFFF),
)
def test_normalized_bits_round_trip(size: int, mantissa: int) -> None:
    bits = (size << 24) | mantissa
    assert target_to_bits(bits_to_target(bits)) == bits


@given(st.floats(min_value=1e-9, max_value=1e12, allow_nan=False, allow_infinity=False))
def test_difficulty_target_consistency(difficulty: float) -> None:
    target = difficulty_to_target(difficulty)
    exact = Fraction(DIFF1_TARGET) / Fraction(difficulty)
    assert target <= exact < target + 1
    assert target_to_difficulty(target) == pytest.approx(difficulty, rel=1e-9)
