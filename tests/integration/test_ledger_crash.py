"""Crash safety with real crashes: ``stratum-pool run`` is SIGKILLed under load and restarted.

The miners are bundled-miner processes that record every answer they got (``--record``). After
each restart the pool replays its journal past the store's checkpoint; at the end every share a
miner was told "accepted" must be credited exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

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
    wait_for,
    wallet_address,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest_asyncio.fixture(scope="module")
async def crash_node(
    bitcoind_binaries: Binaries, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ManagedNode]:
    async with own_node(bitcoind_binaries, tmp_path_factory.mktemp("bitcoind-crash")) as node:
        yield node


def write_config(
    path: Path, node: ManagedNode, data_dir: Path, payout: str, port: int, **ledger: Any
) -> Path:
    extra = {
        "chain.simulation": {"enabled": True, "initial_difficulty": 0.001},
        "ledger": {"fee_bps": 100, **ledger},
    }
    path.write_text(pool_toml(data_dir, port, node=node, payout=payout, extra=extra))
    return path


class PoolProcess:
    def __init__(self, config: Path, port: int, log: Path, env: dict[str, str] | None = None):
        self.config = config
        self.port = port
        self.log = log
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pool", "run", "--config", str(self.config)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
        )
        out.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"pool exited with {self.proc.returncode}: {self.tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                await asyncio.sleep(0.1)
        raise AssertionError(f"pool did not listen on {self.port} in 60 s: {self.tail()}")

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])

    async def wait(self, timeout: float = 60) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"pool did not exit in {timeout} s: {self.tail()}")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert await self.wait() == -signal.SIGKILL

    async def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        assert await self.wait() == 0, self.tail()


def start_miner(port: int, user: str, record: Path, hashrate: float) -> subprocess.Popen[bytes]:
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
            "--record",
            str(record),
            "--duration",
            "600",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )


async def test_sigkill_under_load_loses_nothing_and_credits_once(
    crash_node: ManagedNode, tmp_path: Path
) -> None:
    rng = random.Random(int(time.time()))  # random moments; the seed is in the failure output
    seed_note = f"kill moments seeded from {rng.random():.6f}"
    port = free_port()
    payout = await wallet_address(crash_node, "pool")
    data_dir = tmp_path / "pool"
    config = write_config(
        tmp_path / "pool.toml", crash_node, data_dir, payout, port, payout_interval_seconds=0
    )
    pool = PoolProcess(config, port, tmp_path / "pool.log")
    await pool.start()
    addresses = [await wallet_address(crash_node, "miners") for _ in range(2)]
    records = [tmp_path / f"miner{i}.jsonl" for i in range(2)]
    miners = [start_miner(port, f"{addresses[i]}.w{i}", records[i], 60_000.0) for i in range(2)]
    try:
        kills = 4

        def acknowledged() -> int:
            """Shares the miners were told were accepted so far (complete lines only)."""
            n = 0
            for f in records:
                with contextlib.suppress(FileNotFoundError):
                    lines = f.read_text().split("\n")[:-1]  # the last one may be partial
                    n += sum(1 for line in lines if json.loads(line)["accepted"])
            return n

        def grown_by(count: int, since: int) -> Callable[[], bool]:
            return lambda: acknowledged() >= since + count

        for _ in range(kills):
            # a random moment, once the miners have had shares acknowledged by this run (a
            # busy machine slows them: wait on that, not on the clock alone)
            before = acknowledged()
            await asyncio.sleep(rng.uniform(1.5, 4.0))
            await wait_for(grown_by(10, before), 120, "10 more acknowledged shares")
            await pool.kill()
            await pool.start()
        await asyncio.sleep(3.0)
        await wait_for(lambda: acknowledged() >= 50, 120, "50 acknowledged shares in all")
        for m in miners:
            m.send_signal(signal.SIGINT)
        summaries = [json.loads(m.communicate(timeout=30)[0].splitlines()[-1]) for m in miners]
        await pool.terminate()
    finally:
        for m in miners:
            if m.poll() is None:
                m.kill()
        if pool.proc is not None and pool.proc.poll() is None:
            pool.proc.kill()

    journal = [rec for _, rec in read_records(data_dir / "ledger" / "journal")]
    identities = Counter(journal_identity(r) for r in journal)
    told = [s for f in records for s in told_accepted(f)]
    assert sum(s["accepted"] for s in summaries) == len(told)
    assert len(told) >= 50, (summaries, seed_note)
    # Nothing acknowledged is lost, nothing is journaled twice...
    assert set(told) <= set(identities), seed_note
    assert max(identities.values()) == 1, seed_note
    # ...and the store credited every journal record exactly once across 4 crashes.
    store = Store(data_dir / "ledger" / "ledger.sqlite3")
    store.open()
    try:
        totals = store.totals()
        assert totals["shares"] == len(journal), seed_note
        assert totals["credit_units"] == sum(r["credit"] for r in journal), seed_note
        for address in addresses:
            balance = store.balance(address)
            assert balance is not None
            assert balance.credited_units == sum(
                r["credit"] for r in journal if r["address"] == address
            )
    finally:
        store.close()
    log_text = (tmp_path / "pool.log").read_text()
    assert log_text.count('"ledger_opened"') == kills + 1
    assert '"shares_not_recorded"' not in log_text  # the journal never refused a share


@pytest.mark.parametrize("crash_at", ["payout_before_send", "payout_after_send"])
async def test_killed_in_the_middle_of_a_payout_pays_once(
    crash_node: ManagedNode, tmp_path: Path, crash_at: str
) -> None:
    rpc = crash_node.rpc
    assert rpc is not None
    port = free_port()
    payout = await wallet_address(crash_node, "pool")
    data_dir = tmp_path / "pool"
    miner_address = await wallet_address(crash_node, "miners")
    # Short payout interval and a tiny threshold: the first round has something to pay.
    config = write_config(
        tmp_path / "pool.toml",
        crash_node,
        data_dir,
        payout,
        port,
        payout_interval_seconds=2.0,
        payout_threshold_sat=1000,
        payout_fee_rate_sat_vb=2.0,
        block_check_seconds=0.5,
    )

    async def send_txids() -> set[str]:
        assert rpc is not None
        txs = await rpc.call("listtransactions", "*", 100_000, 0, True, wallet="pool")
        return {tx["txid"] for tx in txs if tx["category"] == "send"}

    earlier_sends = await send_txids()  # other tests share this wallet
    pool = PoolProcess(config, port, tmp_path / "pool.log", env={"STRATUM_POOL_CRASH_AT": crash_at})
    await pool.start()
    miner = start_miner(port, f"{miner_address}.payme", tmp_path / "miner.jsonl", 60_000.0)
    try:
        code = await pool.wait(timeout=90)  # it kills itself at the crash point
        assert code == -signal.SIGKILL, pool.tail()
        miner.send_signal(signal.SIGINT)
        miner.communicate(timeout=30)
        sent_before_restart = await send_txids() - earlier_sends
        assert len(sent_before_restart) == (1 if crash_at == "payout_after_send" else 0)
        # Restart without the fault: the pending payout is settled at start-up, once.
        pool.env = {}
        await pool.start()
        await asyncio.sleep(1.0)
        await pool.terminate()
    finally:
        if miner.poll() is None:
            miner.kill()
        if pool.proc is not None and pool.proc.poll() is None:
            pool.proc.kill()
    store = Store(data_dir / "ledger" / "ledger.sqlite3")
    store.open()
    try:
        payouts = store.payouts()
        balance = store.balance(miner_address)
    finally:
        store.close()
    assert len(payouts) >= 1
    first = payouts[-1]  # the one interrupted by the crash (newest first)
    assert first["status"] == "sent", payouts
    sends = [
        tx
        for tx in await rpc.call("listtransactions", "*", 100_000, 0, True, wallet="pool")
        if tx["category"] == "send" and tx.get("comment") == first["id"]
    ]
    assert {tx["txid"] for tx in sends} == {first["txid"]}, sends  # in the wallet exactly once
    if crash_at == "payout_after_send":
        assert sent_before_restart == {first["txid"]}  # the one sent before the crash
    received = await rpc.call("getreceivedbyaddress", miner_address, 0, wallet="miners")
    paid_total = sum(
        item["amount_sat"]
        for p in payouts
        if p["status"] in ("sent", "confirmed")
        for item in p["items"]
        if item["address"] == miner_address
    )
    assert round(float(received) * 100_000_000) == paid_total
    assert balance is not None and balance.paid_units == paid_total * 1_000_000
