"""Known answers for pool.bitcoin.header (see test_bitcoin_vectors for sources).

Genesis parameters per network: Bitcoin Core chainparams.cpp CreateGenesisBlock(nTime,
nNonce, nBits, nVersion=1) with the asserted genesis hashes; testnet4 from BIP94.
"""

import pytest

from pool.bitcoin.hashing import display_to_hash, hash_to_display
from pool.bitcoin.header import block_hash, serialize_block, serialize_header
from pool.bitcoin.tx import TxOut, build_coinbase
from tests.unit.test_bitcoin_vectors import (
    BLOCK_100000_BITS,
    BLOCK_100000_HASH,
    BLOCK_100000_MERKLE_ROOT,
    BLOCK_100000_NONCE,
    BLOCK_100000_PREV,
    BLOCK_100000_SIZE,
    BLOCK_100000_TIME,
    BLOCK_100000_TXS,
    BLOCK_100000_VERSION,
    BLOCK_125552_BITS,
    BLOCK_125552_HASH,
    BLOCK_125552_HEADER,
    BLOCK_125552_MERKLE_ROOT,
    BLOCK_125552_NONCE,
    BLOCK_125552_PREV,
    BLOCK_125552_TIME,
    GENESIS_BITS,
    GENESIS_BLOCK,
    GENESIS_COINBASE,
    GENESIS_HASH,
    GENESIS_MERKLE_ROOT,
    GENESIS_NONCE,
    GENESIS_TIME,
    REGTEST_329_BLOCK,
    REGTEST_329_HASH,
    TESTNET4_GENESIS_BLOCK,
    TESTNET4_GENESIS_HASH,
    split_regtest_block,
)

ZERO = bytes(32)


def test_block_125552_header_and_hash() -> None:
    header = serialize_header(
        version=1,
        prev_hash=display_to_hash(BLOCK_125552_PREV),
        merkle_root=display_to_hash(BLOCK_125552_MERKLE_ROOT),
        ntime=BLOCK_125552_TIME,
        bits=BLOCK_125552_BITS,
        nonce=BLOCK_125552_NONCE,
    )
    assert header.hex() == BLOCK_125552_HEADER
    assert hash_to_display(block_hash(header)) == BLOCK_125552_HASH


GENESIS_PARAMS = [
    # (nTime, nNonce, nBits, genesis hash) per network, from chainparams.cpp
    (
        GENESIS_TIME,
        GENESIS_NONCE,
        GENESIS_BITS,
        GENESIS_HASH,
    ),
    (
        1296688602,
        414098458,
        0x1D00FFFF,
        "000000000933ea01ad0ee984209779baaec3ced90fa3f408719526f8d77f4943",
    ),
    (
        1598918400,
        52613770,
        0x1E0377AE,
        "00000008819873e925422c1ff0f99f7cc9bbb232af63a077a480a3633bee1ef6",
    ),
    (
        1296688602,
        2,
        0x207FFFFF,
        "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206",
    ),
]


def _genesis_header(ntime: int, nonce: int, bits: int) -> bytes:
    return serialize_header(
        version=1,
        prev_hash=ZERO,
        merkle_root=display_to_hash(GENESIS_MERKLE_ROOT),
        ntime=ntime,
        bits=bits,
        nonce=nonce,
    )


@pytest.mark.parametrize(
    ("ntime", "nonce", "bits", "expected"),
    GENESIS_PARAMS,
    ids=["main", "test", "signet", "regtest"],
)
def test_genesis_headers(ntime: int, nonce: int, bits: int, expected: str) -> None:
    assert hash_to_display(block_hash(_genesis_header(ntime, nonce, bits))) == expected


def test_mainnet_genesis_header_bytes() -> None:
    header = _genesis_header(GENESIS_TIME, GENESIS_NONCE, GENESIS_BITS)
    assert header.hex() == GENESIS_BLOCK[:160]


def test_mainnet_genesis_block() -> None:
    header = bytes.fromhex(GENESIS_BLOCK[:160])
    block = serialize_block(header, bytes.fromhex(GENESIS_COINBASE), [])
    assert block.hex() == GENESIS_BLOCK


