"""Known answers for pool.bitcoin.merkle (real block merkle roots; see test_bitcoin_vectors)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pool.bitcoin.hashing import sha256d
from pool.bitcoin.merkle import merkle_branch, merkle_root, root_from_branch
from tests.unit.test_bitcoin_vectors import (
    BLOCK_100000_COINBASE_BRANCH,
    BLOCK_100000_MERKLE_ROOT,
    BLOCK_100000_TXIDS,
    GENESIS_MERKLE_ROOT,
    REGTEST_327_BLOCK,
    REGTEST_327_TXIDS_AFTER_COINBASE,
    REGTEST_329_BLOCK,
    REGTEST_329_TXID_1,
    split_regtest_block,
    strip_coinbase_witness,
)


def internal(display: str) -> bytes:
    return bytes.fromhex(display)[::-1]


def test_block_100000_merkle_root() -> None:
    root = merkle_root([internal(t) for t in BLOCK_100000_TXIDS])
    assert root == internal(BLOCK_100000_MERKLE_ROOT)


def test_block_100000_coinbase_branch() -> None:
    branch = merkle_branch([internal(t) for t in BLOCK_100000_TXIDS[1:]])
    assert branch == [internal(h) for h in BLOCK_100000_COINBASE_BRANCH]
    coinbase = internal(BLOCK_100000_TXIDS[0])
    assert root_from_branch(coinbase, branch) == internal(BLOCK_100000_MERKLE_ROOT)


def test_order_matters() -> None:
    txids = [internal(t) for t in BLOCK_100000_TXIDS]
    swapped = [txids[0], txids[2], txids[1], txids[3]]
    assert merkle_root(swapped) != internal(BLOCK_100000_MERKLE_ROOT)


def test_single_hash_is_its_own_root() -> None:
    genesis = internal(GENESIS_MERKLE_ROOT)
    assert merkle_root([genesis]) == genesis
    assert merkle_branch([]) == []
    assert root_from_branch(genesis, []) == genesis


def _regtest_txids(raw_hex: str) -> tuple[bytes, bytes]:
    header, coinbase, _ = split_regtest_block(raw_hex)
    return header[36:68], sha256d(strip_coinbase_witness(coinbase))


def test_regtest_two_transactions() -> None:
    root, coinbase_txid = _regtest_txids(REGTEST_329_BLOCK)
    rest = [internal(REGTEST_329_TXID_1)]
    assert merkle_root([coinbase_txid, *rest]) == root
    assert merkle_branch(rest) == rest
    assert root_from_branch(coinbase_txid, rest) == root


def test_regtest_three_transactions_duplicates_last() -> None:
    root, coinbase_txid = _regtest_txids(REGTEST_327_BLOCK)
    rest = [internal(t) for t in REGTEST_327_TXIDS_AFTER_COINBASE]
    assert merkle_root([coinbase_txid, *rest]) == root
    branch = merkle_branch(rest)
    assert branch == [rest[0], sha256d(rest[1] + rest[1])]
    assert root_from_branch(coinbase_txid, branch) == root


def test_empty_merkle_root_rejected() -> None:
    with pytest.raises(ValueError):
        merkle_root([])


@pytest.mark.parametrize("size", [0, 31, 33])
def test_wrong_hash_sizes_rejected(size: int) -> None:
    good = bytes(32)
    with pytest.raises(ValueError):
        merkle_root([good, bytes(size)])
    with pytest.raises(ValueError):
        merkle_branch([good, bytes(size)])
    with pytest.raises(ValueError):
        root_from_branch(bytes(size), [good])


hashes = st.binary(min_size=32, max_size=32)


@given(hashes, st.lists(hashes, max_size=40))
def test_branch_reproduces_root(coinbase: bytes, rest: list[bytes]) -> None:
    assert root_from_branch(coinbase, merkle_branch(rest)) == merkle_root([coinbase, *rest])


@given(st.lists(hashes, max_size=200))
def test_branch_length_is_tree_depth(rest: list[bytes]) -> None:
    n = len(rest) + 1
    assert len(merkle_branch(rest)) == (n - 1).bit_length()
