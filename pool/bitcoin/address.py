"""Payout addresses -> scriptPubKey: base58check (P2PKH, P2SH), bech32 / bech32m (BIP173, BIP350).

``address_to_script`` validates the address against the network bitcoind reports and
raises :class:`AddressError` naming the address and what is wrong with it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence

from .hashing import sha256d
from .network import NETWORKS, Network

__all__ = [
    "AddressError",
    "Encoding",
    "address_to_script",
    "base58check_decode",
    "base58check_encode",
    "bech32_decode",
    "bech32_encode",
    "decode_segwit",
    "encode_segwit",
    "witness_script",
]


class AddressError(ValueError):
    """An address that cannot be paid to on this network; the message says why."""


class _Bad(Exception):
    """Internal: a decoding failure with a human-readable reason."""


class Encoding(enum.Enum):
    """Checksum variant: the constant XOR-ed into the BCH checksum."""

    BECH32 = 1
    BECH32M = 0x2BC830A3


CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
MAX_BECH32_LENGTH = 90
_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}


# --- bech32 / bech32m ---------------------------------------------------------------


def _polymod(values: Iterable[int]) -> int:
    chk = 1
    for value in values:
        top = chk >> 25
        chk = ((chk & 0x1FFFFFF) << 5) ^ value
        for i, gen in enumerate(_GENERATOR):
            if (top >> i) & 1:
                chk ^= gen
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def bech32_encode(hrp: str, data: Sequence[int], encoding: Encoding) -> str:
    """Encode 5-bit ``data`` under ``hrp`` with a bech32 or bech32m checksum."""
    if any(not 0 <= d < 32 for d in data):
        raise ValueError("bech32 data values must be 5-bit (0..31)")
    values = _hrp_expand(hrp) + list(data)
    polymod = _polymod([*values, 0, 0, 0, 0, 0, 0]) ^ encoding.value
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(CHARSET[d] for d in [*data, *checksum])


def _bech32_decode(bech: str) -> tuple[str, list[int], Encoding]:
    if any(ord(c) < 33 or ord(c) > 126 for c in bech):
        raise _Bad("character out of range")
    if bech.lower() != bech and bech.upper() != bech:
        raise _Bad("mixed upper and lower case")
    if len(bech) > MAX_BECH32_LENGTH:
        raise _Bad(f"longer than {MAX_BECH32_LENGTH} characters")
    bech = bech.lower()
    pos = bech.rfind("1")
    if pos < 0:
        raise _Bad("no separator '1'")
    if pos == 0:
        raise _Bad("empty human-readable part")
    if pos + 7 > len(bech):
        raise _Bad("checksum too short")
    hrp = bech[:pos]
    data: list[int] = []
    for c in bech[pos + 1 :]:
        index = CHARSET.find(c)
        if index < 0:
            raise _Bad(f"invalid data character {c!r}")
        data.append(index)
    const = _polymod(_hrp_expand(hrp) + data)
    for encoding in Encoding:
        if const == encoding.value:
            return hrp, data[:-6], encoding
    raise _Bad("bad checksum")


def bech32_decode(bech: str) -> tuple[str, list[int], Encoding]:
    """Decode any bech32/bech32m string -> (lower-case hrp, 5-bit data, encoding)."""
    try:
        return _bech32_decode(bech)
    except _Bad as exc:
        raise AddressError(f"{bech!r} is not valid bech32/bech32m: {exc}") from None


def _convert_bits(data: Iterable[int], frombits: int, tobits: int, pad: bool) -> list[int]:
    acc = 0
    bits = 0
    out: list[int] = []
    maxv = (1 << tobits) - 1
    for value in data:
        acc = (acc << frombits) | value
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (tobits - bits)) & maxv)
    elif bits >= frombits:
        raise _Bad("more than 4 bits of padding")
    elif (acc << (tobits - bits)) & maxv:
        raise _Bad("non-zero padding")
    return out


def _check_program(version: int, program: bytes) -> None:
    if not 0 <= version <= 16:
        raise _Bad(f"invalid witness version {version}")
    if not 2 <= len(program) <= 40:
        raise _Bad(f"witness program is {len(program)} bytes, must be 2..40")
    if version == 0 and len(program) not in (20, 32):
        raise _Bad(f"witness v0 program is {len(program)} bytes, must be 20 or 32")


def _segwit_from_data(data: Sequence[int], encoding: Encoding) -> tuple[int, bytes]:
    if not data:
        raise _Bad("empty data section")
    version = data[0]
    program = bytes(_convert_bits(data[1:], 5, 8, False))
    _check_program(version, program)
    if version == 0 and encoding is not Encoding.BECH32:
        raise _Bad("witness v0 address must use bech32, not bech32m")
    if version != 0 and encoding is not Encoding.BECH32M:
        raise _Bad(f"witness v{version} address must use bech32m (BIP350), not bech32")
    return version, program


def decode_segwit(hrp: str, address: str) -> tuple[int, bytes]:
    """Decode a segwit address with the expected ``hrp`` -> (witness version, program)."""
    try:
        got, data, encoding = _bech32_decode(address)
        if got != hrp:
            raise _Bad(f"human-readable part is {got!r}, expected {hrp!r}")
        return _segwit_from_data(data, encoding)
    except _Bad as exc:
        raise AddressError(f"invalid segwit address {address!r}: {exc}") from None


def encode_segwit(hrp: str, version: int, program: bytes) -> str:
    """Encode a witness program as a segwit address (bech32 for v0, bech32m for v1+)."""
    try:
        _check_program(version, program)
    except _Bad as exc:
        raise AddressError(f"cannot encode segwit address: {exc}") from None
    encoding = Encoding.BECH32 if version == 0 else Encoding.BECH32M
    return bech32_encode(hrp, [version, *_convert_bits(program, 8, 5, True)], encoding)


def witness_script(version: int, program: bytes) -> bytes:
    """scriptPubKey of a witness program: OP_n <program>."""
    try:
        _check_program(version, program)
    except _Bad as exc:
        raise ValueError(f"invalid witness program: {exc}") from None
    opcode = 0x00 if version == 0 else 0x50 + version
    return bytes([opcode, len(program)]) + program


# --- base58check --------------------------------------------------------------------


def _base58_encode(raw: bytes) -> str:
    n = int.from_bytes(raw, "big")
    chars: list[str] = []
    while n:
        n, rem = divmod(n, 58)
        chars.append(_B58_ALPHABET[rem])
    zeros = len(raw) - len(raw.lstrip(b"\x00"))
    return "1" * zeros + "".join(reversed(chars))


def _base58_decode(s: str) -> bytes:
    n = 0
    for c in s:
        digit = _B58_INDEX.get(c)
        if digit is None:
            raise _Bad(f"invalid base58 character {c!r}")
        n = n * 58 + digit
    zeros = len(s) - len(s.lstrip("1"))
    return b"\x00" * zeros + n.to_bytes((n.bit_length() + 7) // 8, "big")


def _base58check_decode(s: str) -> bytes:
    raw = _base58_decode(s)
    if len(raw) < 4:
        raise _Bad("too short for a base58check checksum")
    payload, checksum = raw[:-4], raw[-4:]
    if sha256d(payload)[:4] != checksum:
        raise _Bad("bad base58check checksum")
    return payload


def base58check_encode(payload: bytes) -> str:
    """Base58 of ``payload`` followed by its 4-byte double-SHA-256 checksum."""
    return _base58_encode(payload + sha256d(payload)[:4])


def base58check_decode(s: str) -> bytes:
    """Decode base58check and verify its checksum -> payload (version byte included)."""
    try:
        return _base58check_decode(s)
    except _Bad as exc:
        raise AddressError(f"{s!r} is not valid base58check: {exc}") from None


# --- address -> scriptPubKey --------------------------------------------------------


def _names(networks: Iterable[Network]) -> str:
    names = [n.name for n in networks]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _wrong_network(address: str, owners: Iterable[Network], network: Network) -> AddressError:
    return AddressError(
        f"address {address} is for {_names(owners)}, but bitcoind runs {network.name}"
    )


def _segwit_script(address: str, network: Network) -> bytes:
    try:
        hrp, data, encoding = _bech32_decode(address)
    except _Bad as exc:
        raise AddressError(f"invalid address {address!r}: {exc}") from None
    if hrp != network.bech32_hrp:
        raise _wrong_network(address, (n for n in NETWORKS if n.bech32_hrp == hrp), network)
    try:
        version, program = _segwit_from_data(data, encoding)
    except _Bad as exc:
        raise AddressError(f"invalid address {address!r}: {exc}") from None
    return witness_script(version, program)


def _base58_script(address: str, payload: bytes, network: Network) -> bytes:
    if len(payload) != 21:
        raise AddressError(
            f"invalid address {address!r}: base58check payload is {len(payload)} bytes, "
            "expected 21 (version byte + 20-byte hash)"
        )
    version, digest = payload[0], payload[1:]
    if version == network.p2pkh_prefix:
        return b"\x76\xa9\x14" + digest + b"\x88\xac"
    if version == network.p2sh_prefix:
        return b"\xa9\x14" + digest + b"\x87"
    owners = [n for n in NETWORKS if version in (n.p2pkh_prefix, n.p2sh_prefix)]
    if owners:
        raise _wrong_network(address, owners, network)
    raise AddressError(f"invalid address {address!r}: unknown base58 version byte 0x{version:02x}")


def address_to_script(address: str, network: Network) -> bytes:
    """scriptPubKey paying ``address`` on ``network``; AddressError says what is wrong."""
    address = address.strip()
    if not address:
        raise AddressError("empty address")
    separator = address.rfind("1")
    prefix = address[:separator].lower() if separator > 0 else ""
    if prefix in {n.bech32_hrp for n in NETWORKS}:
        return _segwit_script(address, network)
    try:
        payload = _base58check_decode(address)
    except _Bad as b58_error:
        try:
            hrp, _, _ = _bech32_decode(address)
        except _Bad:
            raise AddressError(
                f"invalid address {address!r}: not bech32 and not base58check ({b58_error})"
            ) from None
        raise AddressError(
            f"invalid address {address!r}: unknown human-readable part {hrp!r} "
            f"({network.name} uses {network.bech32_hrp!r})"
        ) from None
    return _base58_script(address, payload, network)


def canonical_address(address: str, network: Network) -> tuple[str, bytes]:
    """``address`` in its one canonical spelling, with the script it pays: bech32/bech32m in
    lower case (BIP173: an all-upper-case address is the same address; mixed case is refused),
    base58check as it is (its case is part of the encoding). Two spellings of one address
    give the same canonical string, so bans and balances keyed on it cannot be split."""
    script = address_to_script(address, network)
    address = address.strip()
    separator = address.rfind("1")
    if separator > 0 and address[:separator].lower() in {n.bech32_hrp for n in NETWORKS}:
        return address.lower(), script
    return address, script
