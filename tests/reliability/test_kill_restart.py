"""kill -9 of ``stratum-pool run`` (managed bitcoind) under load, then ``stratum-pool run`` on
the same data dir, 10 times, half of them right after a block: every run starts with no hand
(the killed pool's node exits with it, or is stopped as a leftover), no acknowledged share is
lost or credited twice, and every block bitcoind accepted is in the store and not orphaned.

The miners are bundled-miner processes recording every answer (``--record``), as in
tests/integration/test_ledger_crash.py (whose pool-process helpers this reuses); here the node
is the pool's own managed bitcoind. Wall time: about 1 to 2 minutes.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from pool.ledger.journal_read import read_records
from pool.ledger.store import Store
from pool.node.lifecycle import alive, find_leftovers
from pool.node.managed import free_port
from tests.integration.harness import journal_identity, told_accepted, wait_for
from tests.integration.test_ledger_crash import PoolProcess, start_miner
from tests.reliability.node_harness import named, node_datadir, node_pid, write_managed_config

pytestmark = pytest.mark.integration

KILLS = 10
MINER_ADDRESSES = (
    "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080",
    "bcrt1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qzf4jry",
)


async def test_kill_9_under_load_ten_times_restarts_without_a_hand(tmp_path: Path) -> None:
    rng = random.Random(int(time.time()))
    seed_note = f"kill moments seeded from {rng.random():.6f}"
    port = free_port()
    data_dir = tmp_path / "pool"
    log = tmp_path / "pool.log"
    config = write_managed_config(tmp_path / "pool.toml", data_dir, port, sim_difficulty=5e-5)
    pool = PoolProcess(config, port, log)
    await pool.start()
    records = [tmp_path / f"miner{i}.jsonl" for i in range(2)]
    miners = [
        start_miner(port, f"{address}.w{i}", records[i], 60_000.0)
        for i, address in enumerate(MINER_ADDRESSES)
    ]
    after_block = 0
    node_pids: list[int] = []
    try:
        for kill in range(KILLS):
            node_pids.append(node_pid(data_dir))
            if kill % 2:  # right after a block: the moment bitcoind accepted one of ours
                offset = log.stat().st_size
                await wait_for(
                    lambda: bool(named(log, "block_submitted", since=offset)),  # noqa: B023
                    120,
                    "a block to kill the pool right after",
                )
                after_block += 1
            else:
                await asyncio.sleep(rng.uniform(1.0, 3.0))  # a random moment under load
            await pool.kill()
            await pool.start()  # the same command on the same data dir: no hand
        await asyncio.sleep(2.0)
        for m in miners:
            m.send_signal(signal.SIGINT)
        summaries = [json.loads(m.communicate(timeout=30)[0].splitlines()[-1]) for m in miners]
        final_pid = node_pid(data_dir)
        await pool.terminate()
    finally:
        for m in miners:
            if m.poll() is None:
                m.kill()
        if pool.proc is not None and pool.proc.poll() is None:
            pool.proc.kill()

    # Every node of a killed pool is gone, and so is the last one after the clean stop.
    assert not [pid for pid in [*node_pids, final_pid] if alive(pid)]
    assert find_leftovers(node_datadir(data_dir)) == []
    assert after_block == KILLS // 2

    journal = [rec for _, rec in read_records(data_dir / "ledger" / "journal")]
    identities = Counter(journal_identity(r) for r in journal)
    told = [s for f in records for s in told_accepted(f)]
    assert sum(s["accepted"] for s in summaries) == len(told)
    assert len(told) >= 100, (summaries, seed_note)
    assert set(told) <= set(identities), seed_note  # 0 acknowledged shares lost
    assert max(identities.values()) == 1, seed_note
    store = Store(data_dir / "ledger" / "ledger.sqlite3")
    store.open()
    try:
        totals = store.totals()
        assert totals["shares"] == len(journal), seed_note
        assert totals["credit_units"] == sum(r["credit"] for r in journal), seed_note
        blocks = {row["hash"]: row for row in store.blocks()}
    finally:
        store.close()
    accepted = {e["hash"] for e in named(log, "block_submitted") if e["status"] == "accepted"}
    assert len(accepted) >= KILLS // 2
    for block_hash in accepted:  # no block bitcoind took is missing or called orphaned
        assert blocks[block_hash]["status"] in ("pending", "confirmed"), blocks[block_hash]
    log_text = log.read_text()
    assert log_text.count('"pool_started"') == KILLS + 1
    print(
        json.dumps(
            {
                "kills": KILLS,
                "after_block": after_block,
                "told_accepted": len(told),
                "lost": len(set(told) - set(identities)),
                "blocks_accepted": len(accepted),
                "leftovers_stopped": log_text.count('"bitcoind_leftover_stopped"'),
            }
        )
    )
