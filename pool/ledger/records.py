"""Journal records of accepted shares and the store's records made from them (pure: no I/O).

``record_for_share`` builds the journal record of one accepted share (everything needed to
recompute its credit); ``share_record_from`` turns a journal record into the store's
``ShareRecord``; ``block_record`` is the store's record of a block candidate without its
share's credit.

Record versions: 1 (the first); 2 adds, to the ``block`` entry of a share found on a pplns
port, ``window``: the PPLNS window in difficulty-units as an exact fraction ``"num/den"``
(``factor x`` the job's network difficulty), so a replay splits the block exactly as it was
split first even if the configuration changed meanwhile. Every version carries ``scheme``
(pps, fpps, pplns, solo); a record without it reads as the ledger's scheme. Shares of pplns
and solo ports carry a credit and a fee of 0 (``gross`` too).
"""

from __future__ import annotations

import functools
from fractions import Fraction
from typing import Any

from pool.bitcoin import Network
from pool.bitcoin.target import DIFF1_TARGET, target_to_difficulty
from pool.ledger.aggregates import ShareRecord
from pool.ledger.pps import Scheme, block_value, expected_blocks, share_value
from pool.ledger.schemes import ZERO, get_scheme
from pool.node.submit import BlockSubmission, SubmitStatus
from pool.server.auth import Credentials
from pool.shares import ShareResult

RECORD_VERSION = 2
# A block submitted but neither accepted nor refused (bitcoind unreachable) is still tracked:
# the maturity check settles it from the chain.
TRACKED_SUBMISSIONS = (SubmitStatus.ACCEPTED, SubmitStatus.INCONCLUSIVE, SubmitStatus.FAILED)
SUBMITTED = "submitted"  # a journal record's block status: journaled before its submission


# Per-share conversions memoised (``pps`` memoises the credit maths itself): a connection's
# difficulty and a job's target change rarely. Bounded; cleared when full.
_MEMO_SIZE = 4096
_expected: dict[tuple[float, bytes], tuple[float, float]] = {}
_target_bytes: dict[int, bytes] = {}


def _target_to_bytes(target: int) -> bytes:
    raw = _target_bytes.get(target)
    if raw is None:
        raw = target.to_bytes(32, "big")
        if len(_target_bytes) >= _MEMO_SIZE:
            _target_bytes.clear()
        _target_bytes[target] = raw
    return raw


def _expected_and_difficulty(difficulty: float, target_raw: bytes) -> tuple[float, float]:
    """(expected blocks of the share, network difficulty of the target)."""
    key = (difficulty, target_raw)
    found = _expected.get(key)
    if found is None:
        target = int.from_bytes(target_raw, "big")
        found = (expected_blocks(difficulty, target), target_to_difficulty(target))
        if len(_expected) >= _MEMO_SIZE:
            _expected.clear()
        _expected[key] = found
    return found


_RECORD_BASES = 1024
# (id(job), target, difficulty, chain, scheme, fee) -> (the job, its records' common part); the
# job is kept and compared so a recycled id() can never match another job.
_record_bases: dict[tuple[int, int, float, str, Scheme, int], tuple[Any, dict[str, Any]]] = {}


