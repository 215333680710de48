"""The append-only share journal: every accepted share is written here BEFORE the miner is
told "accepted", so an acknowledged share is never lost.

Files: ``<directory>/shares-{n:08d}.journal``, numbered from 1. ``Journal.open`` always starts
a NEW segment (one more than the highest existing number), so a run never appends after the
torn tail an earlier run may have left. A segment is closed and the next one started when it
has reached ``segment_bytes`` (checked before each batch; a batch is never split).

Frame format (all integers big-endian)::

    offset  size  field
    0       4     magic  b"\\xd9\\x4a\\x52\\x31"
    4       4     payload length in bytes (1 .. 16 MiB)
    8       4     zlib.crc32 of the payload
    12      len   payload: msgpack.packb(record, use_bin_type=True), always a map

A position (``JournalPosition``) is (segment number, byte offset just after a record); it is
what ``append`` returns and what a consumer stores as its checkpoint to resume reading with
``read_records(directory, start=position)``.

Batching (group commit): ``append`` encodes the record, puts it in the current batch and
waits. One writer task takes the whole batch, frames it and writes it with ONE ``os.write``
(looping on short writes), then applies the fsync policy and answers every ``append`` of the
batch. Records arriving meanwhile form the next batch. Appends are written in call order.

Durability of each ``FsyncPolicy`` once ``append`` has returned:

- ``BATCH``: the batch was fsynced (in a worker thread) before ``append`` returned: the
  record is on disk before the miner is answered and survives a process crash (SIGKILL),
  a kernel crash and power loss. A new segment's directory entry is fsynced too.
- ``INTERVAL``: the record is in the kernel (``os.write`` returned), so it survives a process
  crash/SIGKILL. The file is fsynced at most every ``fsync_interval_ms`` (a timer fsyncs
  at most that long after a write), so a power loss or kernel crash loses at most about
  ``fsync_interval_ms`` of acknowledged shares.
- ``NEVER``: the record is in the kernel, so it survives a process crash/SIGKILL; the file is
  fsynced only at ``close``. A power loss or kernel crash may lose whatever the OS had not
  yet written back.

The journal may hold records that were never acknowledged (a crash between the write and the
answer, a cancelled ``append``, an fsync that failed after the write): consumers must treat a
record as "maybe acknowledged".

Storage faults (a write, fsync or segment creation fails: ENOSPC, EROFS, EACCES, EIO) put
the journal in a DEGRADED state: the failed batch's appends fail, the segment is cut back to
the end of the last batch written whole (best effort) and closed, and every further append is
refused at once (``JournalError``) while a recovery task retries with backoff: it writes and
fsyncs a probe file, then starts a NEW segment (after a failed fsync the old file's page cache
cannot be trusted) and the journal takes appends again. ``degraded`` says why it is refused
(None while it works); ``failures`` and ``recoveries`` count the transitions.

Retention (deleting old, applied segments) is in ``pool.ledger.retention``.

Reading (``read_records``, in :mod:`pool.ledger.journal_read`) never raises on bad data. A
corrupt stretch (bad magic, bad checksum, impossible length, undecodable msgpack, not a map)
is skipped with ONE warning
``journal_corrupt_record`` naming the file and offset, and reading resynchronises on the next
valid frame; an incomplete last frame is skipped with ``journal_torn_tail``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import re
import struct
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import msgpack
import structlog

from pool.tasks import Backoff

log = structlog.get_logger("pool.ledger.journal")

MAGIC = b"\xd9\x4a\x52\x31"
_HEADER = struct.Struct(">4sII")  # magic, payload length, crc32 of the payload
HEADER_BYTES = _HEADER.size
MAX_PAYLOAD_BYTES = 16 * 1024 * 1024  # a longer length field is "impossible"
_SEGMENT_RE = re.compile(r"shares-(\d{8,})\.journal")
_READ_CHUNK = 1024 * 1024


class FsyncPolicy(enum.StrEnum):
    BATCH = "batch"
    INTERVAL = "interval"
    NEVER = "never"


@dataclass(frozen=True, order=True)
class JournalPosition:
    """A point in the journal: the byte just after a record (or (n, 0): the start of n)."""

    segment: int
    offset: int


class JournalError(Exception):
    """The journal cannot take the record: not open, closed, failed, record too big."""


def segment_name(number: int) -> str:
    return f"shares-{number:08d}.journal"


def segment_files(directory: Path) -> list[tuple[int, Path]]:
    """The journal's segment files, sorted by number; a missing directory has none."""
    try:
        entries = list(directory.iterdir())
    except FileNotFoundError:
        return []
    found: list[tuple[int, Path]] = []
    for path in entries:
        match = _SEGMENT_RE.fullmatch(path.name)
        if match is not None and path.is_file():
            found.append((int(match.group(1)), path))
    found.sort()
    return found


