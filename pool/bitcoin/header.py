"""Block header and full block serialization."""

from __future__ import annotations

from collections.abc import Sequence

from .hashing import HASH_SIZE, sha256d
from .serialize import compact_size

__all__ = ["HEADER_SIZE", "block_hash", "serialize_block", "serialize_header"]

HEADER_SIZE = 80


def _uint32(name: str, value: int) -> bytes:
    if not 0 <= value <= 0xFFFF_FFFF:
        raise ValueError(f"{name} must be a uint32, got {value}")
    return value.to_bytes(4, "little")


def serialize_header(
    *, version: int, prev_hash: bytes, merkle_root: bytes, ntime: int, bits: int, nonce: int
) -> bytes:
    """The 80-byte header: uint32s little endian, hashes in internal byte order.

    ``version`` may be given signed (Core's int32) or unsigned; both encode the same bytes.
    """
    if -(2**31) <= version < 0:
        version += 2**32
    if len(prev_hash) != HASH_SIZE:
        raise ValueError(f"prev_hash is {len(prev_hash)} bytes, expected {HASH_SIZE}")
    if len(merkle_root) != HASH_SIZE:
        raise ValueError(f"merkle_root is {len(merkle_root)} bytes, expected {HASH_SIZE}")
    return (
        _uint32("version", version)
        + prev_hash
        + merkle_root
        + _uint32("ntime", ntime)
        + _uint32("bits", bits)
        + _uint32("nonce", nonce)
    )


def block_hash(header: bytes) -> bytes:
    """Block hash (sha256d of the 80-byte header), internal byte order."""
    if len(header) != HEADER_SIZE:
        raise ValueError(f"header is {len(header)} bytes, expected {HEADER_SIZE}")
    return sha256d(header)


def serialize_block(header: bytes, coinbase: bytes, transactions: Sequence[bytes]) -> bytes:
    """Full block for submitblock: header, tx count, coinbase (as given), transactions."""
    if len(header) != HEADER_SIZE:
        raise ValueError(f"header is {len(header)} bytes, expected {HEADER_SIZE}")
    return header + compact_size(1 + len(transactions)) + coinbase + b"".join(transactions)
