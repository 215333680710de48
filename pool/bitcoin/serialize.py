"""Low-level serialization: CompactSize integers, script pushes and script numbers.

All encodings follow Bitcoin Core (serialize.h, script/script.h).
"""

from __future__ import annotations

__all__ = [
    "OP_0",
    "OP_1",
    "OP_1NEGATE",
    "OP_PUSHDATA1",
    "OP_PUSHDATA2",
    "OP_PUSHDATA4",
    "bip34_height_script",
    "compact_size",
    "push_data",
    "script_number",
]

OP_0 = 0x00
OP_PUSHDATA1 = 0x4C
OP_PUSHDATA2 = 0x4D
OP_PUSHDATA4 = 0x4E
OP_1NEGATE = 0x4F
OP_1 = 0x51

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


def compact_size(n: int) -> bytes:
    """CompactSize ("varint") encoding used for counts and lengths."""
    if n < 0:
        raise ValueError(f"compact_size of a negative number: {n}")
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "little")
    if n <= 0xFFFF_FFFF:
        return b"\xfe" + n.to_bytes(4, "little")
    if n <= 0xFFFF_FFFF_FFFF_FFFF:
        return b"\xff" + n.to_bytes(8, "little")
    raise ValueError(f"compact_size out of range: {n}")


def push_data(data: bytes) -> bytes:
    """Minimal script push of ``data`` (as Core's ``CScript() << vector``).

    Up to 75 bytes: a single length byte; then OP_PUSHDATA1/2/4 with a 1/2/4-byte
    little-endian length.
    """
    n = len(data)
    if n < OP_PUSHDATA1:
        return bytes([n]) + data
    if n <= 0xFF:
        return bytes([OP_PUSHDATA1, n]) + data
    if n <= 0xFFFF:
        return bytes([OP_PUSHDATA2]) + n.to_bytes(2, "little") + data
    if n <= 0xFFFF_FFFF:
        return bytes([OP_PUSHDATA4]) + n.to_bytes(4, "little") + data
    raise ValueError(f"push of {n} bytes is too large")


def script_number(n: int) -> bytes:
    """CScriptNum minimal encoding: little endian, sign in the top bit of the last byte.

    0 is the empty string; 127 -> 7f; 128 -> 80 00; -1 -> 81; -128 -> 80 80.
    """
    if not _INT64_MIN <= n <= _INT64_MAX:
        raise ValueError(f"script number out of int64 range: {n}")
    if n == 0:
        return b""
    negative = n < 0
    magnitude = -n if negative else n
    out = bytearray()
    while magnitude:
        out.append(magnitude & 0xFF)
        magnitude >>= 8
    if out[-1] & 0x80:
        out.append(0x80 if negative else 0x00)
    elif negative:
        out[-1] |= 0x80
    return bytes(out)


def bip34_height_script(height: int) -> bytes:
    """Exactly what Bitcoin Core's ``CScript() << height`` produces (BIP34 prefix).

    0 -> OP_0; 1..16 -> OP_1..OP_16; -1 -> OP_1NEGATE; anything else a minimal push
    of its CScriptNum encoding (17 -> 01 11, 128 -> 02 80 00, 500000 -> 03 20 a1 07).
    """
    if not _INT64_MIN <= height <= _INT64_MAX:
        raise ValueError(f"height out of int64 range: {height}")
    if height == 0:
        return bytes([OP_0])
    if height == -1:
        return bytes([OP_1NEGATE])
    if 1 <= height <= 16:
        return bytes([OP_1 + height - 1])
    return push_data(script_number(height))
