"""Journal retention (``ledger.journal_retention_days``): applied, old segments are deleted;
anything not yet in the store's committed checkpoint, or younger than the period, is kept."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from pool.bitcoin import REGTEST
from pool.bitcoin.target import difficulty_to_target
from pool.config import LedgerConfig
from pool.ledger.journal import Journal, segment_files
from pool.ledger.ledger import Ledger
from pool.ledger.retention import expired_segments, remove_expired_segments
from pool.ledger.store import Store

DAY = 86400.0


def test_expired_segments_only_before_the_checkpoint_and_the_cutoff() -> None:
    segments = [(1, 100.0), (2, 200.0), (3, 50.0), (4, 10.0)]
    assert expired_segments(segments, before_segment=4, cutoff=150.0) == [1, 3]
    assert expired_segments(segments, before_segment=3, cutoff=1e9) == [1, 2]
    assert expired_segments(segments, before_segment=1, cutoff=1e9) == []
    assert expired_segments(segments, before_segment=9, cutoff=10.0) == []  # none old enough


def make_segment(directory: Path, number: int, mtime: float) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"shares-{number:08d}.journal"
    path.write_bytes(b"")
    os.utime(path, (mtime, mtime))
    return path


def test_remove_expired_segments_deletes_files(tmp_path: Path) -> None:
    now = time.time()
    for number, age_days in ((1, 40), (2, 31), (3, 29), (4, 60)):
        make_segment(tmp_path, number, now - age_days * DAY)
    (tmp_path / "notes.txt").write_text("not a segment")
    removed = remove_expired_segments(
        tmp_path, before_segment=4, retention_seconds=30 * DAY, now=now
    )
    assert removed == [1, 2]
    assert [n for n, _ in segment_files(tmp_path)] == [3, 4]  # 3: too young; 4: not applied
    assert (tmp_path / "notes.txt").exists()
    assert (
        remove_expired_segments(
            tmp_path / "missing", before_segment=9, retention_seconds=0, now=now
        )
        == []
    )


def ledger_record(i: int) -> dict[str, Any]:
    return {
        "v": 1,
        "time": 1_700_000_000.0 + i,
        "worker": f"addr{i % 2}.rig",
        "address": f"addr{i % 2}",
        "difficulty": 0.5,
        "target": difficulty_to_target(1.0).to_bytes(32, "big"),
        "credit": 1000 + i,
        "fee": 10,
    }


async def write_segments(directory: Path, per_segment: int, segments: int) -> None:
    i = 0
    for _ in range(segments):
        journal = Journal(directory)
        await journal.open()
        for _ in range(per_segment):
            await journal.append(ledger_record(i))
            i += 1
        await journal.close()


async def test_ledger_prunes_applied_segments_past_the_retention(tmp_path: Path) -> None:
    journal_dir = tmp_path / "journal"
    await write_segments(journal_dir, per_segment=5, segments=3)
    old = time.time() - 10 * DAY
    for _, path in segment_files(journal_dir):
        os.utime(path, (old, old))
    ledger = Ledger(LedgerConfig(journal_retention_days=7), tmp_path, REGTEST)
    await ledger.open()  # replays all 15 records, commits, then prunes
    try:
        cp = await ledger.store.run(Store.checkpoint)
        assert cp is not None and cp.segment == 3
        # 1 and 2 are applied and old: gone. 3 holds the checkpoint: kept. 4 is being written.
        assert [n for n, _ in segment_files(journal_dir)] == [3, 4]
        totals = await ledger.store.run(Store.totals)
        assert totals["shares"] == 15  # the store keeps their totals
        assert totals["credit_units"] == sum(1000 + i for i in range(15))
        assert ledger.aggregates.totals() == totals
    finally:
        await ledger.close()
    reopened = Ledger(LedgerConfig(journal_retention_days=7), tmp_path, REGTEST)
    await reopened.open()  # nothing is replayed twice after the pruning
    try:
        assert reopened.replayed == 0
        assert (await reopened.store.run(Store.totals))["shares"] == 15
    finally:
        await reopened.close()


async def test_retention_zero_keeps_every_segment(tmp_path: Path) -> None:
    journal_dir = tmp_path / "journal"
    await write_segments(journal_dir, per_segment=2, segments=2)
    old = time.time() - 1000 * DAY
    for _, path in segment_files(journal_dir):
        os.utime(path, (old, old))
    ledger = Ledger(LedgerConfig(journal_retention_days=0), tmp_path, REGTEST)
    await ledger.open()
    try:
        assert [n for n, _ in segment_files(journal_dir)] == [1, 2, 3]
        cp = await ledger.store.run(Store.checkpoint)
        assert ledger.prune_journal(time.time(), cp) == []
    finally:
        await ledger.close()


async def test_young_segments_are_kept(tmp_path: Path) -> None:
    journal_dir = tmp_path / "journal"
    await write_segments(journal_dir, per_segment=2, segments=3)
    ledger = Ledger(LedgerConfig(journal_retention_days=1), tmp_path, REGTEST)
    await ledger.open()
    try:
        assert [n for n, _ in segment_files(journal_dir)] == [1, 2, 3, 4]
        # A day later segments 1 and 2 qualify (3 holds the checkpoint, 4 is open).
        cp = await ledger.store.run(Store.checkpoint)
        assert ledger.prune_journal(time.time() + 1.5 * DAY, cp) == [1, 2]
        assert ledger.prune_journal(time.time() + 9 * DAY, None) == []  # no checkpoint: keep
    finally:
        await ledger.close()


async def test_a_missing_checkpoint_segment_is_reported(tmp_path: Path) -> None:
    journal_dir = tmp_path / "journal"
    await write_segments(journal_dir, per_segment=2, segments=2)
    ledger = Ledger(LedgerConfig(), tmp_path, REGTEST)
    await ledger.open()
    await ledger.close()  # checkpoint in segment 2; segment 3 opened (empty)
    (journal_dir / "shares-00000002.journal").unlink()  # e.g. an old store restored
    again = Ledger(LedgerConfig(), tmp_path, REGTEST)
    with capture_logs() as logs:
        await again.open()
    await again.close()
    [error] = [e for e in logs if e["event"] == "journal_checkpoint_segment_missing"]
    assert error["log_level"] == "error" and error["checkpoint"].startswith("2:")
    assert error["segments"] == [1, 3]
