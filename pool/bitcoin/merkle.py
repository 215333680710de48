"""Transaction merkle trees (hashes in internal byte order) and Stratum merkle branches."""

from __future__ import annotations

from collections.abc import Sequence

from .hashing import HASH_SIZE, sha256d

__all__ = ["merkle_branch", "merkle_root", "root_from_branch"]


def _check(hashes: Sequence[bytes]) -> None:
    for i, h in enumerate(hashes):
        if len(h) != HASH_SIZE:
            raise ValueError(f"hash #{i} is {len(h)} bytes, expected {HASH_SIZE}")


def _next_level(level: list[bytes]) -> list[bytes]:
    if len(level) % 2:
        level = [*level, level[-1]]
    return [sha256d(level[i] + level[i + 1]) for i in range(0, len(level), 2)]


def merkle_root(hashes: Sequence[bytes]) -> bytes:
    """Merkle root of txids in block order; an odd level repeats its last hash."""
    if not hashes:
        raise ValueError("merkle root of no hashes")
    _check(hashes)
    level = list(hashes)
    while len(level) > 1:
        level = _next_level(level)
    return level[0]


def merkle_branch(tx_hashes: Sequence[bytes]) -> list[bytes]:
    """Stratum merkle branch for the coinbase (position 0).

    ``tx_hashes`` are the txids of the OTHER transactions in block order. The miner
    computes the root as ``h = sha256d(h + b)`` for each branch entry ``b``.
    """
    _check(tx_hashes)
    branch: list[bytes] = []
    rest = list(tx_hashes)  # the level without its first (coinbase-path) element
    while rest:
        branch.append(rest[0])
        # pair (coinbase-path, rest[0]); the rest pairs among itself from rest[1:]
        tail = rest[1:]
        rest = _next_level(tail) if tail else []
    return branch


def root_from_branch(coinbase_hash: bytes, branch: Sequence[bytes]) -> bytes:
    """Merkle root from the coinbase txid and its Stratum branch."""
    _check([coinbase_hash, *branch])
    h = coinbase_hash
    for b in branch:
        h = sha256d(h + b)
    return h
