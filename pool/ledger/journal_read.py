"""The share journal's reading side: records back from the segment files, in order.

Used at start-up (replay past the store's checkpoint) and by tools and tests. Damage is
reported, never fatal: a corrupt stretch is skipped with an ERROR ``journal_corrupt_record``
(with the running count, in ``Damage``), a torn tail (the last frame of a segment cut short by
a crash: never acknowledged) with a warning, and reading resumes at the next frame (see
:mod:`pool.ledger.journal` for the format).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import msgpack

from pool.ledger.journal import (
    _HEADER,
    _READ_CHUNK,
    HEADER_BYTES,
    MAGIC,
    MAX_PAYLOAD_BYTES,
    JournalPosition,
    log,
    segment_files,
)


class _Buffer:
    """Bytes of one segment file from a start offset, read in chunks as needed."""

    def __init__(self, file: BinaryIO, start: int) -> None:
        self._file = file
        self._buf = bytearray()
        self._base = start  # file offset of self._buf[0]
        self._eof = False

    @property
    def end(self) -> int:
        """File offset just after the buffered bytes (the file size once at EOF)."""
        return self._base + len(self._buf)

    def _read_more(self, at_least: int) -> bool:
        if self._eof:
            return False
        chunk = self._file.read(max(_READ_CHUNK, at_least))
        if not chunk:
            self._eof = True
            return False
        self._buf += chunk
        return True

    def release(self, pos: int) -> None:
        """Bytes before ``pos`` are not needed any more."""
        if pos - self._base >= _READ_CHUNK:
            del self._buf[: pos - self._base]
            self._base = pos

    def has(self, pos: int, size: int) -> bool:
        """Whether bytes [pos, pos + size) exist (reading up to EOF to find out)."""
        while self.end < pos + size:
            if not self._read_more(pos + size - self.end):
                return False
        return True

    def get(self, pos: int, size: int) -> bytes:
        start = pos - self._base
        return bytes(self._buf[start : start + size])

    def find_magic(self, pos: int) -> int | None:
        """The offset of the next MAGIC at or after ``pos``; None at EOF."""
        while True:
            self.release(pos)
            index = self._buf.find(MAGIC, max(0, pos - self._base))
            if index >= 0:
                return self._base + index
            pos = max(pos, self.end - (len(MAGIC) - 1))
            if not self._read_more(0):
                return None


@dataclass
class Damage:
    """What reading skipped: corrupt stretches (records lost to bad data) and torn tails."""

    corrupt: int = 0
    corrupt_bytes: int = 0
    torn_tails: int = 0
    torn_bytes: int = 0


DAMAGE_TOTAL = Damage()  # everything this process has skipped (the metrics read it)


class _Good(NamedTuple):
    record: dict[str, Any]
    end: int


class _Bad(NamedTuple):
    reason: str
    frame_end: int | None  # set when the frame was complete (its length is plausible)


def _parse_frame(buf: _Buffer, pos: int) -> _Good | _Bad | None:
    """The frame at ``pos``: good, bad (with why), or None at EOF."""
    if not buf.has(pos, HEADER_BYTES):
        rest = buf.get(pos, buf.end - pos)
        if not rest:
            return None
        return _Bad("truncated" if MAGIC.startswith(rest[: len(MAGIC)]) else "bad_magic", None)
    magic, length, crc = _HEADER.unpack(buf.get(pos, HEADER_BYTES))
    if magic != MAGIC:
        return _Bad("bad_magic", None)
    if not 1 <= length <= MAX_PAYLOAD_BYTES:
        return _Bad("bad_length", None)
    end = pos + HEADER_BYTES + length
    if not buf.has(pos + HEADER_BYTES, length):
        return _Bad("truncated", None)
    payload = buf.get(pos + HEADER_BYTES, length)
    if zlib.crc32(payload) != crc:
        return _Bad("bad_checksum", end)
    try:
        record = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception:  # any decoding failure of bad data is a corrupt record
        return _Bad("bad_msgpack", end)
    if not isinstance(record, dict):
        return _Bad("not_a_map", end)
    return _Good(record, end)


def _report(damage: Damage, event: str, path: Path, start: int, end: int, reason: str) -> None:
    skipped = end - start
    if event == "journal_torn_tail":
        for d in (damage, DAMAGE_TOTAL):
            d.torn_tails += 1
            d.torn_bytes += skipped
        log.warning(event, file=str(path), offset=start, skipped_bytes=skipped, reason=reason)
        return
    for d in (damage, DAMAGE_TOTAL):
        d.corrupt += 1
        d.corrupt_bytes += skipped
    log.error(
        event,
        file=str(path),
        offset=start,
        skipped_bytes=skipped,
        reason=reason,
        corrupt_stretches=damage.corrupt,
        corrupt_bytes=damage.corrupt_bytes,
        note="the shares in this stretch are not credited",
    )


def _read_segment(
    number: int, path: Path, offset: int, damage: Damage
) -> Iterator[tuple[JournalPosition, dict[str, Any]]]:
    try:
        file = path.open("rb")
    except FileNotFoundError:  # removed since it was listed
        return
    with file:
        file.seek(offset)
        buf = _Buffer(file, offset)
        pos = offset
        bad_start: int | None = None  # start of the corrupt stretch being skipped
        bad_reason = ""
        while True:
            buf.release(pos)
            frame = _parse_frame(buf, pos)
            if frame is None:
                if bad_start is not None:
                    _report(damage, "journal_corrupt_record", path, bad_start, pos, bad_reason)
                return
            if isinstance(frame, _Good):
                if bad_start is not None:  # a frame that claimed to run past EOF had a bad length
                    reason = "bad_length" if bad_reason == "truncated" else bad_reason
                    _report(damage, "journal_corrupt_record", path, bad_start, pos, reason)
                    bad_start = None
                pos = frame.end
                yield JournalPosition(number, pos), frame.record
                continue
            if bad_start is None:
                bad_start, bad_reason = pos, frame.reason
            end = frame.frame_end
            if end is not None and (not buf.has(end, 1) or buf.get(end, len(MAGIC)) == MAGIC):
                # a complete frame followed by a frame boundary: skip exactly that frame
                _report(damage, "journal_corrupt_record", path, bad_start, end, bad_reason)
                bad_start, pos = None, end
                continue
            following = buf.find_magic(pos + 1)
            if following is None:
                event = (
                    "journal_torn_tail" if bad_reason == "truncated" else "journal_corrupt_record"
                )
                _report(damage, event, path, bad_start, buf.end, bad_reason)
                return
            pos = following


def read_records(
    directory: Path, start: JournalPosition | None = None, damage: Damage | None = None
) -> Iterator[tuple[JournalPosition, dict[str, Any]]]:
    """Yield (position just after the record, record) in journal order, from ``start``
    (exclusive: the record ending there is not yielded) or from the beginning.

    Bad data is skipped with one error per corrupt stretch (counted in ``damage``); only OS
    errors raise. A missing directory yields nothing.
    """
    damage = Damage() if damage is None else damage
    for number, path in segment_files(Path(directory)):
        if start is not None and number < start.segment:
            continue
        offset = start.offset if start is not None and number == start.segment else 0
        yield from _read_segment(number, path, offset, damage)
