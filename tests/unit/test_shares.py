"""Share validation on the pure core: every rejection with its code, acceptance, candidates."""

from __future__ import annotations

import struct

import pytest

from pool.bitcoin import DIFF1_TARGET, block_hash, difficulty_to_target, hash_to_int
from pool.jobs import Job, Template, build_job
from pool.shares import ConnectionView, DuplicateFilter, Reject, ShareSubmit, validate_share
from tests.unit.test_jobs import CONFIG, gbt

EN1 = bytes.fromhex("01020304")
NOW = 1_700_000_100.0
MASK = 0x1FFFE000


def make_job(block_difficulty: float | None = None) -> Job:
    target = difficulty_to_target(block_difficulty) if block_difficulty else None
    return build_job(
        Template.from_rpc(gbt()), CONFIG, job_id="a1", now=0.0, clean=True, block_target=target
    )


def view(**overrides: object) -> ConnectionView:
    base = dict(
        subscribed=True,
        authorized=frozenset({"w"}),
        extranonce1=EN1,
        extranonce2_size=4,
        version_mask=MASK,
    )
    base.update(overrides)
    return ConnectionView(**base)  # type: ignore[arg-type]


def find_nonce(
    job: Job,
    en2: bytes,
    difficulty: float,
    *,
    below: float | None = None,
    version: int | None = None,
) -> int:
    target = difficulty_to_target(difficulty)
    too_good = difficulty_to_target(below) if below else -1
    v = job.version if version is None else version
    for nonce in range(1 << 22):
        h = hash_to_int(block_hash(job.header(EN1 + en2, job.ntime, nonce, v)))
        if too_good < h <= target:
            return nonce
    raise AssertionError("no nonce")


def submit(job: Job, en2: bytes, n: int, **kw: str | None) -> ShareSubmit:
    fields = dict(
        worker="w",
        job_id=job.job_id,
        extranonce2=en2.hex(),
        ntime=f"{job.ntime:08x}",
        nonce=f"{n:08x}",
        version_bits=None,
    )
    fields.update(kw)
    return ShareSubmit(**fields)  # type: ignore[arg-type]


def judge(
    s: ShareSubmit,
    job: Job | None,
    conn: ConnectionView | None = None,
    dups: DuplicateFilter | None = None,
    difficulty: float = 1e-4,
):
    dups = dups if dups is not None else DuplicateFilter()
    return validate_share(s, conn or view(), job, dups, difficulty=difficulty, now=NOW)


def test_accepted_share_carries_what_block_assembly_needs() -> None:
    job = make_job(block_difficulty=1e9)
    en2 = bytes(4)
    nonce = find_nonce(job, en2, 1e-4)
    result = judge(submit(job, en2, nonce), job)
    assert result.accepted and result.code is None
    assert result.difficulty == 1e-4 and result.share_difficulty >= 1e-4
    assert not result.block_candidate
    assert result.extranonce == EN1 + en2 and result.nonce == nonce
    h = hash_to_int(block_hash(job.header(EN1 + en2, job.ntime, nonce, job.version)))
    assert result.share_difficulty == pytest.approx(DIFF1_TARGET / h)


def test_block_candidate_when_hash_meets_block_target() -> None:
    job = make_job()  # regtest target: about every second hash is a block
    nonce = find_nonce(job, bytes(4), 1e-4)
    assert judge(submit(job, bytes(4), nonce), job).block_candidate


@pytest.mark.parametrize(
    ("conn", "job_missing", "fields", "reject", "text"),
    [
        (view(subscribed=False), False, {}, Reject.NOT_SUBSCRIBED, "not subscribed"),
        (view(authorized=frozenset()), False, {}, Reject.UNAUTHORIZED, "unauthorized worker"),
        (view(), True, {}, Reject.STALE, "job not found"),
        (view(), False, {"extranonce2": "0000"}, Reject.BAD_EXTRANONCE2, "4 bytes"),
        (view(), False, {"extranonce2": "0000zz00"}, Reject.BAD_EXTRANONCE2, "hex"),
        (view(), False, {"ntime": "123"}, Reject.MALFORMED, "ntime must be 8 hex"),
        (view(), False, {"nonce": "xxxxxxxx"}, Reject.MALFORMED, "nonce must be 8 hex"),
        (view(), False, {"version_bits": "0000000g"}, Reject.MALFORMED, "version bits"),
        (view(), False, {"version_bits": "00000001"}, Reject.BAD_VERSION, "outside"),
        (
            view(version_mask=0),
            False,
            {"version_bits": "00002000"},
            Reject.BAD_VERSION,
            "outside the negotiated mask",
        ),
        (view(), False, {"ntime": "00000001"}, Reject.BAD_NTIME, "mintime"),
        (view(), False, {"ntime": f"{int(NOW) + 7201:08x}"}, Reject.BAD_NTIME, "ahead"),
    ],
)
def test_rejections(
    conn: ConnectionView, job_missing: bool, fields: dict[str, str], reject: Reject, text: str
) -> None:
    job = make_job(1e9)
    result = judge(submit(job, bytes(4), 0, **fields), None if job_missing else job, conn)
    assert not result.accepted
    assert result.reject is reject and result.code == reject.code
    assert text in result.message


