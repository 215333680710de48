"""Journal records of accepted shares and the store's records made from them (pure: no I/O).

``record_for_share`` builds the journal record of one accepted share (everything needed to
recompute its credit); ``share_record_from`` turns a journal record into the store's
``ShareRecord``; ``block_record`` is the store's record of a block candidate without its
share's credit.
"""

from __future__ import annotations

from typing import Any

from pool.bitcoin import Network
from pool.bitcoin.target import target_to_difficulty
from pool.ledger.aggregates import ShareRecord
from pool.ledger.pps import Scheme, block_value, expected_blocks, share_value
from pool.node.submit import BlockSubmission, SubmitStatus
from pool.server.auth import Credentials
from pool.shares import ShareResult

RECORD_VERSION = 1
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
        value = share_value(result.difficulty, job.block_target, value_sat, fee_bps)
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
    return record


def share_record_from(record: dict[str, Any]) -> ShareRecord:
    difficulty = float(record["difficulty"])
    expected, network_difficulty = _expected_and_difficulty(difficulty, record["target"])
    block = record.get("block")
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
    )


def block_record(result: ShareResult, creds: Credentials | None, now: float) -> ShareRecord:
    """The store's record of a block candidate, without the share's credit (for a block
    whose share the store does not have)."""
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
    )
