"""Faults of the managed bitcoind, caused for real on ``stratum-pool run`` processes.

(a) the pool is SIGKILLed: its bitcoind exits too (parent-death signal) and a new run on the
    same data dir starts with no hand;
(b) a bitcoind left running on the pool's data dir (started by hand, without the parent-death
    signal) is found and stopped cleanly, and the pool starts;
(c) bitcoind is SIGKILLed while miners are connected and kept down (its data dir's lock held,
    so every restart fails) for ``POOL_NODE_OUTAGE_SECONDS`` (default 120): the pool restarts it
    once the lock is free, no miner is disconnected, and every block found during the outage is
    accepted or reported with bitcoind's own reason once it is back.

Wall time: about 30 s for (a) and (b), the outage plus about 40 s for (c) (about 3 minutes in
all with the default outage).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pool.ledger.store import Store
from pool.node.binaries import Binaries
from pool.node.lifecycle import alive, leftover_of
from pool.node.managed import ManagedNode, free_port
from tests.integration.harness import wait_for
from tests.integration.test_ledger_crash import PoolProcess
from tests.reliability.node_harness import (
    ShareClient,
    events,
    named,
    node_datadir,
    node_pid,
    node_rpc,
    write_managed_config,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
OUTAGE_SECONDS = float(os.environ.get("POOL_NODE_OUTAGE_SECONDS", "120"))
SETTLED = {"block_submitted", "block_not_accepted", "block_stale"}


async def test_killed_pool_takes_its_node_along_and_the_next_run_starts(tmp_path: Path) -> None:
    port = free_port()
    data_dir = tmp_path / "pool"
    log = tmp_path / "pool.log"
    pool = PoolProcess(write_managed_config(tmp_path / "pool.toml", data_dir, port), port, log)
    await pool.start()
    try:
        pid = node_pid(data_dir)
        assert leftover_of(pid, node_datadir(data_dir)) is not None  # the pool's own node
        await pool.kill()
        await wait_for(lambda: not alive(pid), 60, "the node to exit with its pool")
        offset = log.stat().st_size
        await pool.start()  # no hand: the same data dir, the same command
        new_pid = node_pid(data_dir)
        assert new_pid != pid and alive(new_pid)
        # the node was gone already: nothing was left over
        assert not named(log, "bitcoind_leftover_found", since=offset)
        client = await ShareClient.connect(port, "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080.a")
        try:
            assert await client.submit_one()
        finally:
            await client.stop()
        await pool.terminate()
        assert not alive(new_pid)  # a clean stop takes the node along too
    finally:
        if pool.proc is not None and pool.proc.poll() is None:
            pool.proc.kill()


async def test_leftover_node_is_stopped_and_the_pool_starts(
    bitcoind_binaries: Binaries, tmp_path: Path
) -> None:
    port = free_port()
    data_dir = tmp_path / "pool"
    log = tmp_path / "pool.log"
    # A bitcoind on the pool's node data dir, as a pool that died without taking it leaves it.
    hand = ManagedNode(node_datadir(data_dir), binaries=bitcoind_binaries, die_with_parent=False)
    await hand.start()
    proc, hand.process = hand.process, None
    assert proc is not None
    if hand.rpc is not None:
        await hand.rpc.close()
    pool = PoolProcess(write_managed_config(tmp_path / "pool.toml", data_dir, port), port, log)
    try:
        await pool.start()
        assert await asyncio.to_thread(proc.wait, 60) == 0  # stopped cleanly, over RPC
        (found,) = named(log, "bitcoind_leftover_found")
        (stopped,) = named(log, "bitcoind_leftover_stopped")
        assert found["pid"] == stopped["pid"] == proc.pid
        assert stopped["how"] == "rpc_stop"
        assert alive(node_pid(data_dir))
        await pool.terminate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if pool.proc is not None and pool.proc.poll() is None:
            pool.proc.kill()


def start_miner(port: int, user: str, out: Path, hashrate: float) -> subprocess.Popen[bytes]:
    with out.open("wb") as f:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pool",
                "miner",
                "--url",
                f"stratum+tcp://127.0.0.1:{port}",
                "--user",
                user,
                "--hashrate",
                str(hashrate),
                "--duration",
                "900",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=f,
        )


def try_datadir_lock(datadir: Path) -> int | None:
    """Take the node data dir's lock (bitcoind's own ``fcntl`` lock on ``regtest/.lock``), as
    a stray process holding it would: every bitcoind started on the data dir exits at once
    ("Cannot obtain a lock on directory"). Returns the descriptor (closing it releases the
    lock), or None while another process has it."""
    fd = os.open(datadir / "regtest" / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


async def test_node_killed_and_kept_down_while_mining(tmp_path: Path) -> None:
    port = free_port()
    data_dir = tmp_path / "pool"
    log = tmp_path / "pool.log"
    config = write_managed_config(
        tmp_path / "pool.toml",
        data_dir,
        port,
        node={"restart_backoff_seconds": 5.0, "restart_backoff_max_seconds": 5.0},
    )
    pool = PoolProcess(config, port, log)
    await pool.start()
    rpc = node_rpc(data_dir, log)
    miner: subprocess.Popen[bytes] | None = None
    client: ShareClient | None = None
    holder: int | None = None
    try:
        worker = (await rpc.call("getnewaddress", "", "bech32", wallet="pool")) + ".probe"
        miner_out = tmp_path / "miner.err"
        miner = start_miner(port, worker.replace(".probe", ".rig"), miner_out, 10_000.0)
        client = await ShareClient.connect(port, worker)
        client.start(every=2.0)
        await wait_for(lambda: len(client.answers) >= 2, 60, "the probe's first shares")
        await wait_for(
            lambda: bool(named(log, "block_submitted")), 120, "a block accepted before the outage"
        )
        before = named(log, "block_submitted")[0]["hash"]
        height_before = await rpc.call("getblockcount")

        # The outage: SIGKILL, and the data dir's lock held so that every restart fails.
        pid = node_pid(data_dir)
        os.kill(pid, signal.SIGKILL)
        await wait_for(lambda: not alive(pid), 30, "the node to die")
        locks: list[int] = []

        def locked() -> bool:
            fd = try_datadir_lock(node_datadir(data_dir))
            if fd is not None:
                locks.append(fd)
            return bool(locks)

        await wait_for(locked, 4.0, "the dead node's data dir lock")  # restart is 5 s away
        holder = locks[0]
        assert not named(log, "bitcoind_restarted"), "the node came back before the lock was held"
        outage_start = log.stat().st_size
        started = time.monotonic()
        answers_before = len(client.answers)
        await asyncio.sleep(OUTAGE_SECONDS)  # the fault itself: the node stays down this long
        outage_end = log.stat().st_size
        os.close(holder)
        holder = None
        down = time.monotonic() - started

        assert named(log, "bitcoind_exited", since=outage_start) or named(log, "bitcoind_exited")
        failures = named(log, "bitcoind_restart_failed", since=outage_start, until=outage_end)
        assert failures, "the pool never tried to restart the node during the outage"
        await wait_for(
            lambda: bool(named(log, "bitcoind_restarted", since=outage_end)),
            120,
            "the pool to restart its node",
        )
        (restarted,) = named(log, "bitcoind_restarted", since=outage_end)
        assert restarted["restarts"] == 1

        found = [e["hash"] for e in named(log, "block_found", since=outage_start, until=outage_end)]
        assert found, "no block was found during the outage: the test proves nothing"

        def settled() -> dict[str, dict[str, object]]:
            return {
                e["hash"]: e
                for e in events(log, since=outage_start)
                if e.get("event") in SETTLED and e.get("hash") in found
            }

        await wait_for(lambda: len(settled()) == len(found), 120, "every outage block settled")
        outcomes = settled()
        # accepted, or bitcoind's own answer; never given up, never stale (the chain waited)
        for event in outcomes.values():
            assert event["status"] in {"accepted", "duplicate", "inconclusive", "rejected"}, event
            if event["status"] != "accepted":
                assert event["reason"], event
        accepted = [h for h, e in outcomes.items() if e["status"] == "accepted"]
        assert accepted
        for block_hash in accepted:
            header = await rpc.call("getblockheader", block_hash)
            assert header["confirmations"] >= 1
        assert await rpc.call("getblockcount") > height_before
        # a block accepted before the kill is on the chain again (the pool gives a restarted
        # node the blocks it may have lost with its unflushed state)
        assert (await rpc.call("getblockheader", before))["confirmations"] >= 1

        # Miners were never disconnected: the probe's one connection answered all along (also
        # during the outage), the miner never lost its connection.
        assert client.error is None, repr(client.error)
        assert sum(client.answers[answers_before:]) > 2  # accepted during and after the outage
        # (a share solved on a job a new block made stale between solving and sending is
        # refused as stale: the only refusal allowed)
        assert all("stale" in json.dumps(e).lower() for e in client.refusals), client.refusals
        assert "connection lost" not in miner_out.read_text()
        summary = {"outage_seconds": round(down, 1), "blocks": len(found)}
        summary["accepted"] = len(accepted)
        summary["restart_failures"] = len(failures)
        summary["restored"] = len(named(log, "block_restored"))
        print(json.dumps(summary))
    finally:
        if holder is not None:
            os.close(holder)
        if client is not None:
            await client.stop()
        if miner is not None and miner.poll() is None:
            miner.send_signal(signal.SIGINT)
            await asyncio.to_thread(miner.communicate, None, 30)
        await rpc.close()
        if pool.proc is not None and pool.proc.poll() is None:
            await pool.terminate()

    # The ledger never called an outage block orphaned or rejected unless bitcoind said so.
    store = Store(data_dir / "ledger" / "ledger.sqlite3")
    store.open()
    try:
        rows = {row["hash"]: row for row in store.blocks()}
    finally:
        store.close()
    for block_hash in accepted:
        assert rows[block_hash]["status"] in ("pending", "confirmed"), rows[block_hash]