def test_testnet4_genesis_block() -> None:
    raw = bytes.fromhex(TESTNET4_GENESIS_BLOCK)
    header = serialize_header(
        version=1,
        prev_hash=ZERO,
        merkle_root=raw[36:68],
        ntime=1714777860,
        bits=0x1D00FFFF,
        nonce=393743547,
    )
    assert hash_to_display(block_hash(header)) == TESTNET4_GENESIS_HASH
    assert serialize_block(header, raw[81:], []) == raw


def test_block_100000() -> None:
    header = serialize_header(
        version=BLOCK_100000_VERSION,
        prev_hash=display_to_hash(BLOCK_100000_PREV),
        merkle_root=display_to_hash(BLOCK_100000_MERKLE_ROOT),
        ntime=BLOCK_100000_TIME,
        bits=BLOCK_100000_BITS,
        nonce=BLOCK_100000_NONCE,
    )
    assert hash_to_display(block_hash(header)) == BLOCK_100000_HASH
    txs = [bytes.fromhex(t) for t in BLOCK_100000_TXS]
    block = serialize_block(header, txs[0], txs[1:])
    assert len(block) == BLOCK_100000_SIZE
    assert block[80] == 4
    assert block[81:] == b"".join(txs)


def test_regtest_329_block_rebuilt_from_coinbase_template() -> None:
    header, _, rest = split_regtest_block(REGTEST_329_BLOCK)
    template = build_coinbase(
        height=329,
        outputs=[TxOut(0x4A8183BA, bytes.fromhex("0014970b960dcb40385f21cb1b3f943f80e59efc6013"))],
        extranonce_size=1,
        witness_commitment=bytes.fromhex(
            "6a24aa21a9ede1f866b225eb31b1f836fdb4996825ec24e708cce5da2a1417c922e4cb5a86eb"
        ),
    )
    fields = {
        "version": int.from_bytes(header[0:4], "little"),
        "prev_hash": header[4:36],
        "merkle_root": header[36:68],
        "ntime": int.from_bytes(header[68:72], "little"),
        "bits": int.from_bytes(header[72:76], "little"),
        "nonce": int.from_bytes(header[76:80], "little"),
    }
    assert fields["version"] == 0x30000000
    assert fields["bits"] == 0x207FFFFF
    rebuilt = serialize_header(**fields)  # type: ignore[arg-type]
    assert rebuilt == header
    assert hash_to_display(block_hash(rebuilt)) == REGTEST_329_HASH
    block = serialize_block(rebuilt, template.tx_with_witness(b"\x00"), [rest])
    assert block.hex() == REGTEST_329_BLOCK


def test_version_signed_or_unsigned() -> None:
    kwargs = {"prev_hash": ZERO, "merkle_root": ZERO, "ntime": 0, "bits": 0, "nonce": 0}
    assert serialize_header(version=0x20000000, **kwargs)[:4].hex() == "00000020"  # type: ignore[arg-type]
    assert serialize_header(version=-1, **kwargs)[:4] == b"\xff\xff\xff\xff"  # type: ignore[arg-type]
    assert serialize_header(version=0xFFFFFFFF, **kwargs)[:4] == b"\xff\xff\xff\xff"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "override",
    [
        {"prev_hash": bytes(31)},
        {"merkle_root": bytes(33)},
        {"ntime": -1},
        {"ntime": 2**32},
        {"bits": 2**32},
        {"nonce": -1},
        {"nonce": 2**32},
        {"version": 2**32},
        {"version": -(2**31) - 1},
    ],
)
def test_serialize_header_rejects(override: dict[str, object]) -> None:
    kwargs: dict[str, object] = {
        "version": 1,
        "prev_hash": ZERO,
        "merkle_root": ZERO,
        "ntime": 0,
        "bits": 0,
        "nonce": 0,
    }
    kwargs.update(override)
    with pytest.raises(ValueError):
        serialize_header(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [0, 79, 81])
def test_header_length_checked(size: int) -> None:
    with pytest.raises(ValueError):
        block_hash(bytes(size))
    with pytest.raises(ValueError):
        serialize_block(bytes(size), b"", [])


def test_transaction_count_uses_compact_size() -> None:
    block = serialize_block(bytes(80), b"C", [b"t"] * 252)
    assert block[80:83] == bytes.fromhex("fdfd00")
    assert block[83:] == b"C" + b"t" * 252
