"""The ledger under a real storage fault (another connection holding SQLite's write lock):
degraded, shares still journaled and acknowledged, a found block kept and retried, and a
recovery by itself with every share credited once. About 15-25 s (the store waits
ledger.sqlite_busy_timeout_seconds, 5 s, before it is degraded)."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path

import pytest

from pool.bitcoin import REGTEST
from pool.config import LedgerConfig
from pool.ledger.ledger import Ledger
from pool.ledger.store import Store
from pool.node.submit import SubmitStatus
from tests.integration.test_ledger_thread import creds, share, stored, submission, wait_until

pytestmark = pytest.mark.integration

ADDRESS = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"


async def test_a_locked_store_degrades_and_recovers_by_itself(tmp_path: Path) -> None:
    config = LedgerConfig(
        checkpoint_seconds=0.1, storage_retry_seconds=0.05, storage_retry_max_seconds=0.5
    )
    ledger = Ledger(config, tmp_path, REGTEST)
    await ledger.open()
    who = creds(f"{ADDRESS}.rig")
    try:
        before = [share(who) for _ in range(5)]
        for result in before:
            await ledger.on_share(result, who, time.time(), None)
        await ledger.commit()
        # another connection takes the write lock (it waits for the store's open commit)
        holder = sqlite3.connect(tmp_path / "ledger.sqlite3", isolation_level=None, timeout=30)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            during = [share(who) for _ in range(7)]
            for result in during:  # the journal still takes them: acknowledged
                await ledger.on_share(result, who, time.time(), None)
            await wait_until(lambda: ledger.store.broken is not None, "the store degraded", 30)
            assert "database is locked" in (ledger.degraded or "")
            assert "still journaled and acknowledged" in (ledger.degraded or "")
            health = ledger.health()
            assert not health["ok"] and health["store_failures"] == 1
            # a block whose share never reached the journal, found meanwhile: kept
            lost = share(who, block_hash="00" * 4 + "ab" * 28)
            await ledger.block_submitted(
                lost, who, submission(SubmitStatus.ACCEPTED, lost), time.time()
            )
            assert len(ledger.unrecorded) == 1 and not ledger.health()["ok"]
            await ledger.on_share(share(who), who, time.time(), None)  # still acknowledged
        finally:
            with contextlib.suppress(sqlite3.Error):
                holder.execute("ROLLBACK")
            holder.close()
        await wait_until(
            lambda: ledger.store.broken is None and not ledger.unrecorded, "the recovery", 60
        )
        health = ledger.health()
        assert health["ok"] and health["store_recoveries"] == 1, health
        count = len(before) + len(during) + 1
        await wait_until(lambda: ledger.aggregates.shares == count, "the shares", 10)
        await ledger.commit()
        got = await stored(ledger)
        assert got["totals"]["shares"] == count
        assert got["blocks"] == {lost.hash_hex: "pending"}
    finally:
        await ledger.close()
    # a restart replays nothing twice: the store ends where the journal does
    again = Ledger(config, tmp_path, REGTEST)
    await again.open()
    try:
        assert (await again.store.run(Store.totals))["shares"] == count
    finally:
        await again.close()