def record_for_share(
    result: ShareResult,
    creds: Credentials,
    now: float,
    submission: BlockSubmission | None,
    *,
    network: Network,
    scheme: Scheme,
    fee_bps: int,
    pplns_window_factor: float = 0.0,
) -> dict[str, Any]:
    """The journal record of one accepted share: everything needed to recompute its credit.

    A block candidate journaled while its submission is under way (``submission`` None: the
    server submits it at once, in the background) carries a ``block`` entry with status
    ``submitted``; with a submission (the older order: submitted
    first), only a tracked outcome (accepted, inconclusive, failed) carries one."""
    job = result.job
    assert job is not None
    template = job.template
    # The part every share of this job at this difficulty has in common, computed once.
    key = (id(job), job.block_target, result.difficulty, network.name, scheme, fee_bps)
    cached = _record_bases.get(key)
    if cached is None or cached[0] is not job:
        subsidy = network.block_subsidy(template.height)
        value_sat = block_value(scheme, subsidy, template.coinbase_value)
        value = (
            share_value(result.difficulty, job.block_target, value_sat, fee_bps)
            if get_scheme(scheme).credits_shares
            else ZERO  # pplns: paid when a block matures; solo: the coinbase pays the miner
        )
        base = {
            "v": RECORD_VERSION,
            "difficulty": result.difficulty,
            "target": _target_to_bytes(job.block_target),
            "height": template.height,
            "scheme": scheme.value,
            "block_value_sat": value_sat,
            "fee_bps": fee_bps,
            "gross": value.gross,
            "credit": value.credit,
            "fee": value.fee,
        }
        if len(_record_bases) >= _RECORD_BASES:
            _record_bases.clear()
        cached = _record_bases[key] = (job, base)
    record: dict[str, Any] = {
        **cached[1],
        "time": now,
        "worker": creds.name,
        "address": creds.address,
        "job": result.job_id,  # as submitted (with the extranonce, ntime, nonce: the share)
        "extranonce": result.extranonce.hex(),
        "ntime": result.ntime,
        "nonce": result.nonce,
        "version": result.version,
        "hash": result.hash_hex,
        "share_difficulty": result.share_difficulty,  # achieved (best share); absent: 0
    }
    if submission is None:
        if result.block_candidate:
            record["block"] = {
                "hash": result.hash_hex,
                "height": template.height,
                "reward_sat": template.coinbase_value,
                "status": SUBMITTED,
            }
    elif submission.status in TRACKED_SUBMISSIONS:
        record["block"] = {
            "hash": submission.block_hash,
            "height": submission.height,
            "reward_sat": template.coinbase_value,
            "status": submission.status.value,
        }
    if scheme is Scheme.PPLNS and "block" in record:
        record["block"]["window"] = str(pplns_window(pplns_window_factor, job.block_target))
    return record


def pplns_window(factor: float, network_target: int) -> Fraction:
    """The PPLNS window in difficulty-units: ``factor x`` the network difficulty of the
    target, exact (``factor`` a float is an exact binary fraction)."""
    if not factor > 0:
        raise ValueError(f"the PPLNS window factor must be positive, got {factor!r}")
    return Fraction(factor) * DIFF1_TARGET / network_target


@functools.lru_cache(maxsize=256)
def _window_of(factor: float, target_raw: bytes) -> Fraction:
    return pplns_window(factor, int.from_bytes(target_raw, "big"))


def share_record_from(
    record: dict[str, Any], default_scheme: str = "pps", pplns_window_factor: float = 0.0
) -> ShareRecord:
    """The store's record of a journal record (``default_scheme``: for a record without a
    scheme; ``pplns_window_factor``: the window of a pplns share that is not a block, used
    only to bound the PPLNS share log)."""
    difficulty = float(record["difficulty"])
    expected, network_difficulty = _expected_and_difficulty(difficulty, record["target"])
    block = record.get("block")
    scheme = str(record.get("scheme") or default_scheme)
    window: Fraction | None = None
    if scheme == Scheme.PPLNS:
        if block is not None and block.get("window"):
            window = Fraction(str(block["window"]))
        elif pplns_window_factor > 0:
            window = _window_of(pplns_window_factor, record["target"])
    return ShareRecord(
        time=float(record["time"]),
        worker=str(record["worker"]),
        address=str(record["address"]),
        difficulty=difficulty,
        expected_blocks=expected,
        credit_units=int(record["credit"]),
        fee_units=int(record["fee"]),
        block_hash=str(block["hash"]) if block else None,
        block_height=int(block["height"]) if block else None,
        block_reward_sat=int(block["reward_sat"]) if block else None,
        network_difficulty=network_difficulty,
        share_difficulty=float(record.get("share_difficulty", 0.0)),
        scheme=scheme,
        fee_bps=int(record.get("fee_bps", 0)),
        pplns_window=window,
    )


def block_record(
    result: ShareResult,
    creds: Credentials | None,
    now: float,
    *,
    scheme: str = "",
    fee_bps: int = 0,
    pplns_window_factor: float = 0.0,
) -> ShareRecord:
    """The store's record of a block candidate, without the share's credit (for a block
    whose share the store does not have); ``scheme`` that of the port that found it."""
    job = result.job
    assert job is not None
    return ShareRecord(
        time=now,
        worker=creds.name if creds is not None else "",
        address=creds.address if creds is not None else "",
        difficulty=result.difficulty,
        expected_blocks=0.0,
        credit_units=0,
        fee_units=0,
        block_hash=result.hash_hex,
        block_height=job.template.height,
        block_reward_sat=job.template.coinbase_value,
        network_difficulty=target_to_difficulty(job.block_target),
        scheme=scheme,
        fee_bps=fee_bps,
        pplns_window=(
            pplns_window(pplns_window_factor, job.block_target)
            if scheme == Scheme.PPLNS and pplns_window_factor > 0
            else None
        ),
    )
