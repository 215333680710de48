"""Journal retention (``ledger.journal_retention_days``): segments that are wholly applied to the
store and older than the retention period are deleted. The store keeps their totals; the journal
is then the audit trail of the retention period only. Deciding is pure (``expired_segments``);
``remove_expired_segments`` does the file work."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

from pool.ledger.journal import segment_files


def expired_segments(
    segments: Sequence[tuple[int, float]], *, before_segment: int, cutoff: float
) -> list[int]:
    """Retention (pure): the segment numbers that may be deleted, given ``(number, mtime)``
    pairs. Only segments wholly before ``before_segment`` (the segment of the consumer's
    checkpoint, so everything in them is applied and committed; the one being written is never
    before it) and last written before ``cutoff`` qualify."""
    return [n for n, mtime in segments if n < before_segment and mtime < cutoff]


def remove_expired_segments(
    directory: Path, *, before_segment: int, retention_seconds: float, now: float
) -> list[int]:
    """Delete the segments ``expired_segments`` names; returns their numbers. A file that
    vanished meanwhile is skipped; other errors propagate."""
    files = dict(segment_files(directory))
    stamped = []
    for number, path in files.items():
        with contextlib.suppress(FileNotFoundError):
            stamped.append((number, path.stat().st_mtime))
    removed = []
    for number in expired_segments(
        stamped, before_segment=before_segment, cutoff=now - retention_seconds
    ):
        with contextlib.suppress(FileNotFoundError):
            files[number].unlink()
            removed.append(number)
    return removed