def encode_frame(payload: bytes) -> bytes:
    """One frame around an already encoded msgpack payload."""
    return _HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def _encode_record(record: dict[str, Any]) -> bytes:
    if not isinstance(record, dict):
        raise JournalError(f"a journal record must be a dict, not {type(record).__name__}")
    try:
        payload: bytes = msgpack.packb(record, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise JournalError(f"record cannot be encoded: {exc}") from exc
    return payload


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_segment(directory: Path, at_least: int) -> tuple[int, int]:
    """Create the next segment file (never an existing one); returns (number, fd)."""
    existing = segment_files(directory)
    number = max(at_least, existing[-1][0] + 1 if existing else 1)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
    while True:
        try:
            return number, os.open(directory / segment_name(number), flags, 0o644)
        except FileExistsError:
            number += 1


_new_pending = tuple.__new__


class _Pending(NamedTuple):
    payload: bytes
    record: dict[str, Any]
    # None for all but the last record of an ``append_many`` (they are written together)
    future: asyncio.Future[JournalPosition] | None


# Called after each batch is written (and fsynced per policy), in journal order, before any
# append of the batch returns: the ledger hands the records to its store's thread here (queued,
# never waited for), so the store's checkpoint is always "everything up to this position" and
# anything asked of the store after an append returned sees that append's record. The hook
# must be quick and must not raise.
WrittenHook = Callable[[Sequence[tuple[JournalPosition, dict[str, Any]]]], None]


class Journal:
    """The writing side. ``open`` it, ``append`` records, ``close`` it (idempotent)."""

    def __init__(
        self,
        directory: Path,
        *,
        fsync: FsyncPolicy | str = FsyncPolicy.BATCH,
        fsync_interval_ms: int = 100,
        segment_bytes: int = 64 * 1024 * 1024,
        max_record_bytes: int = 65536,
        on_written: WrittenHook | None = None,
        retry_seconds: float = 0.5,
        retry_max_seconds: float = 10.0,
    ) -> None:
        if fsync_interval_ms < 0:
            raise ValueError("fsync_interval_ms must be >= 0")
        if segment_bytes < 1:
            raise ValueError("segment_bytes must be >= 1")
        if not 1 <= max_record_bytes <= MAX_PAYLOAD_BYTES:
            raise ValueError(f"max_record_bytes must be in 1..{MAX_PAYLOAD_BYTES}")
        self.directory = Path(directory)
        self.policy = FsyncPolicy(fsync)
        self.fsync_interval = fsync_interval_ms / 1000.0
        self.segment_bytes = segment_bytes
        self.max_record_bytes = max_record_bytes
        self.on_written = on_written
        self.retry_seconds = retry_seconds
        self.retry_max_seconds = retry_max_seconds
        self.failures = 0  # storage faults that degraded the journal
        self.recoveries = 0  # times it took appends again after one
        self.degraded_since: float | None = None  # wall-clock time of the current fault
        # counters for metrics
        self.records_written = 0
        self.batches_written = 0
        self.fsyncs = 0  # fsyncs of segment files (directory fsyncs are not counted)
        self.bytes_written = 0

        self._fd = -1
        self._segment = 0
        self._offset = 0  # bytes in the current segment
        self._end = JournalPosition(0, 0)
        self._dirty = False  # written since the last fsync of the current segment
        self._last_fsync = 0.0  # loop time
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._recovery: asyncio.Task[None] | None = None
        self._fsync_task: asyncio.Future[None] | None = None
        self._close_lock = asyncio.Lock()
        self._opened = False
        self._closing = False
        self._closed = False
        self._failed: BaseException | None = None

    @property
    def end(self) -> JournalPosition:
        """The position just after the last written record ((segment, 0) before the first)."""
        return self._end

    @property
    def degraded(self) -> str | None:
        """Why appends are refused now (a storage fault being retried); None while it works."""
        return repr(self._failed) if self._failed is not None else None

    @property
    def segment(self) -> int:
        """The number of the segment being written (0 before ``open``)."""
        return self._segment

    async def open(self) -> None:
        """Create the directory if needed and start a NEW segment file, then the writer."""
        if self._opened or self._closing:
            raise JournalError("a journal is opened once")
        try:
            await asyncio.to_thread(self.directory.mkdir, parents=True, exist_ok=True)
            segment, fd = await asyncio.to_thread(_create_segment, self.directory, 1)
        except OSError as exc:
            raise JournalError(
                f"cannot write the share journal in {self.directory}: "
                f"{exc.strerror or exc} (errno {exc.errno}); the pool needs a writable "
                "directory there"
            ) from exc
        try:
            if self.policy is not FsyncPolicy.NEVER:
                await asyncio.to_thread(_fsync_directory, self.directory)
        except BaseException:
            os.close(fd)
            raise
        self._segment, self._fd, self._offset = segment, fd, 0
        self._end = JournalPosition(segment, 0)
        self._opened = True
        self._last_fsync = asyncio.get_running_loop().time()
        self._writer = asyncio.create_task(self._run(), name="journal-writer")
        log.info(
            "journal_opened",
            directory=str(self.directory),
            segment=self._segment,
            fsync=self.policy.value,
            fsync_interval_ms=round(self.fsync_interval * 1000),
            segment_bytes=self.segment_bytes,
            max_record_bytes=self.max_record_bytes,
        )

    async def append(self, record: dict[str, Any]) -> JournalPosition:
        """Write ``record``; returns the position just after it once it is in the kernel
        (and, with ``FsyncPolicy.BATCH``, on disk). Cancelling the call does not withdraw
        the record."""
        self._check_writable()
        payload = _encode_record(record)
        if len(payload) > self.max_record_bytes:
            raise JournalError(
                f"record of {len(payload)} bytes is over the limit of {self.max_record_bytes}"
            )
        future: asyncio.Future[JournalPosition] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(payload, record, future))
        self._wake.set()
        return await future

    def submit_many(self, records: Sequence[dict[str, Any]]) -> asyncio.Future[JournalPosition]:
        """Queue ``records`` to be written in order, in the same write batch; the future gives
        the position just after the last once all are in the kernel (and on disk with
        ``FsyncPolicy.BATCH``). All or none: a record over the size limit refuses the whole
        call (JournalError, nothing queued), and a failed write fails them all. No records:
        a future already holding the current end."""
        self._check_writable()
        payloads = [_encode_record(record) for record in records]
        for payload in payloads:
            if len(payload) > self.max_record_bytes:
                raise JournalError(
                    f"record of {len(payload)} bytes is over the limit of {self.max_record_bytes}"
                )
        future: asyncio.Future[JournalPosition] = asyncio.get_running_loop().create_future()
        if not payloads:
            future.set_result(self._end)
            return future
        # One future for the lot: the writer takes every pending record at once, so the last
        # one is written in the same batch as the others (and a failure is final).
        last = len(payloads) - 1
        make = _new_pending  # tuple.__new__: a NamedTuple's own __new__ is a Python lambda
        self._pending.extend(
            make(_Pending, (payload, record, future if i == last else None))
            for i, (payload, record) in enumerate(zip(payloads, records, strict=True))
        )
        self._wake.set()
        return future

    async def append_many(self, records: Sequence[dict[str, Any]]) -> JournalPosition:
        """``submit_many`` and wait: the position just after the last record."""
        return await self.submit_many(records)

    async def close(self) -> None:
        """Write what is pending, fsync, close the file. Idempotent."""
        self._closing = True  # from now on append refuses
        async with self._close_lock:
            if self._closed:
                return
            self._closed = True
            if self._writer is None:  # never opened
                return
            self._wake.set()
            if self._recovery is not None:
                self._recovery.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._recovery
            await asyncio.wait([self._writer])
            if self._fsync_task is not None and not self._fsync_task.done():
                await asyncio.wait([self._fsync_task])
            try:
                if self._failed is None and self._dirty:
                    await self._fsync()
            except OSError as exc:
                self._fail(exc)
            finally:
                if self._fd >= 0:
                    os.close(self._fd)
                    self._fd = -1
        log.info(
            "journal_closed",
            segment=self._segment,
            records_written=self.records_written,
            batches_written=self.batches_written,
            fsyncs=self.fsyncs,
            bytes_written=self.bytes_written,
            failed=self._failed is not None,
        )

    def _check_writable(self) -> None:
        if self._failed is not None:
            raise JournalError(
                "pool storage unavailable, share not recorded "
                f"(journal write failed: {self._failed!r}; retrying)"
            ) from self._failed
        if self._closing:
            raise JournalError("journal is closed")
        if not self._opened:
            raise JournalError("journal is not open")

    # --- the writer task -------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while self._failed is None:
                if self._pending:
                    batch, self._pending = self._pending, []
                    await self._write_batch(batch)
                    continue
                if self._closing:
                    return
                self._wake.clear()
                wait = self._interval_fsync_due_in()
                if wait is None:
                    await self._wake.wait()
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                await self._interval_fsync()
        except asyncio.CancelledError as exc:
            self._fail(exc)
            raise
        except Exception as exc:  # OSError: a storage fault; anything else: a bug. Both retried
            self._fail(exc)
        finally:
            self._fail_pending()

    async def _write_batch(self, batch: list[_Pending]) -> None:
        start: tuple[int, int, JournalPosition] | None = None  # segment, offset, end
        try:
            if self._offset >= self.segment_bytes:
                await self._rotate()
            start = (self._segment, self._offset, self._end)
            frames = [encode_frame(item.payload) for item in batch]
            positions: list[JournalPosition] = []
            offset = self._offset
            for frame in frames:
                offset += len(frame)
                positions.append(JournalPosition(self._segment, offset))
            data = b"".join(frames)
            _write_all(self._fd, data)
            self._offset = offset
            self._end = positions[-1]
            self._dirty = True
            self.records_written += len(batch)
            self.batches_written += 1
            self.bytes_written += len(data)
            if self.policy is FsyncPolicy.BATCH:
                await self._fsync()
            if self.on_written is not None:
                self.on_written(
                    [(pos, item.record) for item, pos in zip(batch, positions, strict=True)]
                )
        except BaseException as exc:
            for item in batch:
                if item.future is not None and not item.future.done():
                    item.future.set_exception(_failure(exc))
            # Nothing of the failed batch was acknowledged: cut it off (best effort), so a
            # replay does not credit shares their miners were told were not recorded.
            if start is not None and self._fd >= 0 and self._segment == start[0]:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, start[1])
                self._offset, self._end = start[1], start[2]
            raise
        for item, position in zip(batch, positions, strict=True):
            if item.future is not None and not item.future.done():
                item.future.set_result(position)
        if self.policy is FsyncPolicy.INTERVAL:
            await self._interval_fsync()

    async def _fsync(self) -> None:
        # a task of its own, so close() can wait for it even if the writer was cancelled
        # run_in_executor, not to_thread: a plain future, no task and no context copy per batch
        task = asyncio.get_running_loop().run_in_executor(None, os.fsync, self._fd)
        self._fsync_task = task
        self._dirty = False
        try:
            await asyncio.shield(task)
        except BaseException:
            self._dirty = True
            raise
        self.fsyncs += 1
        self._last_fsync = asyncio.get_running_loop().time()

    def _interval_fsync_due_in(self) -> float | None:
        if self.policy is not FsyncPolicy.INTERVAL or not self._dirty:
            return None
        now = asyncio.get_running_loop().time()
        return max(0.0, self._last_fsync + self.fsync_interval - now)

    async def _interval_fsync(self) -> None:
        due_in = self._interval_fsync_due_in()
        if due_in is not None and due_in <= 0.0:
            await self._fsync()

    async def _rotate(self) -> None:
        if self._dirty and self.policy is not FsyncPolicy.NEVER:
            await self._fsync()
        old = self._segment
        os.close(self._fd)
        self._fd = -1
        self._segment, self._fd = await asyncio.to_thread(_create_segment, self.directory, old + 1)
        self._offset = 0
        self._dirty = False
        if self.policy is not FsyncPolicy.NEVER:
            await asyncio.to_thread(_fsync_directory, self.directory)
        log.info("journal_segment_rotated", old_segment=old, segment=self._segment)

    def _fail(self, exc: BaseException) -> None:
        if self._failed is not None:
            return
        self._failed = exc
        if isinstance(exc, asyncio.CancelledError) or self._closing:
            return
        self.failures += 1
        self.degraded_since = time.time()
        log.error(
            "journal_degraded",
            segment=self._segment,
            directory=str(self.directory),
            error=repr(exc),
            note="shares are refused until the journal can write again (retried with backoff)",
        )
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        self._recovery = asyncio.get_running_loop().create_task(
            self._recover(), name="journal-recovery"
        )

    async def _recover(self) -> None:
        """Retry with backoff until a probe write and a new segment succeed, then take
        appends again (a new writer task)."""
        backoff = Backoff(self.retry_seconds, self.retry_max_seconds)
        while not self._closing:
            await asyncio.sleep(backoff.next_delay())
            if self._closing:
                return
            try:
                await asyncio.to_thread(_probe, self.directory, self.policy)
                segment, fd = await asyncio.to_thread(
                    _create_segment, self.directory, self._segment + 1
                )
                try:
                    if self.policy is not FsyncPolicy.NEVER:
                        await asyncio.to_thread(_fsync_directory, self.directory)
                except BaseException:
                    os.close(fd)
                    raise
            except OSError as exc:
                log.warning(
                    "journal_still_degraded",
                    error=repr(exc),
                    attempts=backoff.failures,
                    retry_in_seconds=min(
                        backoff.maximum, backoff.initial * backoff.factor**backoff.failures
                    ),
                )
                continue
            if self._closing:
                os.close(fd)
                return
            down = time.time() - (self.degraded_since or time.time())
            self._segment, self._fd, self._offset = segment, fd, 0
            self._end = JournalPosition(segment, 0)
            self._dirty = False
            self._failed = None
            self.degraded_since = None
            self.recoveries += 1
            self._writer = asyncio.create_task(self._run(), name="journal-writer")
            log.warning(
                "journal_recovered",
                segment=segment,
                down_seconds=round(down, 3),
                recoveries=self.recoveries,
            )
            return

    def _fail_pending(self) -> None:
        pending, self._pending = self._pending, []
        for item in pending:
            if item.future is not None and not item.future.done():
                item.future.set_exception(_failure(self._failed))


PROBE_NAME = ".write-probe"
PROBE_BYTES = 65536  # written and fsynced to see whether the journal can write again


def _probe(directory: Path, policy: FsyncPolicy) -> None:
    """Write, fsync and remove a probe file: raises the OSError while storage is faulty."""
    path = directory / PROBE_NAME
    try:
        with path.open("wb") as f:
            f.write(b"\0" * PROBE_BYTES)
            f.flush()
            if policy is not FsyncPolicy.NEVER:
                os.fsync(f.fileno())
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _failure(cause: BaseException | None) -> JournalError:
    error = JournalError(
        f"pool storage unavailable, share not recorded (journal write failed: {cause!r})"
        if cause
        else "journal closed"
    )
    error.__cause__ = cause
    return error
