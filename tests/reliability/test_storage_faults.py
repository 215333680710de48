"""Storage faults caused for real while real miners mine on a real regtest bitcoind.

The pool runs as ``stratum-pool run`` (a process of its own) with its ledger directory on a
small tmpfs; bundled-miner processes record every answer (``--record``). Faults:

* disk full for 30 s (the tmpfs filled up to the last byte): /healthz 503 during, 200 after,
  shares acknowledged again with no restart, every block found meanwhile in the store;
* a read-only journal directory (``chattr +i``) while mining: the same, without a restart;
* another process holding SQLite's write lock (``BEGIN EXCLUSIVE``) for 10 s: the store
  resumes by itself and ends with every journaled share;
* a start with a read-only journal directory: one clear error naming the path;
* a found block missing from the store: found again on the chain at the next start.

After each: 0 acknowledged shares lost (every share a miner was told "accepted" is in the
journal, once) and the store credits exactly the journal. Skipped, with the reason shown,
where a tmpfs cannot be mounted or ``chattr`` is missing. Wall time: about 3-4 minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from pool.ledger.journal_read import read_records
from pool.ledger.store import Store
from pool.node.binaries import Binaries
from pool.node.managed import ManagedNode, free_port
from tests.integration.harness import (
    journal_identity,
    own_node,
    pool_toml,
    told_accepted,
    wallet_address,
)
from tests.integration.test_ledger_crash import PoolProcess, start_miner

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TAG = "/stratum-pool/"
FAULT_SECONDS = 30.0


@pytest_asyncio.fixture(scope="module")
async def node(
    bitcoind_binaries: Binaries, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ManagedNode]:
    async with own_node(bitcoind_binaries, tmp_path_factory.mktemp("bitcoind-storage")) as n:
        yield n


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (skips the test when that is not possible)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (root and mount needed): {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-R", "-i", str(path)], capture_output=True, check=False)
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def need_chattr() -> None:
    if shutil.which("chattr") is None:
        pytest.skip("chattr (e2fsprogs) is not installed")


def chattr(flag: str, path: Path) -> None:
    done = subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"chattr {flag} does not work here: {done.stderr.strip()}")


def unfreeze(path: Path) -> None:
    subprocess.run(["chattr", "-i", str(path)], capture_output=True, check=False)


def run_pool(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pool", "run", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
        check=False,
    )


def write_config(path: Path, node: ManagedNode, data_dir: Path, payout: str, port: int) -> int:
    api_port = free_port()
    extra: dict[str, dict[str, Any]] = {
        "pool": {"pool_tag": TAG},
        "api": {"enabled": True, "host": "127.0.0.1", "port": api_port},
        "chain.simulation": {
            "enabled": True,
            "initial_difficulty": 0.00005,
            "retarget_interval": 100000,
        },
        "ledger": {
            "fee_bps": 100,
            "payout_interval_seconds": 0,
            "journal_segment_bytes": 65536,
            "storage_retry_seconds": 0.2,
            "storage_retry_max_seconds": 2.0,
            "block_check_seconds": 2.0,
        },
    }
    path.write_text(pool_toml(data_dir, port, node=node, payout=payout, extra=extra))
    return api_port


class Rig:
    """A pool process, its API and two recording miners."""

    def __init__(self, node: ManagedNode, tmp: Path, data_dir: Path) -> None:
        self.node, self.tmp, self.data_dir = node, tmp, data_dir
        self.port = free_port()
        self.records = [tmp / f"miner{i}.jsonl" for i in range(2)]
        self.miners: list[subprocess.Popen[bytes]] = []
        self.pool: PoolProcess | None = None
        self.api_port = 0
        self.payout = ""

    async def start(self) -> None:
        self.payout = await wallet_address(self.node, "pool")
        config = self.tmp / "pool.toml"
        self.api_port = write_config(config, self.node, self.data_dir, self.payout, self.port)
        self.pool = PoolProcess(config, self.port, self.tmp / "pool.log")
        await self.pool.start()

    async def start_miners(self) -> None:
        for i, record in enumerate(self.records):
            address = await wallet_address(self.node, "miners")
            self.miners.append(start_miner(self.port, f"{address}.w{i}", record, 40_000.0))

    async def health(self) -> tuple[int, dict[str, Any]]:
        url = f"http://127.0.0.1:{self.api_port}/healthz"
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            return resp.status, await resp.json()

    async def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.api_port}/metrics"
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            return await resp.text()

    def answers(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for record in self.records:
            if record.exists():
                out += [json.loads(line) for line in record.read_text().splitlines() if line]
        return out

    async def stop(self) -> None:
        for m in self.miners:
            if m.poll() is None:
                m.send_signal(signal.SIGINT)
        for m in self.miners:
            with contextlib.suppress(subprocess.TimeoutExpired):
                m.communicate(timeout=30)
            if m.poll() is None:
                m.kill()
        if self.pool is not None and self.pool.proc is not None and self.pool.proc.poll() is None:
            await self.pool.terminate()

    def kill_all(self) -> None:
        for m in self.miners:
            if m.poll() is None:
                m.kill()
        if self.pool is not None and self.pool.proc is not None and self.pool.proc.poll() is None:
            self.pool.proc.kill()

    def log_events(self) -> list[dict[str, Any]]:
        out = []
        for line in (self.tmp / "pool.log").read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out


async def until(
    what: str, check: Callable[[], Any], timeout: float, seen: Callable[[], object] = lambda: None
) -> Any:
    """Poll ``check`` (sync or async) until it returns something true."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; saw {seen()!r}")
        await asyncio.sleep(0.2)


