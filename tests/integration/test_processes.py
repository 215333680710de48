"""``stratum-pool run`` with ``server.processes = 2``: a supervisor, two Stratum worker processes
on one port (SO_REUSEPORT) and one managed regtest bitcoind, all real processes and sockets.

- connections land on both workers (told apart by the extranonce1 prefix, which carries
  ``pool.instance_id`` in its first byte and the worker index in the next bit);
- shares acknowledged by both are credited in the one store exactly once (each worker's own
  journal, ``journal-w<i>``, applied with its own checkpoint), SQLite and PostgreSQL;
- a TLS port is shared the same way (one self-signed pair, made once by the supervisor);
- SIGTERM drains both workers (miners asked to reconnect), then stops bitcoind; exit 0;
- SIGKILL of the supervisor takes the workers (which drain) and bitcoind with it.

Wall time: about 1 to 2 minutes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from pool.node.lifecycle import alive
from tests.integration.harness import RawClient, wait_for
from tests.integration.procs_harness import (
    ROOT,
    Miner,
    SupervisedPool,
    journaled,
    miners_on_every_process,
    process_of,
    store_shares,
    tls_extranonce1,
    write_config,
)
from tests.reliability.node_harness import named, node_pid

pytestmark = pytest.mark.integration

ADDRESSES = (
    "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080",
    "bcrt1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qzf4jry",
)
INSTANCE = 3


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_two_processes_share_a_port_and_credit_every_share_once(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    # PostgreSQL: a real server from the test harness (tests/pg_harness.py), skipped with its
    # reason where it cannot be installed
    dsn = request.getfixturevalue("pg_database") if backend == "postgresql" else ""
    data_dir = tmp_path / "pool"
    pin = backend == "sqlite"  # server.pin_workers: worker i on CPU i
    config = write_config(
        tmp_path / "pool.toml", data_dir, instance_id=INSTANCE, tls=True, dsn=dsn, pin=pin
    )
    pool = SupervisedPool(config, data_dir, tmp_path / "pool.log")
    await pool.start()
    miners: list[Miner] = []
    try:
        assert pool.started_workers() == {"w0", "w1"}
        # limits.max_connections (10 000) is the pool's total: each worker holds half
        assert named(pool.log, "limits_per_worker")[-1]["max_connections"] == 5000
        worker_limits = {
            e["worker"]: e["max_connections"] for e in named(pool.log, "limits") if "worker" in e
        }
        assert worker_limits == {"w0": 5000, "w1": 5000}
        statuses = pool.workers()
        assert [w["journal_id"] for w in statuses] == ["w0", "w1"]
        assert all(w["running"] and alive(w["pid"]) for w in statuses)
        cpus = sorted(os.sched_getaffinity(0))
        for i, w in enumerate(statuses):
            want = {cpus[i % len(cpus)]} if pin else set(cpus)
            assert os.sched_getaffinity(w["pid"]) == want, (i, w)
        miners = await miners_on_every_process(pool.port, f"{ADDRESSES[0]}.", per_process=2)
        miners[-1].worker = f"{ADDRESSES[1]}.m-last"  # a second address (same connection)
        await _authorize(miners[-1])
        for miner in miners:
            assert miner.extranonce1[0] == INSTANCE  # the instance's byte first
        assert Counter(process_of(m.extranonce1) for m in miners) == {0: 2, 1: 2}
        assert len({m.extranonce1 for m in miners}) == len(miners)
        # the TLS port too: one self-signed pair (made by the supervisor), both workers
        tls_seen = set()
        for _ in range(32):
            en1 = await tls_extranonce1(pool.ports[1])
            assert en1[0] == INSTANCE
            tls_seen.add(process_of(en1))
            if tls_seen == {0, 1}:
                break
        assert tls_seen == {0, 1}
        for miner in miners:
            miner.start(every=0.3)
        await wait_for(
            lambda: all(len(m.accepted) >= 5 for m in miners),
            180,
            "five acknowledged shares from every miner",
            lambda: [(len(m.accepted), m.answers, repr(m.error)) for m in miners],
        )
        for miner in miners:
            assert miner.error is None, miner.error
        # the lead (worker 0) serves the API; its port is the one the supervisor chose
        assert pool.api_port and named(pool.log, "api_listening")[-1]["worker"] == "w0"
        offset = pool.log.stat().st_size
        bitcoind = node_pid(data_dir)
        assert await pool.terminate() == 0, pool.tail()
        await wait_for(
            lambda: all(m.error is not None for m in miners), 30, "every miner disconnected"
        )
        assert all(m.reconnect_asked for m in miners)  # drained: asked to come back
    finally:
        for miner in miners:
            await miner.stop()
        pool.kill_all()
    stopped = {e["worker"] for e in named(pool.log, "pool_stopped", since=offset)}
    assert stopped == {"w0", "w1"}
    assert named(pool.log, "bitcoind_stopped", since=offset)
    assert not alive(bitcoind)

    ledger = data_dir / "ledger"
    identities, per_journal = journaled(ledger)
    assert sorted(per_journal) == ["journal-w0", "journal-w1"]
    assert all(per_journal.values())  # both workers journaled shares
    told = [s for m in miners for s in m.accepted]
    assert set(told) <= set(identities)  # every acknowledged share is journaled...
    assert max(identities.values()) == 1  # ...once
    credited = store_shares(ledger, dsn)
    journal_workers = Counter(r["worker"] for rs in per_journal.values() for r in rs)
    assert credited == dict(journal_workers)  # the store credited each record exactly once
    for miner in miners:  # nothing acknowledged missing, nothing in flight at the drain
        assert credited[miner.worker] == len(miner.accepted)


async def _authorize(miner: Miner) -> None:
    client: RawClient = miner.client
    client.send(3, "mining.authorize", [miner.worker, "x"])
    answer = await client.response(3)
    assert answer["result"] is True, answer


def test_processes_refuse_bad_counts(tmp_path: Path) -> None:
    """(Several processes with the simulated chain share its state through the store:
    tests/integration/test_chain_sim_processes.py.)"""
    plain = write_config(tmp_path / "plain.toml", tmp_path / "data")
    for config, extra, expected in (
        (plain, ["--processes", "65"], "server.processes must be 1..64"),
        (plain, ["--processes", "0"], "server.processes must be 1..64"),
    ):
        run = subprocess.run(
            [sys.executable, "-m", "pool", "run", "--config", str(config), *extra],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 2, run.stderr
        assert expected in run.stderr and "server.processes" in run.stderr, run.stderr
    assert not (tmp_path / "data").exists()  # refused before anything started


async def test_workers_and_bitcoind_die_with_a_killed_supervisor(tmp_path: Path) -> None:
    """SIGKILL of the supervisor (no drain of its own): the parent-death signal (SIGTERM)
    takes every worker, which drains itself (journal committed and closed), and the managed
    bitcoind."""
    data_dir = tmp_path / "pool"
    log = tmp_path / "pool.log"
    pool = SupervisedPool(write_config(tmp_path / "pool.toml", data_dir, api=False), data_dir, log)
    await pool.start()
    try:
        workers = [int(w["pid"]) for w in pool.workers()]
        bitcoind = node_pid(data_dir)
        assert all(alive(p) for p in [*workers, bitcoind])
        offset = log.stat().st_size
        assert pool.proc is not None
        pool.proc.kill()
        pool.proc.wait(30)
        await wait_for(lambda: not any(alive(p) for p in workers), 90, "the workers gone")
        await wait_for(lambda: not alive(bitcoind), 90, "bitcoind gone")
    finally:
        pool.kill_all()
    drained = {e["worker"] for e in named(log, "ledger_closed", since=offset)}
    assert drained == {"w0", "w1"}
