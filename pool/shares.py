"""Share validation. Pure: it reads jobs, never changes them; the clock is passed in.

The order of checks follows the protocol notes: subscribed (25), authorized (24), job known and
not stale (21), field formats (20), version bits inside the negotiated mask (20), ntime bounds
(20), duplicate (22), then proof of work against the difficulty that was in force when the job
was sent to this connection (23). A share that also meets the block target is a block candidate.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from pool.bitcoin import DIFF1_TARGET, block_hash, difficulty_to_target, hash_to_int
from pool.jobs import Job

HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


class Reject(enum.Enum):
    """Why a share was rejected: (Stratum error code, short reason used in metrics)."""

    NOT_SUBSCRIBED = (25, "not_subscribed")
    UNAUTHORIZED = (24, "unauthorized")
    STALE = (21, "stale")
    DUPLICATE = (22, "duplicate")
    LOW_DIFFICULTY = (23, "low_difficulty")
    MALFORMED = (20, "malformed")
    BAD_EXTRANONCE2 = (20, "bad_extranonce2")
    BAD_NTIME = (20, "bad_ntime")
    BAD_VERSION = (20, "bad_version")

    @property
    def code(self) -> int:
        return self.value[0]

    @property
    def key(self) -> str:
        return self.value[1]


@dataclass(frozen=True, slots=True)
class ConnectionView:
    """What validation needs to know about the connection the share came in on."""

    subscribed: bool
    authorized: frozenset[str]
    extranonce1: bytes
    extranonce2_size: int
    version_mask: int  # negotiated by mining.configure; 0 when version rolling is off


@dataclass(frozen=True, slots=True)
class ShareSubmit:
    worker: str
    job_id: str
    extranonce2: str
    ntime: str
    nonce: str
    version_bits: str | None = None


@dataclass(frozen=True, slots=True)
class ShareResult:
    accepted: bool
    reject: Reject | None
    message: str
    worker: str
    job: Job | None = None
    difficulty: float = 0.0  # the difficulty the share was judged at (its credited work)
    share_difficulty: float = 0.0  # the difficulty its hash actually reached
    block_candidate: bool = False
    extranonce: bytes = b""
    ntime: int = 0
    nonce: int = 0
    version: int = 0
    hash_hex: str = ""
    job_id: str = ""  # the id the miner submitted (a resent job has its own id on the wire)

    @property
    def code(self) -> int | None:
        return self.reject.code if self.reject else None


class DuplicateFilter:
    """Per-job sets of accepted share keys, dropped with their job."""

    def __init__(self) -> None:
        self._seen: dict[str, set[tuple[bytes, int, int, int]]] = {}

    def seen(self, job_id: str, key: tuple[bytes, int, int, int]) -> bool:
        return key in self._seen.get(job_id, ())

    def add(self, job_id: str, key: tuple[bytes, int, int, int]) -> None:
        self._seen.setdefault(job_id, set()).add(key)

    def forget(self, job_ids: Iterable[str]) -> None:
        for job_id in job_ids:
            self._seen.pop(job_id, None)

    def __len__(self) -> int:
        return sum(len(s) for s in self._seen.values())


def _reject(worker: str, why: Reject, message: str, job: Job | None = None) -> ShareResult:
    return ShareResult(False, why, message, worker, job)


def _hex_u32(value: str) -> int | None:
    if len(value) != 8 or not HEX_DIGITS.issuperset(value):
        return None
    return int(value, 16)


def validate_share(
    submit: ShareSubmit,
    conn: ConnectionView,
    job: Job | None,
    duplicates: DuplicateFilter,
    *,
    difficulty: float,
    now: float,
    max_ntime_ahead: int = 7200,
) -> ShareResult:
    """Judge one share. ``job`` is the live job the submitted job id stands for on this
    connection (None: unknown or retired, i.e. stale); ``difficulty`` is what was in force when
    that job was sent to this connection. An accepted share is recorded in ``duplicates``."""
    worker = submit.worker
    if not conn.subscribed:
        return _reject(worker, Reject.NOT_SUBSCRIBED, "not subscribed: send mining.subscribe")
    if worker not in conn.authorized:
        return _reject(worker, Reject.UNAUTHORIZED, f"unauthorized worker {worker!r}")
    if job is None:
        return _reject(worker, Reject.STALE, f"job not found (stale): {submit.job_id!r}")

    en2 = submit.extranonce2
    if len(en2) != 2 * conn.extranonce2_size or not HEX_DIGITS.issuperset(en2):
        return _reject(
            worker,
            Reject.BAD_EXTRANONCE2,
            f"extranonce2 must be {conn.extranonce2_size} bytes of hex "
            f"({2 * conn.extranonce2_size} hex digits), got {en2[:40]!r}",
            job,
        )
    ntime = _hex_u32(submit.ntime)
    if ntime is None:
        return _reject(
            worker, Reject.MALFORMED, f"ntime must be 8 hex digits, got {submit.ntime[:20]!r}", job
        )
    nonce = _hex_u32(submit.nonce)
    if nonce is None:
        return _reject(
            worker, Reject.MALFORMED, f"nonce must be 8 hex digits, got {submit.nonce[:20]!r}", job
        )

    version = job.version
    if submit.version_bits is not None:
        bits = _hex_u32(submit.version_bits)
        if bits is None:
            return _reject(
                worker,
                Reject.MALFORMED,
                f"version bits must be 8 hex digits, got {submit.version_bits[:20]!r}",
                job,
            )
        if bits & ~conn.version_mask:
            return _reject(
                worker,
                Reject.BAD_VERSION,
                f"invalid version bits {bits:08x}: outside the negotiated mask "
                f"{conn.version_mask:08x}",
                job,
            )
        version = (job.version & ~conn.version_mask) | (bits & conn.version_mask)

    if ntime < job.template.mintime:
        return _reject(
            worker,
            Reject.BAD_NTIME,
            f"ntime out of range: {ntime} is before the template's mintime {job.template.mintime}",
            job,
        )
    if ntime > now + max_ntime_ahead:
        return _reject(
            worker,
            Reject.BAD_NTIME,
            f"ntime out of range: {ntime} is more than {max_ntime_ahead} s ahead of the pool clock",
            job,
        )

    extranonce = conn.extranonce1 + bytes.fromhex(en2)
    key = (extranonce, ntime, nonce, version)
    if duplicates.seen(job.job_id, key):
        return _reject(worker, Reject.DUPLICATE, "duplicate share", job)

    header_hash = block_hash(job.header(extranonce, ntime, nonce, version))
    value = hash_to_int(header_hash)
    achieved = DIFF1_TARGET / value if value else float("inf")
    if value > difficulty_to_target(difficulty):
        return _reject(
            worker,
            Reject.LOW_DIFFICULTY,
            f"low difficulty share: {achieved:.6g} < {difficulty:.6g}",
            job,
        )
    duplicates.add(job.job_id, key)
    return ShareResult(
        accepted=True,
        reject=None,
        message="accepted",
        worker=worker,
        job=job,
        difficulty=difficulty,
        share_difficulty=achieved,
        block_candidate=value <= job.block_target,
        extranonce=extranonce,
        ntime=ntime,
        nonce=nonce,
        version=version,
        hash_hex=header_hash[::-1].hex(),
        job_id=submit.job_id,
    )