async def healthy(rig: Rig) -> bool:
    status, _ = await rig.health()
    return status == 200


def accepted_count(rig: Rig) -> int:
    return sum(1 for a in rig.answers() if a["accepted"])


def check_books(rig: Rig) -> dict[str, Any]:
    """0 acknowledged shares lost, none twice; the store credits exactly the journal."""
    ledger = rig.data_dir / "ledger"
    journal = [rec for _, rec in read_records(ledger / "journal")]
    identities = Counter(journal_identity(r) for r in journal)
    told = [s for f in rig.records if f.exists() for s in told_accepted(f)]
    assert told, "no share was ever acknowledged"
    assert set(told) <= set(identities), "an acknowledged share is missing from the journal"
    assert max(identities.values()) == 1
    store = Store(ledger / "ledger.sqlite3")
    store.open()
    try:
        totals = store.totals()
        blocks = {b["hash"]: b for b in store.blocks()}
    finally:
        store.close()
    assert totals["shares"] == len(journal)
    assert totals["credit_units"] == sum(r["credit"] for r in journal)
    return {"told": len(told), "journal": len(journal), "blocks": blocks}


async def pool_blocks(rig: Rig, first: int, last: int) -> list[str]:
    """The blocks at heights first..last whose coinbase is the pool's (tag + payout)."""
    rpc = rig.node.rpc
    assert rpc is not None
    found = []
    for height in range(first, last + 1):
        block = await rpc.call("getblock", await rpc.call("getblockhash", height), 2)
        coinbase = block["tx"][0]
        if TAG.encode().hex() in coinbase["vin"][0]["coinbase"] and any(
            out["scriptPubKey"].get("address") == rig.payout for out in coinbase["vout"]
        ):
            found.append(block["hash"])
    return found


async def height(rig: Rig) -> int:
    assert rig.node.rpc is not None
    return int(await rig.node.rpc.call("getblockcount"))


