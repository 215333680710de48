"""Share validation. Pure: it reads jobs, never changes them; the clock is passed in.

The order of checks follows the protocol notes: subscribed (25), authorized (24), job known and
not stale (21), field formats (20), version bits inside the negotiated mask (20), ntime bounds
(20), duplicate (22), then proof of work against the difficulty that was in force when the job
was sent to this connection (23). A share that also meets the block target is a block candidate.

This is the per-share hot path. A rejection is a :class:`Reject` member (its wire message is a
constant, :data:`REJECT_MESSAGES`): no object, no f-string, no Fraction per rejected share.
Share targets come from a bounded cache of exact ``difficulty_to_target`` values.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from pool.bitcoin import DIFF1_TARGET, difficulty_to_target
from pool.jobs import Job

HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_TARGET_CACHE_SIZE = 4096
_targets: dict[float, int] = {}


def share_target(difficulty: float) -> int:
    """``difficulty_to_target(difficulty)`` (exact), memoised: a connection's difficulty
    changes rarely, so the Fraction arithmetic runs once per distinct difficulty."""
    target = _targets.get(difficulty)
    if target is None:
        target = difficulty_to_target(difficulty)
        if len(_targets) >= _TARGET_CACHE_SIZE:
            _targets.clear()
        _targets[difficulty] = target
    return target


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

    @property
    def message(self) -> str:
        """The default message the miner reads (cgminer, cpuminer and firmwares show it)."""
        return REJECT_MESSAGES[self]


REJECT_MESSAGES: dict[Reject, str] = {
    Reject.NOT_SUBSCRIBED: "not subscribed: send mining.subscribe",
    Reject.UNAUTHORIZED: "unauthorized worker: send mining.authorize first",
    Reject.STALE: "job not found (stale)",
    Reject.DUPLICATE: "duplicate share",
    Reject.LOW_DIFFICULTY: "low difficulty share: above the target of the job's difficulty",
    Reject.MALFORMED: "malformed share",
    Reject.BAD_EXTRANONCE2: "extranonce2 has the wrong size or is not hex",
    Reject.BAD_NTIME: "ntime out of range",
    Reject.BAD_VERSION: "invalid version bits: outside the negotiated mask",
}

# A rejection with the constant message saying what exactly was wrong: one tuple per cause,
# made once, so judging a bad share allocates nothing.
Rejection = tuple[Reject, str]
_MALFORMED_NTIME: Rejection = (Reject.MALFORMED, "ntime must be 8 hex digits")
_MALFORMED_NONCE: Rejection = (Reject.MALFORMED, "nonce must be 8 hex digits")
_MALFORMED_VERSION: Rejection = (Reject.MALFORMED, "version bits must be 8 hex digits")
_BAD_VERSION: Rejection = (Reject.BAD_VERSION, REJECT_MESSAGES[Reject.BAD_VERSION])
_NTIME_EARLY: Rejection = (Reject.BAD_NTIME, "ntime out of range: before the template's mintime")
_NTIME_AHEAD: Rejection = (Reject.BAD_NTIME, "ntime out of range: too far ahead of the pool clock")
_DUPLICATE: Rejection = (Reject.DUPLICATE, REJECT_MESSAGES[Reject.DUPLICATE])
_LOW: Rejection = (Reject.LOW_DIFFICULTY, REJECT_MESSAGES[Reject.LOW_DIFFICULTY])
_bad_en2: dict[int, Rejection] = {}


def _bad_extranonce2(size: int) -> Rejection:
    rejection = _bad_en2.get(size)
    if rejection is None:
        message = f"extranonce2 must be {size} bytes of hex ({2 * size} hex digits)"
        rejection = _bad_en2[size] = (Reject.BAD_EXTRANONCE2, message)
    return rejection


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


@dataclass(slots=True, eq=False)
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


def judge_share(
    job: Job,
    worker: str,
    job_id: str,
    extranonce2: str,
    ntime_hex: str,
    nonce_hex: str,
    version_bits: str | None,
    *,
    extranonce1: bytes,
    extranonce2_size: int,
    version_mask: int,
    duplicates: DuplicateFilter,
    difficulty: float,
    now: float,
    max_ntime_ahead: int,
) -> ShareResult | Rejection:
    """The share checks after the connection's own (subscribed, authorized, job live):
    formats, version mask, ntime, duplicate, proof of work. Returns the accepted share (now in
    ``duplicates``) or why it was rejected, as (reason, constant message)."""
    if len(extranonce2) != 2 * extranonce2_size or not HEX_DIGITS.issuperset(extranonce2):
        return _bad_extranonce2(extranonce2_size)
    ntime = _hex_u32(ntime_hex)
    if ntime is None:
        return _MALFORMED_NTIME
    nonce = _hex_u32(nonce_hex)
    if nonce is None:
        return _MALFORMED_NONCE
    version = job.version
    if version_bits is not None:
        bits = _hex_u32(version_bits)
        if bits is None:
            return _MALFORMED_VERSION
        if bits & ~version_mask:
            return _BAD_VERSION
        version = (version & ~version_mask) | (bits & version_mask)
    if ntime < job.template.mintime:
        return _NTIME_EARLY
    if ntime > now + max_ntime_ahead:
        return _NTIME_AHEAD
    extranonce = extranonce1 + bytes.fromhex(extranonce2)
    key = (extranonce, ntime, nonce, version)
    if duplicates.seen(job.job_id, key):
        return _DUPLICATE
    header_hash = job.header_hash(extranonce, ntime, nonce, version)
    value = int.from_bytes(header_hash, "little")
    if value > share_target(difficulty):
        return _LOW
    duplicates.add(job.job_id, key)
    return ShareResult(
        True,
        None,
        "accepted",
        worker,
        job,
        difficulty,
        DIFF1_TARGET / value if value else float("inf"),
        value <= job.block_target,
        extranonce,
        ntime,
        nonce,
        version,
        header_hash[::-1].hex(),
        job_id,
    )


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
    that job was sent to this connection. An accepted share is recorded in ``duplicates``.

    The whole check as one call (the connection core runs the connection checks itself and
    then :func:`judge_share`)."""
    worker = submit.worker
    if not conn.subscribed:
        return _reject(worker, Reject.NOT_SUBSCRIBED, Reject.NOT_SUBSCRIBED.message)
    if worker not in conn.authorized:
        return _reject(worker, Reject.UNAUTHORIZED, Reject.UNAUTHORIZED.message)
    if job is None:
        return _reject(worker, Reject.STALE, Reject.STALE.message)
    verdict = judge_share(
        job,
        worker,
        submit.job_id,
        submit.extranonce2,
        submit.ntime,
        submit.nonce,
        submit.version_bits,
        extranonce1=conn.extranonce1,
        extranonce2_size=conn.extranonce2_size,
        version_mask=conn.version_mask,
        duplicates=duplicates,
        difficulty=difficulty,
        now=now,
        max_ntime_ahead=max_ntime_ahead,
    )
    if isinstance(verdict, tuple):
        return _reject(worker, verdict[0], verdict[1], job)
    return verdict
