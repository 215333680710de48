"""Hash helpers: SHA-256, double SHA-256 and the two byte orders of a hash.

Bitcoin computes hashes as 32 raw bytes ("internal" order). The RPC interface and block
explorers print them reversed ("display" order), e.g. block hashes with leading zeros.
"""

from __future__ import annotations

import hashlib

__all__ = ["display_to_hash", "hash_to_display", "sha256", "sha256d"]

HASH_SIZE = 32


def sha256(b: bytes) -> bytes:
    """Single SHA-256 digest of ``b``."""
    return hashlib.sha256(b).digest()


def sha256d(b: bytes) -> bytes:
    """Double SHA-256 (Bitcoin's HASH256), internal byte order."""
    return hashlib.sha256(hashlib.sha256(b).digest()).digest()


def hash_to_display(h: bytes) -> str:
    """Internal 32-byte hash -> the hex string bitcoind prints (bytes reversed)."""
    if len(h) != HASH_SIZE:
        raise ValueError(f"a hash is {HASH_SIZE} bytes, got {len(h)}")
    return h[::-1].hex()


def display_to_hash(s: str) -> bytes:
    """Hex string as bitcoind prints it -> internal 32-byte hash.

    Raises ValueError on non-hex input or a length other than 64 hex digits.
    """
    try:
        raw = bytes.fromhex(s)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a hex hash: {s!r}") from exc
    if len(raw) != HASH_SIZE:
        raise ValueError(f"a hash is {HASH_SIZE} bytes ({2 * HASH_SIZE} hex digits), got {s!r}")
    return raw[::-1]
