"""Proof-of-work targets: compact "bits", 256-bit targets and difficulty.

``bits_to_target`` / ``target_to_bits`` follow Bitcoin Core's arith_uint256
SetCompact / GetCompact. Difficulty is DIFF1_TARGET / target (difficulty 1 = bits 1d00ffff).
"""

from __future__ import annotations

import math
from fractions import Fraction

__all__ = [
    "DIFF1_TARGET",
    "MAX_TARGET",
    "bits_to_difficulty",
    "bits_to_target",
    "difficulty_to_target",
    "hash_to_int",
    "target_to_bits",
    "target_to_difficulty",
]

DIFF1_TARGET = 0x00000000FFFF << 208
MAX_TARGET = 2**256 - 1


def bits_to_target(bits: int) -> int:
    """Expand compact ``bits`` to the target; ValueError if negative or overflowing."""
    if not 0 <= bits <= 0xFFFF_FFFF:
        raise ValueError(f"bits must be a uint32, got {bits:#x}")
    size = bits >> 24
    word = bits & 0x007FFFFF
    if size <= 3:
        word >>= 8 * (3 - size)
        target = word
    else:
        target = word << (8 * (size - 3))
    if word != 0 and bits & 0x00800000:
        raise ValueError(f"bits {bits:08x} encode a negative target")
    if word != 0 and (size > 34 or (word > 0xFF and size > 33) or (word > 0xFFFF and size > 32)):
        raise ValueError(f"bits {bits:08x} overflow 256 bits")
    return target


def target_to_bits(target: int) -> int:
    """Compact encoding of ``target`` (Core's GetCompact: rounds down to 3 significant bytes)."""
    if not 0 <= target <= MAX_TARGET:
        raise ValueError(f"target out of range 0..2**256-1: {target:#x}")
    size = (target.bit_length() + 7) // 8
    compact = target << (8 * (3 - size)) if size <= 3 else target >> (8 * (size - 3))
    if compact & 0x00800000:
        compact >>= 8
        size += 1
    return compact | (size << 24)


def target_to_difficulty(target: int) -> float:
    """DIFF1_TARGET / target as a float; ValueError if target is not positive."""
    if target <= 0:
        raise ValueError(f"target must be positive, got {target}")
    return DIFF1_TARGET / target


def difficulty_to_target(difficulty: float) -> int:
    """Share target for ``difficulty``: floor(DIFF1_TARGET / difficulty), exact, capped at 2**256-1.

    The float is taken at its exact binary value (0.001 is not rounded to 1/1000 first).
    ValueError if difficulty is not finite or not positive.
    """
    if not math.isfinite(difficulty) or difficulty <= 0:
        raise ValueError(f"difficulty must be a positive finite number, got {difficulty!r}")
    exact = Fraction(difficulty)
    target = DIFF1_TARGET * exact.denominator // exact.numerator
    return min(target, MAX_TARGET)


def bits_to_difficulty(bits: int) -> float:
    """Difficulty of compact ``bits`` (what getblockchaininfo.difficulty reports)."""
    return target_to_difficulty(bits_to_target(bits))


def hash_to_int(h: bytes) -> int:
    """A hash in internal byte order as the integer compared against targets."""
    return int.from_bytes(h, "little")
