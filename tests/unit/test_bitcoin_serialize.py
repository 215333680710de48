"""Known answers for pool.bitcoin.serialize.

Sources:
- script numbers: Bitcoin Core's script test data (script_valid.json rows such as
  ["128", "0x02 0x8000 EQUAL", "Leave room for the sign bit"]) and script_tests.json
  ("0x06000000008000" is 549755813888).
- pushes: the genesis coinbase scriptSig built by Core's chainparams.cpp
  (CScript() << 486604799 << CScriptNum(4) << <69-byte message>) = 04ffff001d 0104 45...,
  and the testnet4 genesis scriptSig from BIP94 (76-byte message -> 4c 4c ...).
- BIP34 heights: scriptSigs of real coinbases: mainnet block 300000 (03 e0 93 04),
  regtest blocks mined by Bitcoin Core's generatetoaddress (CScript() << height << OP_0):
  "5100" (height 1), "011100" (17), "02800000" (128), "02490100" (329, a block whose
  getblock height is 329); the genesis scriptSig (height-style push of 486604799).
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pool.bitcoin.serialize import bip34_height_script, compact_size, push_data, script_number

GENESIS_MESSAGE = b"The Times 03/Jan/2009 Chancellor on brink of second bailout for banks"
GENESIS_SCRIPT_SIG = bytes.fromhex(
    "04ffff001d0104455468652054696d65732030332f4a616e2f32303039204368616e63656c6c6f72"
    "206f6e206272696e6b206f66207365636f6e64206261696c6f757420666f722062616e6b73"
)
TESTNET4_MESSAGE = b"03/May/2024 000000000000000000001ebd58c244970b3aa9d783bb001011fbe8ea8e98e00e"
TESTNET4_SCRIPT_SIG = bytes.fromhex(
    "04ffff001d01044c4c30332f4d61792f3230323420303030303030303030303030303030303030303031"
    "6562643538633234343937306233616139643738336262303031303131666265386561386539386530"
    "3065"
)


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, "00"),
        (4, "04"),
        (0xFC, "fc"),
        (0xFD, "fdfd00"),
        (0xFFFF, "fdffff"),
        (0x10000, "fe00000100"),
        (0xFFFF_FFFF, "feffffffff"),
        (0x1_0000_0000, "ff0000000001000000"),
    ],
)
def test_compact_size(n: int, expected: str) -> None:
    assert compact_size(n).hex() == expected


@pytest.mark.parametrize("n", [-1, 2**64])
def test_compact_size_out_of_range(n: int) -> None:
    with pytest.raises(ValueError):
        compact_size(n)


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, ""),
        (1, "01"),
        (127, "7f"),
        (128, "8000"),
        (32767, "ff7f"),
        (32768, "008000"),
        (8388607, "ffff7f"),
        (8388608, "00008000"),
        (2147483647, "ffffff7f"),
        (2147483648, "0000008000"),
        (549755813887, "ffffffff7f"),
        (549755813888, "000000008000"),
        (9223372036854775807, "ffffffffffffff7f"),
        (-1, "81"),
        (-127, "ff"),
        (-128, "8080"),
        (-32767, "ffff"),
        (-32768, "008080"),
        (486604799, "ffff001d"),
    ],
)
def test_script_number_core_vectors(n: int, expected: str) -> None:
    assert script_number(n).hex() == expected


@pytest.mark.parametrize("n", [2**63, -(2**63) - 1])
def test_script_number_out_of_range(n: int) -> None:
    with pytest.raises(ValueError):
        script_number(n)


def test_push_data_matches_genesis_script_sig() -> None:
    script = push_data(script_number(486604799)) + push_data(script_number(4))
    script += push_data(GENESIS_MESSAGE)
    assert script == GENESIS_SCRIPT_SIG


def test_push_data_pushdata1_matches_testnet4_genesis() -> None:
    assert len(TESTNET4_MESSAGE) == 76
    script = push_data(script_number(486604799)) + push_data(script_number(4))
    script += push_data(TESTNET4_MESSAGE)
    assert script == TESTNET4_SCRIPT_SIG


@pytest.mark.parametrize(
    ("size", "prefix"),
    [
        (0, "00"),
        (1, "01"),
        (75, "4b"),
        (76, "4c4c"),
        (255, "4cff"),
        (256, "4d0001"),
        (65535, "4dffff"),
        (65536, "4e00000100"),
    ],
)
def test_push_data_boundaries(size: int, prefix: str) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    assert push_data(data) == bytes.fromhex(prefix) + data


@pytest.mark.parametrize(
    ("height", "expected"),
    [
        # from the brief (what CScript() << height gives)
        (0, "00"),
        (-1, "4f"),
        (16, "60"),
        (255, "02ff00"),
        (256, "020001"),
        (500000, "0320a107"),
        # from real coinbase scriptSigs (see module docstring)
        (1, "51"),
        (17, "0111"),
        (128, "028000"),
        (329, "024901"),
        (300000, "03e09304"),
        (486604799, "04ffff001d"),
    ],
)
def test_bip34_height_script(height: int, expected: str) -> None:
    assert bip34_height_script(height).hex() == expected


@pytest.mark.parametrize("height", range(1, 17))
def test_bip34_small_heights_are_single_opcodes(height: int) -> None:
    assert bip34_height_script(height) == bytes([0x50 + height])


def _decode_script_number(raw: bytes) -> int:
    """Reference decoder, written from CScriptNum's set_vch (script.h)."""
    if not raw:
        return 0
    value = int.from_bytes(raw, "little")
    if raw[-1] & 0x80:
        return -(value & ~(0x80 << (8 * (len(raw) - 1))))
    return value


@given(st.integers(min_value=-(2**63) + 1, max_value=2**63 - 1))
def test_script_number_round_trip_and_minimal(n: int) -> None:
    raw = script_number(n)
    assert _decode_script_number(raw) == n
    # minimal: the last byte carries information beyond a bare sign bit
    if raw:
        assert raw[-1] & 0x7F or (len(raw) > 1 and raw[-2] & 0x80)


@given(st.integers(min_value=17, max_value=2**31 - 1))
def test_bip34_large_heights_are_minimal_pushes(height: int) -> None:
    script = bip34_height_script(height)
    assert script[0] == len(script) - 1 <= 4
    assert _decode_script_number(script[1:]) == height
