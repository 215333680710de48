"""Known answers for pool.bitcoin.hashing.

SHA256 / HASH256 values: Bitcoin Core src/test/data/script_tests.json
("SHA256 0x20 ...", "HASH256 0x20 ..." rows). Block 125552 hash: Bitcoin wiki
"Block hashing algorithm".
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pool.bitcoin.hashing import display_to_hash, hash_to_display, sha256, sha256d

ALPHABET = b"abcdefghijklmnopqrstuvwxyz"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        (b"a", "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"),
        (ALPHABET, "71c480df93d6ae2f1efad1447c66c9525e316218cf51fc8d9ed832f2daf18b73"),
    ],
)
def test_sha256_core_vectors(data: bytes, expected: str) -> None:
    assert sha256(data).hex() == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "5df6e0e2761359d30a8275058e299fcc0381534545f55cf43e41983f5d4c9456"),
        (b"a", "bf5d3affb73efd2ec6c36ad3112dd933efed63c4e1cbffcfa88e2759c144f2d8"),
        (ALPHABET, "ca139bc10c2f660da42666f72e89a225936fc60f193c161124a672050c434671"),
    ],
)
def test_sha256d_core_vectors(data: bytes, expected: str) -> None:
    assert sha256d(data).hex() == expected


# Block 125552: sha256d(header) as raw bytes, and as bitcoind / explorers print it.
BLOCK_125552_INTERNAL = "1dbd981fe6985776b644b173a4d0385ddc1aa2a829688d1e0000000000000000"
BLOCK_125552_DISPLAY = "00000000000000001e8d6829a8a21adc5d38d0a473b144b6765798e61f98bd1d"


def test_hash_to_display_block_125552() -> None:
    assert hash_to_display(bytes.fromhex(BLOCK_125552_INTERNAL)) == BLOCK_125552_DISPLAY


def test_display_to_hash_block_125552() -> None:
    assert display_to_hash(BLOCK_125552_DISPLAY) == bytes.fromhex(BLOCK_125552_INTERNAL)


def test_display_to_hash_accepts_upper_case() -> None:
    assert display_to_hash(BLOCK_125552_DISPLAY.upper()) == bytes.fromhex(BLOCK_125552_INTERNAL)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "00",
        BLOCK_125552_DISPLAY[:-2],  # 31 bytes
        BLOCK_125552_DISPLAY + "00",  # 33 bytes
        "zz" + BLOCK_125552_DISPLAY[2:],  # not hex
        BLOCK_125552_DISPLAY[:-1],  # odd length
    ],
)
def test_display_to_hash_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        display_to_hash(bad)


@pytest.mark.parametrize("size", [0, 31, 33])
def test_hash_to_display_rejects_wrong_length(size: int) -> None:
    with pytest.raises(ValueError):
        hash_to_display(bytes(size))


@given(st.binary(min_size=32, max_size=32))
def test_display_round_trip(h: bytes) -> None:
    shown = hash_to_display(h)
    assert len(shown) == 64
    assert display_to_hash(shown) == h
    assert bytes.fromhex(shown) == h[::-1]
