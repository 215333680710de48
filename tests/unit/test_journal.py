"""The share journal: batching, rotation, fsync policies, corruption handling, SIGKILL."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from structlog.testing import capture_logs

import pool.ledger.journal as journal_module
from pool.ledger.journal import (
    HEADER_BYTES,
    FsyncPolicy,
    Journal,
    JournalError,
    JournalPosition,
    encode_frame,
    segment_files,
)
from pool.ledger.journal_read import DAMAGE_TOTAL, Damage, read_records

REPO = Path(__file__).resolve().parents[2]


def share(i: int) -> dict[str, Any]:
    return {"id": i, "worker": f"bcrt1qexample.rig{i % 7}", "diff": 0.001 * (i + 1), "n": b"\x01"}


async def write(directory: Path, count: int, **kwargs: Any) -> list[JournalPosition]:
    journal = Journal(directory, **kwargs)
    await journal.open()
    positions = [await journal.append(share(i)) for i in range(count)]
    await journal.close()
    return positions


def ids(directory: Path, start: JournalPosition | None = None) -> list[int]:
    return [record["id"] for _, record in read_records(directory, start)]


async def until(predicate: Callable[[], bool], seconds: float = 30.0) -> None:
    """Wait for ``predicate`` (a condition, never a fixed sleep)."""
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for a condition"
        await asyncio.sleep(0.005)


def warnings(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The damage reports: a torn tail is a warning, a corrupt record an ERROR."""
    found = [entry for entry in logs if entry["log_level"] in ("warning", "error")]
    for entry in found:
        level = "warning" if entry["event"] == "journal_torn_tail" else "error"
        assert entry["log_level"] == level, entry
    return found


