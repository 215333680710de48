"""SIGKILL of one worker process of ``stratum-pool run --processes 2`` under load, twice (the
second worker, then the lead): the other worker keeps serving its miners, the supervisor
starts the killed one again (it replays its own journal first), and no acknowledged share is
lost or credited twice: every share a miner was told was accepted is in a journal once, and
the one store credits every journal record exactly once. The payout lock of a killed holder
is taken again (by the other worker or by the restarted one, whichever asks first).

Real processes, sockets and bitcoind (the pool's managed one); the miners are the test's own
Stratum connections, counting their acknowledged shares. With the SQLite store and with a
real PostgreSQL (tests/pg_harness.py). Wall time: about 1 to 2 minutes per backend.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from pool.node.lifecycle import alive
from tests.integration.harness import wait_for
from tests.integration.procs_harness import (
    Miner,
    SupervisedPool,
    journaled,
    miners_on_every_process,
    open_store,
    process_of,
    store_shares,
    write_config,
)
from tests.reliability.node_harness import named

pytestmark = pytest.mark.integration

ADDRESS = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"


async def _kill_one(pool: SupervisedPool, miners: list[Miner], victim: int, restarts: int) -> None:
    """SIGKILL worker ``victim`` while every miner submits; the survivor's miners keep getting
    answers; the victim is started again (a new pid, its own ``pool_started``)."""
    status = pool.workers()[victim]
    name, pid = status["journal_id"], status["pid"]
    offset = pool.log.stat().st_size
    survivors = [m for m in miners if process_of(m.extranonce1) != victim]
    victims = [m for m in miners if process_of(m.extranonce1) == victim]
    before = {id(m): len(m.accepted) for m in survivors}
    taken = named(pool.log, "payout_runner_taken")
    runner = taken[-1].get("worker") if taken else None
    os.kill(pid, signal.SIGKILL)
    await wait_for(
        lambda: all(m.error is not None for m in victims), 60, f"{name}'s miners cut off"
    )
    await wait_for(
        lambda: all(len(m.accepted) >= before[id(m)] + 5 for m in survivors),
        120,
        "the other worker's miners served on",
        lambda: [(len(m.accepted), repr(m.error)) for m in survivors],
    )
    await wait_for(
        lambda: name in pool.started_workers(offset), 120, f"{name} started again", pool.tail
    )
    assert all(m.error is None for m in survivors), [m.error for m in survivors]
    after = pool.workers()[victim]
    assert after["restarts"] == restarts and after["pid"] != pid and after["running"]
    assert not alive(pid)
    exited = [e for e in named(pool.log, "worker_exited", since=offset) if e["worker"] == name]
    assert exited and exited[0]["signal"] == "SIGKILL"
    opened = [e for e in named(pool.log, "ledger_opened", since=offset) if e["worker"] == name]
    assert opened, "the restarted worker opened its ledger (replaying its own journal)"
    if runner == name:  # it held the payout lock: the lock is taken again
        await wait_for(
            lambda: bool(named(pool.log, "payout_runner_taken", since=offset)),
            120,
            "the payout lock taken over",
        )


async def _metrics(port: int) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        assert resp.status == 200
        return await resp.text()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_sigkill_of_a_worker_under_load_loses_no_acknowledged_share(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    # PostgreSQL: a real server from the test harness, skipped with its reason where it
    # cannot be installed
    dsn = request.getfixturevalue("pg_database") if backend == "postgresql" else ""
    data_dir = tmp_path / "pool"
    config = write_config(tmp_path / "pool.toml", data_dir, dsn=dsn)
    pool = SupervisedPool(config, data_dir, tmp_path / "pool.log")
    await pool.start()
    everyone: list[Miner] = []
    try:
        for round_, victim in enumerate((1, 0)):
            miners = await miners_on_every_process(
                pool.port, f"{ADDRESS}.r{round_}-", per_process=3
            )
            everyone += miners
            for miner in miners:
                miner.start(every=0.2)
            await wait_for(
                lambda: all(len(m.accepted) >= 3 for m in miners),  # noqa: B023
                120,
                "acknowledged shares from every miner",
            )
            await _kill_one(pool, miners, victim, restarts=1)
            for miner in miners:
                await miner.stop()
        # both restarted workers serve again
        last = await miners_on_every_process(pool.port, f"{ADDRESS}.after-", per_process=2)
        everyone += last
        for miner in last:
            miner.start(every=0.2)
        await wait_for(
            lambda: all(len(m.accepted) >= 3 for m in last), 120, "shares after the restarts"
        )
        for miner in last:
            await miner.stop()
        metrics = await _metrics(pool.api_port)  # the lead's API, back after its restart
        for name in ("w0", "w1"):
            assert f'stratum_pool_worker_process_restarts_total{{worker="{name}"}} 1' in metrics
            assert f'stratum_pool_worker_process_up{{worker="{name}"}} 1' in metrics
        assert await pool.terminate() == 0, pool.tail()
    finally:
        for miner in everyone:
            await miner.stop()
        pool.kill_all()

    ledger = data_dir / "ledger"
    identities, per_journal = journaled(ledger)
    told = [s for m in everyone for s in m.accepted]
    assert len(told) >= 60
    assert set(told) <= set(identities), "an acknowledged share is missing from the journals"
    assert max(identities.values()) == 1
    credited = store_shares(ledger, dsn)
    journal_workers = Counter(r["worker"] for rs in per_journal.values() for r in rs)
    assert credited == dict(journal_workers), "the store credits each journal record once"
    for miner in everyone:
        # at most the one share in flight when its worker was killed is journaled unanswered
        assert 0 <= credited.get(miner.worker, 0) - len(miner.accepted) <= 1, miner.worker
    text = pool.log.read_text()
    assert '"shares_not_recorded"' not in text
    assert text.count('"payout_runner_taken"') >= 1
    store = open_store(ledger, dsn)
    try:  # both workers' heartbeats in the store (whole-pool views)
        assert {(p["instance_id"], p["process"]) for p in store.processes()} == {
            (0, "w0"),
            (0, "w1"),
        }
    finally:
        store.close()