async def ride_out_a_fault(
    rig: Rig, inject: Callable[[], None], clear: Callable[[], None], reason: str
) -> dict[str, Any]:
    """Mine, cause the fault for FAULT_SECONDS, clear it; the figures seen."""
    await rig.start_miners()
    await until("shares acknowledged", lambda: accepted_count(rig) >= 20, 120)
    await until("a healthy pool", lambda: healthy(rig), 60)
    h0, t0 = await height(rig), time.monotonic()
    inject()
    _, body = await until(f"/healthz 503 saying {reason!r}", lambda: _unhealthy(rig, reason), 120)
    assert not body["checks"]["ledger"]["ok"], body
    assert "pool_ledger_degraded 1" in await rig.metrics()
    refused_before = sum(1 for a in rig.answers() if not a["accepted"])
    statuses = []
    while time.monotonic() - t0 < FAULT_SECONDS:
        statuses.append((await rig.health())[0])
        await asyncio.sleep(1.0)
    refused = sum(1 for a in rig.answers() if not a["accepted"]) - refused_before
    h1 = await height(rig)
    clear()
    t1 = time.monotonic()
    await until("/healthz 200 after the fault", lambda: healthy(rig), 120, lambda: statuses[-3:])
    recovered_in = time.monotonic() - t1
    after = accepted_count(rig)
    await until("shares acknowledged again", lambda: accepted_count(rig) >= after + 10, 120)
    assert "pool_ledger_degraded 0" in await rig.metrics()
    await rig.stop()
    books = check_books(rig)
    during = await pool_blocks(rig, h0 + 1, h1)
    missing = [h for h in during if h not in books["blocks"]]
    assert not missing, f"blocks found during the fault are not in the store: {missing}"
    return {
        "statuses_during": Counter(statuses),
        "refused_during": refused,
        "blocks_during": len(during),
        "recovered_seconds": round(recovered_in, 2),
        "told_accepted": books["told"],
    }


async def _unhealthy(rig: Rig, reason: str) -> tuple[int, dict[str, Any]] | None:
    """The 503 of a degraded ledger whose reasons say ``reason``."""
    status, body = await rig.health()
    if status != 503 or body["checks"]["ledger"]["ok"]:
        return None
    return (status, body) if any(reason in r for r in body["reasons"]) else None