async def test_round_trip_batches_and_rotation(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j", segment_bytes=2000)
    await journal.open()
    positions: list[JournalPosition] = []
    for start in range(0, 300, 30):  # ten rounds of 30 concurrent appends
        batch = [journal.append(share(i)) for i in range(start, start + 30)]
        positions += await asyncio.gather(*batch)
    assert journal.end == positions[-1]
    await journal.close()

    assert positions == sorted(positions) and len(set(positions)) == 300
    files = segment_files(tmp_path / "j")
    assert len(files) >= 5
    assert [n for n, _ in files] == list(range(1, len(files) + 1))
    assert all(p.name == f"shares-{n:08d}.journal" for n, p in files)
    got = list(read_records(tmp_path / "j"))
    assert [pos for pos, _ in got] == positions
    assert [rec for _, rec in got] == [share(i) for i in range(300)]
    assert journal.records_written == 300
    assert journal.batches_written < 300
    assert journal.bytes_written == sum(p.stat().st_size for _, p in files)


async def test_concurrent_appends_are_batched_in_order(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    await journal.open()
    positions = await asyncio.gather(*(journal.append(share(i)) for i in range(1000)))
    await journal.close()
    assert list(positions) == sorted(positions)  # call order == journal order
    assert len(set(positions)) == 1000
    assert journal.records_written == 1000
    assert journal.batches_written <= 20
    by_position = dict(read_records(tmp_path))
    assert [by_position[p]["id"] for p in positions] == list(range(1000))


async def test_records_arriving_during_a_write_go_to_the_next_batch(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    await journal.open()
    first = asyncio.ensure_future(journal.append(share(0)))
    await asyncio.sleep(0)  # the writer takes {0} and starts its fsync
    await asyncio.sleep(0)
    rest = [asyncio.ensure_future(journal.append(share(i))) for i in range(1, 50)]
    await asyncio.gather(first, *rest)
    await journal.close()
    assert journal.batches_written == 2
    assert ids(tmp_path) == list(range(50))


async def test_torn_tail(tmp_path: Path) -> None:
    positions = await write(tmp_path, 20)
    (_, path) = segment_files(tmp_path)[0]
    cut = positions[-2].offset + (positions[-1].offset - positions[-2].offset) // 2
    os.truncate(path, cut)
    with capture_logs() as logs:
        got = ids(tmp_path)
    assert got == list(range(19))
    (warning,) = warnings(logs)
    assert warning["event"] == "journal_torn_tail"
    assert warning["file"] == str(path)
    assert warning["offset"] == positions[-2].offset


async def test_torn_header(tmp_path: Path) -> None:
    positions = await write(tmp_path, 5)
    (_, path) = segment_files(tmp_path)[0]
    os.truncate(path, positions[-2].offset + 6)  # magic + half the length field
    with capture_logs() as logs:
        assert ids(tmp_path) == list(range(4))
    assert [w["event"] for w in warnings(logs)] == ["journal_torn_tail"]


@pytest.mark.parametrize("where", [0, 3, 5, 7, 9, HEADER_BYTES, HEADER_BYTES + 7, -1])
async def test_flipped_byte_in_a_middle_record(tmp_path: Path, where: int) -> None:
    positions = await write(tmp_path, 10)
    (_, path) = segment_files(tmp_path)[0]
    start, end = positions[4].offset, positions[5].offset  # record 5
    at = start + where if where >= 0 else end + where
    data = bytearray(path.read_bytes())
    data[at] ^= 0x5A
    path.write_bytes(bytes(data))
    with capture_logs() as logs:
        got = ids(tmp_path)
    assert got == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    (warning,) = warnings(logs)
    assert warning["event"] == "journal_corrupt_record"
    assert warning["file"] == str(path)
    assert warning["offset"] == start


async def test_length_field_pointing_past_the_end_is_a_corrupt_record(tmp_path: Path) -> None:
    positions = await write(tmp_path, 6)
    (_, path) = segment_files(tmp_path)[0]
    data = bytearray(path.read_bytes())
    start = positions[1].offset
    data[start + 4 : start + 8] = (1 << 20).to_bytes(4, "big")
    path.write_bytes(bytes(data))
    with capture_logs() as logs:
        assert ids(tmp_path) == [0, 1, 3, 4, 5]
    (warning,) = warnings(logs)
    assert (warning["event"], warning["reason"]) == ("journal_corrupt_record", "bad_length")


async def test_garbage_appended_and_between_records(tmp_path: Path) -> None:
    positions = await write(tmp_path, 8)
    (_, path) = segment_files(tmp_path)[0]
    data = path.read_bytes()
    middle = positions[3].offset
    garbage = bytes(range(256)) * 4 + b"\xd9\x4a\x52"  # ends with a partial magic
    path.write_bytes(data[:middle] + garbage + data[middle:] + b"\x00" * 100 + garbage)
    with capture_logs() as logs:
        assert ids(tmp_path) == list(range(8))
    events = warnings(logs)
    assert [w["event"] for w in events] == ["journal_corrupt_record"] * 2
    assert events[0]["offset"] == middle
    assert events[0]["skipped_bytes"] == len(garbage)
    assert events[1]["offset"] == len(data) + len(garbage)


async def test_valid_frames_that_are_not_records(tmp_path: Path) -> None:
    positions = await write(tmp_path, 3)
    (_, path) = segment_files(tmp_path)[0]
    bad = [
        encode_frame(b"\xc1"),  # never used in msgpack
        encode_frame(msgpack.packb([1, 2, 3])),  # not a map
        encode_frame(msgpack.packb({"a": 1}) + b"\x00"),  # extra data
        encode_frame(b"\xa3\xff\xfe\xfd"),  # a str that is not UTF-8
    ]
    with path.open("ab") as f:
        for frame in bad:
            f.write(frame)
        f.write(encode_frame(msgpack.packb({"id": 99})))
    with capture_logs() as logs:
        got = list(read_records(tmp_path))
    assert [r["id"] for _, r in got] == [0, 1, 2, 99]
    assert got[2][0] == positions[-1]
    reasons = [w["reason"] for w in warnings(logs)]
    assert reasons == ["bad_msgpack", "not_a_map", "bad_msgpack", "bad_msgpack"]


async def test_start_position_resumes_after_the_record(tmp_path: Path) -> None:
    positions = await write(tmp_path, 100, segment_bytes=1500)
    assert len(segment_files(tmp_path)) > 3
    for k in (0, 17, 50, 98, 99):
        assert ids(tmp_path, positions[k]) == list(range(k + 1, 100))
    # the last record of a segment: the next segment continues
    k = next(i for i in range(99) if positions[i + 1].segment != positions[i].segment)
    assert ids(tmp_path, positions[k]) == list(range(k + 1, 100))
    assert ids(tmp_path, JournalPosition(positions[0].segment, 0)) == list(range(100))
    assert ids(tmp_path, JournalPosition(0, 0)) == list(range(100))
    assert ids(tmp_path, JournalPosition(10**6, 0)) == []


async def test_reopen_starts_a_new_segment(tmp_path: Path) -> None:
    first = await write(tmp_path, 10)
    os.truncate(segment_files(tmp_path)[0][1], first[-1].offset - 3)  # a crash tore the tail
    journal = Journal(tmp_path)
    await journal.open()
    assert journal.end == JournalPosition(2, 0)
    second = [await journal.append(share(i)) for i in range(10, 15)]
    await journal.close()
    assert [n for n, _ in segment_files(tmp_path)] == [1, 2]
    assert all(p.segment == 2 for p in second) and second[0] > first[-1]
    with capture_logs() as logs:
        assert ids(tmp_path) == [*range(9), *range(10, 15)]
    assert [w["event"] for w in warnings(logs)] == ["journal_torn_tail"]
    # opening always creates a new file, even when the last one is empty
    journal = Journal(tmp_path)
    await journal.open()
    await journal.close()
    journal = Journal(tmp_path)
    await journal.open()
    await journal.close()
    assert [n for n, _ in segment_files(tmp_path)] == [1, 2, 3, 4]


async def test_policy_batch_fsyncs_every_batch(tmp_path: Path) -> None:
    journal = Journal(tmp_path, fsync="batch")
    assert journal.policy is FsyncPolicy.BATCH
    await journal.open()
    for i in range(5):
        await asyncio.gather(*(journal.append(share(10 * i + k)) for k in range(10)))
    assert journal.batches_written >= 5
    assert journal.fsyncs == journal.batches_written
    await journal.close()
    assert journal.fsyncs == journal.batches_written  # nothing left to fsync at close


async def test_policy_never_fsyncs_only_at_close(tmp_path: Path) -> None:
    journal = Journal(tmp_path, fsync=FsyncPolicy.NEVER, segment_bytes=500)
    await journal.open()
    for i in range(40):
        await journal.append(share(i))
    assert journal.batches_written == 40
    assert journal.fsyncs == 0
    await journal.close()
    assert journal.fsyncs == 1
    assert ids(tmp_path) == list(range(40))


async def test_policy_interval_fsyncs_on_a_timer(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "slow", fsync="interval", fsync_interval_ms=60_000)
    await journal.open()
    for i in range(10):
        await journal.append(share(i))
    assert (journal.batches_written, journal.fsyncs) == (10, 0)
    await journal.close()
    assert journal.fsyncs == 1  # close fsyncs

    journal = Journal(tmp_path / "fast", fsync="interval", fsync_interval_ms=20)
    await journal.open()
    await journal.append(share(0))
    for _ in range(300):
        if journal.fsyncs:
            break
        await asyncio.sleep(0.01)
    assert journal.fsyncs == 1  # no further appends: the timer did it
    await asyncio.sleep(0.1)
    assert journal.fsyncs == 1  # nothing written since: no more fsyncs
    for i in range(1, 30):
        await journal.append(share(i))
        await asyncio.sleep(0.002)
    await journal.close()
    assert 1 < journal.fsyncs < 29
    assert ids(tmp_path / "fast") == list(range(30))


async def test_oversize_and_unencodable_records_are_rejected(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_record_bytes=100)
    await journal.open()
    with pytest.raises(JournalError, match="over the limit"):
        await journal.append({"id": 1, "blob": "x" * 200})
    with pytest.raises(JournalError, match="cannot be encoded"):
        await journal.append({"id": 1, "obj": object()})
    assert journal.records_written == 0
    assert segment_files(tmp_path)[0][1].stat().st_size == 0
    await journal.append(share(2))  # still usable
    await journal.close()
    assert ids(tmp_path) == [2]


async def test_append_outside_open_and_close_is_idempotent(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    with pytest.raises(JournalError, match="not open"):
        await journal.append(share(0))
    await journal.open()
    await journal.append(share(0))
    await asyncio.gather(journal.close(), journal.close())
    await journal.close()
    with pytest.raises(JournalError, match="closed"):
        await journal.append(share(1))
    with pytest.raises(JournalError):
        await journal.open()
    assert ids(tmp_path) == [0]


async def test_close_writes_what_is_pending(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    await journal.open()
    appends = [asyncio.ensure_future(journal.append(share(i))) for i in range(20)]
    await asyncio.sleep(0)
    await journal.close()
    assert len(await asyncio.gather(*appends)) == 20
    assert ids(tmp_path) == list(range(20))


async def test_a_write_error_degrades_the_journal_until_it_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal(tmp_path, retry_seconds=0.05, retry_max_seconds=0.2)
    await journal.open()
    await journal.append(share(0))
    real_write, real_probe = journal_module._write_all, journal_module._probe
    probes: list[float] = []

    def disk_full(fd: int, data: bytes) -> None:
        os.write(fd, data[: len(data) // 2])  # a partial write, then the disk is full
        raise OSError(28, "No space left on device")

    def probe_full(directory: Path, policy: FsyncPolicy) -> None:
        probes.append(time.monotonic())
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal_module, "_write_all", disk_full)
    monkeypatch.setattr(journal_module, "_probe", probe_full)
    with capture_logs() as logs:
        results = await asyncio.gather(
            *(journal.append(share(i)) for i in range(1, 4)), return_exceptions=True
        )
        assert all(isinstance(r, JournalError) for r in results)
        assert "No space left" in str(results[0])
        assert journal.degraded is not None and journal.failures == 1
        with pytest.raises(JournalError, match="pool storage unavailable"):
            await journal.append(share(9))  # refused at once while degraded
        await until(lambda: len(probes) >= 4)  # retried with backoff while the disk is full
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["journal_degraded"]
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    assert gaps[-1] >= 0.15  # the delay grew to the maximum
    monkeypatch.setattr(journal_module, "_write_all", real_write)
    monkeypatch.setattr(journal_module, "_probe", real_probe)
    await until(lambda: journal.degraded is None)  # space is back: it recovers by itself
    assert journal.degraded is None and journal.recoveries == 1
    assert journal.segment == 2  # a new segment after the fault
    await journal.append(share(10))
    await journal.close()
    # the half-written failed batch was cut off: nothing the miners were refused is replayed
    assert ids(tmp_path) == [0, 10]


async def test_a_cancelled_append_is_still_written(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    await journal.open()
    task = asyncio.ensure_future(journal.append(share(0)))
    await asyncio.sleep(0)
    task.cancel()
    assert await journal.append(share(1)) > JournalPosition(1, 0)
    await journal.close()
    assert task.cancelled()
    assert ids(tmp_path) == [0, 1]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        Journal(Path("x"), fsync="sometimes")
    with pytest.raises(ValueError):
        Journal(Path("x"), segment_bytes=0)
    with pytest.raises(ValueError):
        Journal(Path("x"), max_record_bytes=1 << 30)


def test_missing_directory_and_foreign_files(tmp_path: Path) -> None:
    assert list(read_records(tmp_path / "nope")) == []
    assert segment_files(tmp_path / "nope") == []
    (tmp_path / "shares-00000001.journal.tmp").write_bytes(b"x")
    (tmp_path / "notes.txt").write_bytes(b"x")
    (tmp_path / "shares-00000003.journal").write_bytes(b"")
    (tmp_path / "shares-00000002.journal").write_bytes(encode_frame(msgpack.packb({"id": 1})))
    assert [n for n, _ in segment_files(tmp_path)] == [2, 3]
    assert ids(tmp_path) == [1]


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    import structlog
    from pool.ledger.journal import Journal

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))

    async def producer(journal, first, step):
        i = first
        while True:
            await journal.append({"id": i, "pad": "p" * 50})
            sys.stdout.write(f"{i}\\n")
            sys.stdout.flush()
            i += step

    async def main():
        journal = Journal(Path(sys.argv[1]), fsync="never", segment_bytes=16384)
        await journal.open()
        print("ready", flush=True)
        await asyncio.gather(*(producer(journal, k, 8) for k in range(8)))

    asyncio.run(main())
    """
)


def test_sigkill_loses_no_acknowledged_record(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        stdout=subprocess.PIPE,
        cwd=REPO,
        env=env,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"
        time.sleep(0.5)
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    lines = out.split(b"\n")[:-1]  # a last line without its newline may be cut
    acknowledged = {int(line) for line in lines}
    assert len(acknowledged) > 50
    journaled = set(ids(tmp_path))
    assert acknowledged <= journaled
    assert len(segment_files(tmp_path)) > 1


async def test_append_many_writes_a_read_in_one_batch_in_order(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    await journal.open()
    first = await journal.append_many([share(i) for i in range(32)])
    second = await journal.append_many([share(i) for i in range(32, 40)])
    assert await journal.append_many([]) == second  # nothing to write: the end as it is
    await journal.close()
    assert first < second
    assert journal.batches_written == 2
    positions = [pos for pos, _ in read_records(tmp_path)]
    assert positions[31] == first and positions[39] == second == journal.end
    assert ids(tmp_path) == list(range(40))


async def test_append_many_is_all_or_nothing(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_record_bytes=100)
    await journal.open()
    with pytest.raises(JournalError, match="over the limit"):
        await journal.append_many([share(1), {"id": 2, "blob": "x" * 200}, share(3)])
    assert journal.records_written == 0
    await journal.close()
    assert ids(tmp_path) == []
    with pytest.raises(JournalError, match="closed"):
        await journal.append_many([share(4)])


async def test_append_many_fails_every_record_of_a_failed_write(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    await journal.open()
    os.close(journal._fd)  # the disk goes away under the writer: a real EBADF on write
    with pytest.raises(JournalError):
        await journal.append_many([share(i) for i in range(5)])
    with pytest.raises(JournalError, match="failed"):
        await journal.append_many([share(9)])
    journal._fd = -1
    await journal.close()


async def test_corrupt_records_are_counted_as_errors(tmp_path: Path) -> None:
    positions = await write(tmp_path, 10)
    (_, path) = segment_files(tmp_path)[0]
    data = bytearray(path.read_bytes())
    for record in (2, 6):  # two records' payloads damaged, far apart
        data[positions[record].offset - 1] ^= 0x5A
    path.write_bytes(bytes(data) + b"\xd9\x4a")  # and a torn tail
    damage = Damage()
    total_before = DAMAGE_TOTAL.corrupt
    with capture_logs() as logs:
        got = [r["id"] for _, r in read_records(tmp_path, None, damage)]
    assert got == [0, 1, 3, 4, 5, 7, 8, 9]
    assert (damage.corrupt, damage.torn_tails) == (2, 1)
    assert damage.corrupt_bytes == sum(
        positions[i].offset - positions[i - 1].offset for i in (2, 6)
    )
    assert DAMAGE_TOTAL.corrupt - total_before == 2  # the process-wide count the metric reads
    errors = [e for e in logs if e["log_level"] == "error"]
    assert [(e["event"], e["corrupt_stretches"]) for e in errors] == [
        ("journal_corrupt_record", 1),
        ("journal_corrupt_record", 2),
    ]
