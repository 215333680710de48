"""Known answers for pool.bitcoin.tx: coinbases rebuilt byte for byte from real blocks.

- mainnet genesis coinbase (txid 4a5e1e4b...): scriptSig = CScript() << 486604799 <<
  CScriptNum(4) << message (Core's chainparams.cpp), i.e. a "height" push, then extra data;
- testnet4 genesis coinbase (BIP94);
- Bitcoin Core regtest coinbases of blocks 327 and 329 (CScript() << height << OP_0, a
  witness commitment output, segwit serialization with the 32-byte zero witness);
- the output of mainnet block 300000's coinbase (value 25.04028360 BTC to a P2PKH script).
See test_bitcoin_vectors for the data and its sources.
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pool.bitcoin.hashing import sha256d
from pool.bitcoin.merkle import merkle_root
from pool.bitcoin.serialize import push_data, script_number
from pool.bitcoin.tx import CoinbaseTemplate, TxOut, build_coinbase
from tests.unit.test_bitcoin_vectors import (
    GENESIS_COINBASE,
    GENESIS_MERKLE_ROOT,
    GENESIS_MESSAGE,
    GENESIS_PUBKEY,
    REGTEST_327_BLOCK,
    REGTEST_327_TXIDS_AFTER_COINBASE,
    REGTEST_329_BLOCK,
    REGTEST_329_TXID_1,
    TESTNET4_GENESIS_BLOCK,
    TESTNET4_GENESIS_MESSAGE,
    split_regtest_block,
    strip_coinbase_witness,
)

COIN = 100_000_000
P2PK_GENESIS = push_data(bytes.fromhex(GENESIS_PUBKEY)) + b"\xac"


def internal(display: str) -> bytes:
    return bytes.fromhex(display)[::-1]


def test_txout_serialize_block_300000_coinbase_output() -> None:
    out = TxOut(2_504_028_360, bytes.fromhex("76a91480ad90d403581fa3bf46086a91b2d9d4125db6c188ac"))
    assert out.serialize().hex() == (
        "c8704095000000001976a91480ad90d403581fa3bf46086a91b2d9d4125db6c188ac"
    )


def test_txout_rejects_negative_value() -> None:
    with pytest.raises(ValueError):
        TxOut(-1, b"\x51")


def _genesis_template(extranonce_size: int) -> CoinbaseTemplate:
    # scriptSig = 04ffff001d | 0104 | 45 <message>; the extranonce takes the place of 0104.
    rest = push_data(script_number(4)) + push_data(GENESIS_MESSAGE)
    return build_coinbase(
        height=486604799,
        outputs=[TxOut(50 * COIN, P2PK_GENESIS)],
        extranonce_size=extranonce_size,
        aux=rest[extranonce_size:],
        version=1,
    )


def test_genesis_coinbase_rebuilt() -> None:
    template = _genesis_template(0)
    assert template.tx(b"").hex() == GENESIS_COINBASE
    assert template.txid(b"") == internal(GENESIS_MERKLE_ROOT)
    assert not template.has_witness_commitment
    assert template.tx_with_witness(b"") == template.tx(b"")


def test_genesis_coinbase_with_extranonce_slot() -> None:
    template = _genesis_template(2)
    assert template.coinb1.hex().endswith("ffffffff4d04ffff001d")
    assert template.coinb2.hex().startswith("455468652054696d6573")
    assert template.tx(bytes.fromhex("0104")).hex() == GENESIS_COINBASE
    assert template.txid(bytes.fromhex("0104")) == internal(GENESIS_MERKLE_ROOT)
    assert template.txid(bytes.fromhex("0105")) != internal(GENESIS_MERKLE_ROOT)


def test_testnet4_genesis_coinbase_rebuilt() -> None:
    block = bytes.fromhex(TESTNET4_GENESIS_BLOCK)
    template = build_coinbase(
        height=486604799,
        outputs=[TxOut(50 * COIN, push_data(bytes(33)) + b"\xac")],
        extranonce_size=0,
        pool_tag=push_data(script_number(4)) + push_data(TESTNET4_GENESIS_MESSAGE),
        version=1,
    )
    assert template.tx(b"") == block[81:]
    assert template.txid(b"") == block[36:68]


def _regtest_template(
    height: int, value: int, script_hex: str, commitment_hex: str
) -> CoinbaseTemplate:
    return build_coinbase(
        height=height,
        outputs=[TxOut(value, bytes.fromhex(script_hex))],
        extranonce_size=1,
        witness_commitment=bytes.fromhex(commitment_hex),
        version=2,
    )


def test_regtest_329_coinbase_rebuilt() -> None:
    header, segwit_coinbase, _ = split_regtest_block(REGTEST_329_BLOCK)
    template = _regtest_template(
        329,
        0x4A8183BA,
        "0014970b960dcb40385f21cb1b3f943f80e59efc6013",
        "6a24aa21a9ede1f866b225eb31b1f836fdb4996825ec24e708cce5da2a1417c922e4cb5a86eb",
    )
    assert template.coinb1.hex() == "0200000001" + "00" * 32 + "ffffffff04024901"
    assert template.coinb2.hex().startswith("ffffffff02ba83814a00000000")
    assert template.has_witness_commitment
    assert template.tx_with_witness(b"\x00") == segwit_coinbase
    assert template.tx(b"\x00") == strip_coinbase_witness(segwit_coinbase)
    txid = template.txid(b"\x00")
    assert merkle_root([txid, internal(REGTEST_329_TXID_1)]) == header[36:68]


def test_regtest_327_coinbase_rebuilt() -> None:
    header, segwit_coinbase, _ = split_regtest_block(REGTEST_327_BLOCK)
    template = _regtest_template(
        327,
        0x4A818AEA,
        "00144d92b0bf448dde39553e93a06ca04b8cc7e449ec",
        "6a24aa21a9ed584e9196713025fba31e8bd4d3980c610196d6fab5408fbf041993fb3ebf70ab",
    )
    assert template.tx_with_witness(b"\x00") == segwit_coinbase
    rest = [internal(t) for t in REGTEST_327_TXIDS_AFTER_COINBASE]
    assert merkle_root([template.txid(b"\x00"), *rest]) == header[36:68]


def test_extranonce_must_have_the_template_size() -> None:
    template = _genesis_template(2)
    for bad in (b"", b"\x01", b"\x01\x04\x00"):
        with pytest.raises(ValueError, match="extranonce"):
            template.tx(bad)
        with pytest.raises(ValueError):
            template.txid(bad)
        with pytest.raises(ValueError):
            template.tx_with_witness(bad)


def test_script_sig_too_short() -> None:
    # height 1 is the single opcode OP_1: one byte, below the 2-byte minimum
    with pytest.raises(ValueError, match="1 bytes"):
        build_coinbase(height=1, outputs=[TxOut(1, b"\x51")], extranonce_size=0)
    build_coinbase(height=1, outputs=[TxOut(1, b"\x51")], extranonce_size=1)


def test_script_sig_too_long() -> None:
    # 03 xx xx xx (4) + extranonce 8 + tag 88 = 100: allowed; one more byte is not
    ok = build_coinbase(
        height=300000, outputs=[TxOut(1, b"\x51")], extranonce_size=8, pool_tag=b"x" * 88
    )
    assert ok.coinb1[41] == 100
    with pytest.raises(ValueError, match="101 bytes"):
        build_coinbase(
            height=300000, outputs=[TxOut(1, b"\x51")], extranonce_size=8, pool_tag=b"x" * 89
        )


def test_no_outputs_rejected() -> None:
    with pytest.raises(ValueError, match="output"):
        build_coinbase(height=300000, outputs=[], extranonce_size=8)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"height": -1},
        {"extranonce_size": -1},
        {"version": -1},
        {"outputs": [TxOut(21_000_000 * COIN, b"\x51"), TxOut(1, b"\x51")]},
    ],
)
def test_invalid_arguments_rejected(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {
        "height": 300000,
        "outputs": [TxOut(1, b"\x51")],
        "extranonce_size": 8,
    }
    args.update(kwargs)
    with pytest.raises(ValueError):
        build_coinbase(**args)  # type: ignore[arg-type]


@given(
    height=st.integers(min_value=0, max_value=2**31 - 1),
    extranonce=st.binary(min_size=2, max_size=16),
    tag=st.binary(max_size=40),
    values=st.lists(st.integers(min_value=0, max_value=50 * COIN), min_size=1, max_size=4),
    commitment=st.one_of(st.none(), st.binary(min_size=38, max_size=38)),
)
def test_layout(
    height: int, extranonce: bytes, tag: bytes, values: list[int], commitment: bytes | None
) -> None:
    outputs = [TxOut(v, b"\x00\x14" + bytes(20)) for v in values]
    template = build_coinbase(
        height=height,
        outputs=outputs,
        extranonce_size=len(extranonce),
        pool_tag=tag,
        witness_commitment=commitment,
    )
    raw = template.tx(extranonce)
    assert raw[:4] == b"\x02\x00\x00\x00"
    assert raw[4:41] == b"\x01" + bytes(32) + b"\xff\xff\xff\xff"
    script_len = raw[41]
    script_sig = raw[42 : 42 + script_len]
    assert script_sig.endswith(extranonce + tag)
    assert raw[42 + script_len : 46 + script_len] == b"\xff\xff\xff\xff"
    n_outputs = len(values) + (commitment is not None)
    assert raw[46 + script_len] == n_outputs
    assert raw.endswith(bytes(4))
    assert template.txid(extranonce) == sha256d(raw)
    witness = template.tx_with_witness(extranonce)
    if commitment is None:
        assert witness == raw
    else:
        assert witness[4:6] == b"\x00\x01"
        assert len(witness) == len(raw) + 2 + 34
        assert strip_coinbase_witness(witness) == raw
