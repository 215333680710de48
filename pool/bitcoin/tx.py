"""Coinbase transaction construction, split for Stratum into coinb1 | extranonce | coinb2."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .hashing import sha256d
from .serialize import bip34_height_script, compact_size

__all__ = ["MAX_MONEY", "CoinbaseTemplate", "TxOut", "build_coinbase"]

MAX_MONEY = 21_000_000 * 100_000_000
MIN_SCRIPT_SIG = 2
MAX_SCRIPT_SIG = 100
_NULL_PREVOUT = bytes(32) + b"\xff\xff\xff\xff"
_SEQUENCE_FINAL = b"\xff\xff\xff\xff"
_LOCKTIME_ZERO = bytes(4)
# Coinbase witness: one stack item, the 32-byte witness reserved value (all zero).
_COINBASE_WITNESS = b"\x01\x20" + bytes(32)


@dataclass(frozen=True)
class TxOut:
    """A transaction output: ``value`` satoshis to ``script`` (a scriptPubKey)."""

    value: int
    script: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.value <= MAX_MONEY:
            raise ValueError(f"output value {self.value} is outside 0..{MAX_MONEY} satoshis")

    def serialize(self) -> bytes:
        return self.value.to_bytes(8, "little") + compact_size(len(self.script)) + self.script


@dataclass(frozen=True)
class CoinbaseTemplate:
    """A coinbase split around the miner's extranonce (Stratum coinb1 / coinb2).

    ``coinb1 + extranonce + coinb2`` is the NON-witness serialization (txid form).
    """

    coinb1: bytes
    coinb2: bytes
    extranonce_size: int
    has_witness_commitment: bool
    # What coinb2 was made of (so the same coinbase can be remade paying other outputs):
    # the scriptSig after the extranonce (aux | pool tag), the outputs before the witness
    # commitment, and the commitment's script.
    script_tail: bytes = b""
    outputs: tuple[TxOut, ...] = ()
    witness_commitment: bytes | None = None

    def tx(self, extranonce: bytes) -> bytes:
        """Non-witness serialization with ``extranonce`` filled in."""
        if len(extranonce) != self.extranonce_size:
            raise ValueError(
                f"extranonce is {len(extranonce)} bytes, expected {self.extranonce_size}"
            )
        return self.coinb1 + extranonce + self.coinb2

    def txid(self, extranonce: bytes) -> bytes:
        """Coinbase txid, internal byte order."""
        return sha256d(self.tx(extranonce))

    def tx_with_witness(self, extranonce: bytes) -> bytes:
        """Serialization for the submitted block.

        With a witness commitment: segwit form (marker/flag 00 01 and the 32-byte zero
        witness reserved value). Without one: the plain non-witness form.
        """
        raw = self.tx(extranonce)
        if not self.has_witness_commitment:
            return raw
        return raw[:4] + b"\x00\x01" + raw[4:-4] + _COINBASE_WITNESS + raw[-4:]

    def with_outputs(self, outputs: Sequence[TxOut]) -> CoinbaseTemplate:
        """The same coinbase (height, extranonce place, scriptSig tail, witness commitment
        kept as the last output) paying ``outputs`` instead: coinb1 is unchanged (it holds
        nothing that depends on the outputs), coinb2 is made again."""
        checked = _check_outputs(outputs)
        return CoinbaseTemplate(
            coinb1=self.coinb1,
            coinb2=_coinb2(self.script_tail, checked, self.witness_commitment),
            extranonce_size=self.extranonce_size,
            has_witness_commitment=self.has_witness_commitment,
            script_tail=self.script_tail,
            outputs=checked,
            witness_commitment=self.witness_commitment,
        )


def _check_outputs(outputs: Sequence[TxOut]) -> tuple[TxOut, ...]:
    if not outputs:
        raise ValueError("a coinbase needs at least one output")
    for out in outputs:
        if out.value < 0:  # TxOut validates too; kept for explicitness
            raise ValueError(f"negative output value: {out.value}")
    total = sum(out.value for out in outputs)
    if total > MAX_MONEY:
        raise ValueError(f"outputs total {total} satoshis, more than MAX_MONEY")
    return tuple(outputs)


def _coinb2(
    script_tail: bytes, outputs: Sequence[TxOut], witness_commitment: bytes | None
) -> bytes:
    """scriptSig tail | sequence | outputs (+ the witness commitment last) | locktime."""
    all_outputs = list(outputs)
    if witness_commitment is not None:
        all_outputs.append(TxOut(0, witness_commitment))
    return (
        script_tail
        + _SEQUENCE_FINAL
        + compact_size(len(all_outputs))
        + b"".join(out.serialize() for out in all_outputs)
        + _LOCKTIME_ZERO
    )


def build_coinbase(
    *,
    height: int,
    outputs: Sequence[TxOut],
    extranonce_size: int,
    pool_tag: bytes = b"",
    witness_commitment: bytes | None = None,
    version: int = 2,
    aux: bytes = b"",
) -> CoinbaseTemplate:
    """Build the coinbase for block ``height``.

    scriptSig = BIP34 height | extranonce (``extranonce_size`` bytes, end of coinb1) |
    ``aux`` | ``pool_tag``. Outputs: ``outputs`` then, if given, the witness commitment
    (value 0, script ``witness_commitment``). Sequence ffffffff, locktime 0.
    """
    if height < 0:
        raise ValueError(f"negative block height: {height}")
    if extranonce_size < 0:
        raise ValueError(f"negative extranonce size: {extranonce_size}")
    if not 0 <= version <= 0xFFFF_FFFF:
        raise ValueError(f"transaction version must be a uint32, got {version}")
    checked = _check_outputs(outputs)

    height_script = bip34_height_script(height)
    script_sig_len = len(height_script) + extranonce_size + len(aux) + len(pool_tag)
    if not MIN_SCRIPT_SIG <= script_sig_len <= MAX_SCRIPT_SIG:
        raise ValueError(
            f"coinbase scriptSig would be {script_sig_len} bytes (height "
            f"{len(height_script)} + extranonce {extranonce_size} + aux {len(aux)} + "
            f"pool tag {len(pool_tag)}); it must be {MIN_SCRIPT_SIG}..{MAX_SCRIPT_SIG}"
        )

    coinb1 = (
        version.to_bytes(4, "little")
        + compact_size(1)
        + _NULL_PREVOUT
        + compact_size(script_sig_len)
        + height_script
    )
    return CoinbaseTemplate(
        coinb1=coinb1,
        coinb2=_coinb2(aux + pool_tag, checked, witness_commitment),
        extranonce_size=extranonce_size,
        has_witness_commitment=witness_commitment is not None,
        script_tail=aux + pool_tag,
        outputs=checked,
        witness_commitment=witness_commitment,
    )