def fill(path: Path) -> None:
    """Write until the file system is full (ENOSPC), to the last byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for size in (1 << 20, 65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\xff" * size)
    finally:
        os.close(fd)


async def test_disk_full_for_30_seconds_while_mining(node: ManagedNode, tmp_path: Path) -> None:
    data_dir = tmp_path / "pool"
    with tmpfs(data_dir / "ledger", "16m") as ledger:
        rig = Rig(node, tmp_path, data_dir)
        filler = ledger / "filler"
        try:
            await rig.start()
            figures = await ride_out_a_fault(
                rig, lambda: fill(filler), filler.unlink, "shares are refused"
            )
        finally:
            rig.kill_all()
    print("disk full:", figures)
    assert figures["statuses_during"][200] == 0, figures
    assert figures["refused_during"] > 0, figures
    assert figures["blocks_during"] >= 1, f"no block found during the fault: {figures}"
    events = [e["event"] for e in rig.log_events()]
    assert "journal_degraded" in events and "journal_recovered" in events
    assert events.count("ledger_opened") == 1  # never restarted


async def test_read_only_journal_directory_while_mining(node: ManagedNode, tmp_path: Path) -> None:
    need_chattr()
    data_dir = tmp_path / "pool"
    with tmpfs(data_dir / "ledger", "64m") as ledger:
        rig = Rig(node, tmp_path, data_dir)
        journal = ledger / "journal"
        try:
            await rig.start()
            chattr("+i", journal)  # works here? (then undone until the fault)
            chattr("-i", journal)
            figures = await ride_out_a_fault(
                rig,
                lambda: chattr("+i", journal),
                lambda: chattr("-i", journal),
                "shares are refused",
            )
        finally:
            unfreeze(journal)
            rig.kill_all()
    print("read-only journal:", figures)
    assert figures["refused_during"] > 0, figures
    events = [e["event"] for e in rig.log_events()]
    assert "journal_recovered" in events and events.count("ledger_opened") == 1


async def test_sqlite_locked_by_another_process_for_10_seconds(
    node: ManagedNode, tmp_path: Path
) -> None:
    data_dir = tmp_path / "pool"
    rig = Rig(node, tmp_path, data_dir)
    try:
        await rig.start()
        await rig.start_miners()
        await until("shares acknowledged", lambda: accepted_count(rig) >= 20, 120)
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sqlite3, sys, time\n"
                "db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)\n"
                "db.execute('BEGIN EXCLUSIVE')\n"
                "print('locked', flush=True)\n"
                "time.sleep(float(sys.argv[2]))\n"
                "db.execute('ROLLBACK')\n",
                str(data_dir / "ledger" / "ledger.sqlite3"),
                "10",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        await until("the store degraded", lambda: _unhealthy(rig, "database is locked"), 60)
        acked_while_locked = accepted_count(rig)
        assert holder.wait(timeout=60) == 0
        await until("/healthz 200 after the lock", lambda: healthy(rig), 60)
        recovered = time.monotonic() - t0
        assert accepted_count(rig) > acked_while_locked  # the journal kept acknowledging
        await rig.stop()
    finally:
        rig.kill_all()
    books = check_books(rig)
    events = [e["event"] for e in rig.log_events()]
    assert "ledger_store_degraded" in events and "ledger_store_recovered" in events
    assert events.count("ledger_opened") == 1
    print(
        "sqlite lock: recovered",
        round(recovered, 2),
        "s after the lock was taken;",
        {"told": books["told"], "journal": books["journal"], "blocks": len(books["blocks"])},
    )


async def test_start_with_a_read_only_journal_directory_is_a_clear_error(
    node: ManagedNode, tmp_path: Path
) -> None:
    need_chattr()
    data_dir = tmp_path / "pool"
    journal = data_dir / "ledger" / "journal"
    journal.mkdir(parents=True)
    payout = await wallet_address(node, "pool")
    config = tmp_path / "pool.toml"
    write_config(config, node, data_dir, payout, free_port())
    chattr("+i", journal)
    try:
        done = await asyncio.to_thread(run_pool, config)
    finally:
        chattr("-i", journal)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    [line] = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert str(journal) in line and "writable" in line, line


async def test_a_block_missing_from_the_store_is_found_again_on_the_chain(
    node: ManagedNode, tmp_path: Path
) -> None:
    data_dir = tmp_path / "pool"
    rig = Rig(node, tmp_path, data_dir)
    store_path = data_dir / "ledger" / "ledger.sqlite3"

    def stored_blocks() -> dict[str, str]:
        if not store_path.exists():
            return {}
        with contextlib.closing(sqlite3.connect(store_path)) as db:
            return dict(db.execute("SELECT hash, status FROM blocks").fetchall())

    try:
        await rig.start()
        await rig.start_miners()
        await until("a block recorded", stored_blocks, 180)
        for m in rig.miners:
            m.send_signal(signal.SIGINT)
            m.communicate(timeout=30)
        assert rig.pool is not None
        await rig.pool.terminate()
        blocks = stored_blocks()
        with contextlib.closing(sqlite3.connect(store_path)) as db:
            db.execute("DELETE FROM blocks")  # lost: as if never recorded
            db.commit()
        assert stored_blocks() == {}
        await rig.pool.start()
        await until("/healthz 200", lambda: healthy(rig), 60)
        again = stored_blocks()
        await rig.pool.terminate()
    finally:
        rig.kill_all()
    assert set(blocks) <= set(again), (blocks, again)
    found = [e for e in rig.log_events() if e["event"] == "block_found_on_chain"]
    assert {e["hash"] for e in found} == set(blocks) and len(found) == len(blocks)
    print("reconciled:", len(found), "block(s) found again on the chain")
