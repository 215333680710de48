"""Block templates -> Stratum jobs, and the bounded table of live jobs. Pure: no I/O, no clock.

A job is everything a miner needs to search and everything the pool needs to judge a share and
rebuild the block: the coinbase split around the extranonce (coinb1 | extranonce1 | extranonce2 |
coinb2), the merkle branch, version, nbits, ntime and the template's transactions.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import struct
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pool.bitcoin import (
    CoinbaseTemplate,
    TxOut,
    block_hash,
    build_coinbase,
    display_to_hash,
    hash_to_display,
    merkle_branch,
    root_from_branch,
    serialize_block,
    serialize_header,
)

_sha256 = hashlib.sha256
_pack_header = struct.Struct("<I32s32sIII").pack


class TemplateError(ValueError):
    """A getblocktemplate answer the pool cannot use; the message names the field."""


@dataclass(frozen=True, slots=True)
class TemplateTx:
    data: bytes
    txid: bytes  # internal byte order
    fee: int
    weight: int


@dataclass(frozen=True, slots=True)
class Template:
    """The parts of a ``getblocktemplate`` answer the pool uses (hashes in internal byte order)."""

    height: int
    version: int
    prev_hash: bytes
    bits: int
    target: int
    curtime: int
    mintime: int
    coinbase_value: int
    transactions: tuple[TemplateTx, ...]
    witness_commitment: bytes | None
    longpollid: str | None = None

    @property
    def prev_hash_hex(self) -> str:
        return hash_to_display(self.prev_hash)

    @property
    def fees(self) -> int:
        return sum(tx.fee for tx in self.transactions)

    @classmethod
    def from_rpc(cls, gbt: Mapping[str, Any]) -> Template:
        def field_(name: str, kind: type) -> Any:
            if name not in gbt:
                raise TemplateError(f"getblocktemplate answer has no '{name}'")
            value = gbt[name]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise TemplateError(f"getblocktemplate field '{name}' is not {kind.__name__}")
            return value

        try:
            txs = tuple(
                TemplateTx(
                    data=bytes.fromhex(tx["data"]),
                    txid=display_to_hash(tx["txid"]),
                    fee=int(tx.get("fee", 0)),
                    weight=int(tx.get("weight", 0)),
                )
                for tx in field_("transactions", list)
            )
            commitment = gbt.get("default_witness_commitment")
            return cls(
                height=field_("height", int),
                version=field_("version", int),
                prev_hash=display_to_hash(field_("previousblockhash", str)),
                bits=int(field_("bits", str), 16),
                target=int(field_("target", str), 16),
                curtime=field_("curtime", int),
                mintime=int(gbt.get("mintime", gbt["curtime"])),
                coinbase_value=field_("coinbasevalue", int),
                transactions=txs,
                witness_commitment=bytes.fromhex(commitment) if commitment else None,
                longpollid=gbt.get("longpollid"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, TemplateError):
                raise
            raise TemplateError(f"malformed getblocktemplate answer: {exc!r}") from exc


def prevhash_to_stratum(prev_hash: bytes) -> str:
    """Stratum's prevhash: the internal (little-endian) bytes with each 4-byte word byte-swapped.

    Equivalently: the RPC display hex with the ORDER of its eight 4-byte words reversed.
    """
    if len(prev_hash) != 32:
        raise ValueError("prev hash must be 32 bytes")
    return b"".join(prev_hash[i : i + 4][::-1] for i in range(0, 32, 4)).hex()


@dataclass(frozen=True, slots=True)
class JobConfig:
    payout_script: bytes
    extranonce1_size: int = 4
    extranonce2_size: int = 4
    pool_tag: bytes = b"/stratum-pool/"

    @property
    def extranonce_size(self) -> int:
        return self.extranonce1_size + self.extranonce2_size


@dataclass(frozen=True, slots=True)
class Job:
    job_id: str
    template: Template
    coinbase: CoinbaseTemplate
    merkle_branch: tuple[bytes, ...]
    ntime: int
    clean: bool
    created_at: float
    # The target a share must meet to be submitted as a block: the template's own target, or a
    # harder simulated one (chain simulation on regtest). Never easier than the template's.
    block_target: int = field(default=0)
    # A SOLO job (same id, template and branch, a coinbase paying one miner): the pool's job
    # it was made from (the live-job table holds that one). None for the pool's own jobs.
    base: Job | None = field(default=None, repr=False, compare=False)
    # Per-job constants for the share hot path, computed once (see ``__post_init__``).
    coinb1: bytes = field(init=False, repr=False, compare=False)
    coinb2: bytes = field(init=False, repr=False, compare=False)
    prev_hash: bytes = field(init=False, repr=False, compare=False)
    bits_bytes: bytes = field(init=False, repr=False, compare=False)
    branch_bytes: tuple[bytes, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "coinb1", self.coinbase.coinb1)
        set_(self, "coinb2", self.coinbase.coinb2)
        set_(self, "prev_hash", self.template.prev_hash)
        set_(self, "bits_bytes", struct.pack("<I", self.template.bits))
        set_(self, "branch_bytes", tuple(self.merkle_branch))

    @property
    def height(self) -> int:
        return self.template.height

    @property
    def version(self) -> int:
        return self.template.version

    @property
    def bits(self) -> int:
        return self.template.bits

    def notify_params(self) -> list[Any]:
        """The params of ``mining.notify`` for this job."""
        return [
            self.job_id,
            prevhash_to_stratum(self.template.prev_hash),
            self.coinbase.coinb1.hex(),
            self.coinbase.coinb2.hex(),
            [h.hex() for h in self.merkle_branch],
            f"{self.template.version:08x}",
            f"{self.template.bits:08x}",
            f"{self.ntime:08x}",
            self.clean,
        ]

    def merkle_root(self, extranonce: bytes) -> bytes:
        return root_from_branch(self.coinbase.txid(extranonce), self.merkle_branch)

    def header_hash(self, extranonce: bytes, ntime: int, nonce: int, version: int) -> bytes:
        """sha256d of the header (internal byte order): the per-share hot path, from the
        precomputed coinbase halves, branch and header fields. Equals
        ``block_hash(self.header(...))`` (tested)."""
        if len(extranonce) != self.coinbase.extranonce_size:
            raise ValueError(
                f"extranonce is {len(extranonce)} bytes, expected {self.coinbase.extranonce_size}"
            )
        sha = _sha256
        root = sha(sha(self.coinb1 + extranonce + self.coinb2).digest()).digest()
        for h in self.branch_bytes:
            root = sha(sha(root + h).digest()).digest()
        header = _pack_header(
            version & 0xFFFFFFFF, self.prev_hash, root, ntime, self.template.bits, nonce
        )
        return sha(sha(header).digest()).digest()

    def header(self, extranonce: bytes, ntime: int, nonce: int, version: int) -> bytes:
        return serialize_header(
            version=version,
            prev_hash=self.template.prev_hash,
            merkle_root=self.merkle_root(extranonce),
            ntime=ntime,
            bits=self.template.bits,
            nonce=nonce,
        )

    def block(self, extranonce: bytes, ntime: int, nonce: int, version: int) -> bytes:
        """The full block, coinbase in its witness serialization when a commitment is present."""
        return serialize_block(
            self.header(extranonce, ntime, nonce, version),
            self.coinbase.tx_with_witness(extranonce),
            [tx.data for tx in self.template.transactions],
        )

    def block_hash_hex(self, extranonce: bytes, ntime: int, nonce: int, version: int) -> str:
        return hash_to_display(block_hash(self.header(extranonce, ntime, nonce, version)))


def build_job(
    template: Template,
    config: JobConfig,
    *,
    job_id: str,
    now: float,
    clean: bool,
    block_target: int | None = None,
    outputs: Sequence[TxOut] | None = None,
) -> Job:
    """One job from one template. ``outputs`` default to the whole reward to the payout script."""
    coinbase = build_coinbase(
        height=template.height,
        outputs=list(outputs)
        if outputs
        else [TxOut(template.coinbase_value, config.payout_script)],
        extranonce_size=config.extranonce_size,
        pool_tag=config.pool_tag,
        witness_commitment=template.witness_commitment,
    )
    target = template.target if block_target is None else min(block_target, template.target)
    return Job(
        job_id=job_id,
        template=template,
        coinbase=coinbase,
        merkle_branch=tuple(merkle_branch([tx.txid for tx in template.transactions])),
        ntime=max(template.curtime, template.mintime),
        clean=clean,
        created_at=now,
        block_target=target,
    )


FEE_BPS_DENOMINATOR = 10_000


def solo_outputs(
    coinbase_value: int, miner_script: bytes, fee_script: bytes, fee_bps: int
) -> list[TxOut]:
    """A SOLO coinbase's outputs: the reward to the miner's script, less the pool fee as a
    second output to ``fee_script``. Integer satoshis: fee = floor(value * fee_bps / 10 000)
    (rounded down: the miner keeps the remainder); no fee output when that is 0."""
    if not 0 <= fee_bps <= FEE_BPS_DENOMINATOR:
        raise ValueError(f"solo fee must be 0..{FEE_BPS_DENOMINATOR} basis points, got {fee_bps}")
    fee = coinbase_value * fee_bps // FEE_BPS_DENOMINATOR
    if fee == 0:
        return [TxOut(coinbase_value, miner_script)]
    return [TxOut(coinbase_value - fee, miner_script), TxOut(fee, fee_script)]


def solo_job(base: Job, miner_script: bytes, fee_bps: int = 0) -> Job:
    """``base`` remade to pay ``miner_script`` (the pool fee, if any, goes to the script the
    pool's own job pays: its first output). Same id, template, merkle branch, ntime and
    targets; only coinb2 differs."""
    if base.base is not None:
        raise ValueError("solo_job needs the pool's own job, not a SOLO job")
    fee_script = base.coinbase.outputs[0].script if base.coinbase.outputs else miner_script
    outputs = solo_outputs(base.template.coinbase_value, miner_script, fee_script, fee_bps)
    return Job(
        job_id=base.job_id,
        template=base.template,
        coinbase=base.coinbase.with_outputs(outputs),
        merkle_branch=base.merkle_branch,
        ntime=base.ntime,
        clean=base.clean,
        created_at=base.created_at,
        block_target=base.block_target,
        base=base,
    )


class JobTable:
    """The live jobs, newest last, bounded. A clean job (new previous block) retires every older
    job: shares for them are stale. Job ids are short hex strings, unique within a process."""

    def __init__(self, max_jobs: int = 16, *, seed: int | None = None) -> None:
        if max_jobs < 1:
            raise ValueError("max_jobs must be at least 1")
        self.max_jobs = max_jobs
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        start = (
            random.Random(seed).randrange(1 << 16)
            if seed is not None
            else random.randrange(1 << 16)
        )
        self._ids: Iterator[int] = itertools.count(start)

    def next_id(self) -> str:
        return f"{next(self._ids) & 0xFFFFFFFF:x}"

    def add(self, job: Job) -> list[Job]:
        """Add ``job``; returns the jobs it retired (all older ones if clean, else the overflow)."""
        retired: list[Job] = []
        if job.clean:
            retired = list(self._jobs.values())
            self._jobs.clear()
        self._jobs[job.job_id] = job
        while len(self._jobs) > self.max_jobs:
            retired.append(self._jobs.popitem(last=False)[1])
        return retired

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    @property
    def current(self) -> Job | None:
        return next(reversed(self._jobs.values())) if self._jobs else None

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[Job]:
        return iter(list(self._jobs.values()))