def test_codes_are_the_conventional_ones() -> None:
    assert (
        Reject.STALE.code,
        Reject.DUPLICATE.code,
        Reject.LOW_DIFFICULTY.code,
        Reject.UNAUTHORIZED.code,
        Reject.NOT_SUBSCRIBED.code,
    ) == (21, 22, 23, 24, 25)


def test_duplicate_then_forgotten_with_its_job() -> None:
    job = make_job(1e9)
    dups = DuplicateFilter()
    nonce = find_nonce(job, bytes(4), 1e-4)
    assert judge(submit(job, bytes(4), nonce), job, dups=dups).accepted
    again = judge(submit(job, bytes(4), nonce), job, dups=dups)
    assert again.reject is Reject.DUPLICATE
    # The same nonce with uppercase hex is the same share.
    upper = judge(submit(job, bytes(4), nonce, nonce=f"{nonce:08X}"), job, dups=dups)
    assert upper.reject is Reject.DUPLICATE
    dups.forget([job.job_id])
    assert len(dups) == 0


def test_low_difficulty_is_judged_at_the_jobs_difficulty() -> None:
    job = make_job(1e9)
    nonce = find_nonce(job, bytes(4), 1e-5, below=1e-3)
    result = judge(submit(job, bytes(4), nonce), job, difficulty=1e-3)
    assert result.reject is Reject.LOW_DIFFICULTY
    # A constant message (no formatting per rejected share): what miners display.
    assert result.message.startswith("low difficulty share")
    # The same share is fine at the difficulty that was in force before (old job, old diff).
    assert judge(submit(job, bytes(4), nonce), job, difficulty=1e-5).accepted


def test_version_rolling_inside_mask_is_accepted_and_used_in_the_header() -> None:
    job = make_job(1e9)
    rolled = 0x00006000
    version = (job.version & ~MASK) | rolled
    nonce = find_nonce(job, bytes(4), 1e-4, version=version)
    result = judge(submit(job, bytes(4), nonce, version_bits=f"{rolled:08x}"), job)
    assert result.accepted and result.version == version
    # Without the rolled version the same nonce is (almost surely) not a valid share.
    plain = hash_to_int(block_hash(job.header(EN1 + bytes(4), job.ntime, nonce, job.version)))
    assert result.share_difficulty != pytest.approx(DIFF1_TARGET / plain)


def test_header_bytes_are_the_submitted_hex_reversed() -> None:
    job = make_job(1e9)
    header = job.header(EN1 + bytes(4), 0x01020304, 0xA1B2C3D4, job.version)
    assert header[68:72] == bytes.fromhex("01020304")[::-1]
    assert header[76:80] == bytes.fromhex("a1b2c3d4")[::-1]
    assert struct.unpack("<I", header[72:76])[0] == job.bits


def test_header_hash_fast_path_matches_the_serialized_header() -> None:
    job = make_job(1e9)
    for version in (job.version, job.version | 0x00002000, 0xFFFFFFFF):
        for nonce in (0, 1, 0xFFFFFFFF):
            en = EN1 + nonce.to_bytes(4, "big")
            assert job.header_hash(en, job.ntime, nonce, version) == block_hash(
                job.header(en, job.ntime, nonce, version)
            )
    with pytest.raises(ValueError):
        job.header_hash(EN1, job.ntime, 0, job.version)


def test_share_target_cache_is_exact() -> None:
    from pool.shares import share_target

    for d in (1e-12, 0.001, 1.0, 3.7, 1e12):
        assert share_target(d) == difficulty_to_target(d)
        assert share_target(d) == difficulty_to_target(d)  # from the cache
