"""Helpers for the tests of several worker processes (``stratum-pool run --processes N``): the
pool as a real process tree (supervisor, workers, managed bitcoind), Stratum clients of the
test's own that remember every share they were told was accepted, and the ledger read back
(every worker's journal, the one store)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pool.ledger.journal_read import read_records
from pool.ledger.store import Store
from pool.worker_status import read_status
from tests.integration.harness import (
    RawClient,
    ShareId,
    journal_identity,
    pool_toml,
    solve,
    stratum_port,
    wait_for,
)
from tests.reliability.node_harness import named

ROOT = Path(__file__).resolve().parents[2]


def write_config(
    path: Path,
    data_dir: Path,
    *,
    processes: int = 2,
    instance_id: int = 0,
    api: bool = True,
    tls: bool = False,
    dsn: str = "",
    pin: bool = False,
) -> Path:
    """A managed regtest bitcoind, one Stratum port (0: the supervisor picks one for all the
    workers; a TLS port too with ``tls``), fixed share difficulty. No simulated chain (the
    tests that use one add it), so every share is also a regtest block."""
    ports = [stratum_port(0, 1e-6)] + ([stratum_port(0, 1e-6, tls=True)] if tls else [])
    extra: dict[str, dict[str, Any]] = {
        "pool": {"instance_id": instance_id},
        "server": {
            "processes": processes,
            "worker_restart_backoff_seconds": 0.5,
            "worker_restart_backoff_max_seconds": 2.0,
            "pin_workers": pin,
        },
        "stratum": {"ports": ports},
        "vardiff": {"enabled": False},
        "api": {"enabled": api, "port": 0},
        "ledger": {"payout_interval_seconds": 0}
        | ({"backend": "postgresql", "dsn": dsn} if dsn else {}),
    }
    path.write_text(pool_toml(data_dir, 0, extra=extra))
    return path


async def tls_extranonce1(port: int) -> bytes:
    """mining.subscribe over TLS (the pool's self-signed certificate, not verified): the
    extranonce1 given."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        writer.write(b'{"id": 1, "method": "mining.subscribe", "params": ["tls-test/1"]}\n')
        answer = json.loads(await asyncio.wait_for(reader.readline(), 30))
        return bytes.fromhex(answer["result"][1])
    finally:
        writer.close()


class SupervisedPool:
    """``python -m pool run --config C`` (its supervisor, workers and bitcoind), log to a file."""

    def __init__(self, config: Path, data_dir: Path, log: Path, processes: int = 2) -> None:
        self.config = config
        self.data_dir = data_dir
        self.log = log
        self.processes = processes
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.ports: list[int] = []
        self.api_port = 0

    async def start(self, timeout: float = 120) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pool", "run", "--config", str(self.config)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ),
        )
        out.close()
        await self.wait_started(offset, timeout)
        started = named(self.log, "supervisor_started", since=offset)[-1]
        self.port = started["stratum_ports"][0]
        self.ports = list(started["stratum_ports"])
        self.api_port = started["api_port"] or 0

    def started_workers(self, since: int = 0) -> set[str]:
        return {e.get("worker", "") for e in named(self.log, "pool_started", since=since)}

    async def wait_started(self, offset: int, timeout: float = 120) -> None:
        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"pool exited with {self.proc.returncode}: {self.tail()}")
            return len(self.started_workers(offset)) >= self.processes

        await wait_for(up, timeout, "every worker started", self.tail)

    def tail(self, lines: int = 30) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def workers(self) -> list[dict[str, Any]]:
        return read_status(self.data_dir)

    def worker_pid(self, index: int) -> int:
        pid = self.workers()[index]["pid"]
        assert isinstance(pid, int)
        return pid

    async def wait_exit(self, timeout: float = 120) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"pool did not exit in {timeout} s: {self.tail()}")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    async def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return await self.wait_exit()

    def kill_all(self) -> None:
        """After a failure: the supervisor goes (its workers and node follow it)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


class Miner:
    """A Stratum connection that submits a share every ``every`` seconds and remembers the
    identity of every share it was told was accepted; a disconnection ends it (``error``)."""

    def __init__(self, client: RawClient, worker: str) -> None:
        self.client = client
        self.worker = worker
        self.accepted: list[ShareId] = []
        self.answers = 0
        self.error: BaseException | None = None
        self.reconnect_asked = False
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._n = 0

    @classmethod
    async def connect(cls, port: int, worker: str) -> Miner:
        client = await RawClient.connect(port)
        await client.handshake(worker)
        return cls(client, worker)

    @property
    def extranonce1(self) -> bytes:
        return self.client.extranonce1

    def _latest(self, method: str) -> dict[str, Any]:
        return next(m for m in reversed(self.client.messages) if m.get("method") == method)

    async def submit_one(self) -> bool:
        notify = self._latest("mining.notify")["params"]
        difficulty = float(self._latest("mining.set_difficulty")["params"][0])
        self._n += 1
        extranonce2 = self._n.to_bytes(self.client.extranonce2_size, "big")
        solution = await asyncio.to_thread(
            solve, notify, self.client.extranonce1, extranonce2, difficulty
        )
        req = 1000 + self._n
        self.client.send(req, "mining.submit", solution.params(self.worker))
        answer = await self.client.response(req, timeout=60.0)
        self.answers += 1
        if answer.get("result") is True:
            self.accepted.append(
                (
                    (self.client.extranonce1 + extranonce2).hex(),
                    solution.job_id,
                    solution.ntime,
                    solution.nonce,
                )
            )
            return True
        return False

    def start(self, every: float) -> None:
        async def loop() -> None:
            try:
                while not self._stopping:
                    await self.submit_one()
                    await asyncio.sleep(every)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                self.reconnect_asked = any(
                    m.get("method") == "client.reconnect" for m in self.client.messages
                )
                if not self._stopping:
                    self.error = exc

        self._task = asyncio.create_task(loop())

    async def stop(self) -> None:
        """Close the connection first, then end the loop (cancelled again until it is done:
        Python 3.11's wait_for can swallow a cancellation that meets an answer)."""
        self._stopping = True
        await self.client.close()
        task = self._task
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)


def process_of(extranonce1: bytes, processes: int = 2) -> int:
    """The worker index in an extranonce1 of ``[instance: 8 bits][process bits]...``."""
    bits = (processes - 1).bit_length()
    value = int.from_bytes(extranonce1, "big")
    return (value >> (8 * len(extranonce1) - 8 - bits)) & ((1 << bits) - 1)


async def miners_on_every_process(
    port: int, prefix: str, processes: int = 2, per_process: int = 2, limit: int = 64
) -> list[Miner]:
    """Connect until ``per_process`` miners landed on each worker (the kernel spreads the
    connections); the extra ones are closed."""
    kept: dict[int, list[Miner]] = {i: [] for i in range(processes)}
    for n in range(limit):
        miner = await Miner.connect(port, f"{prefix}m{n}")
        on = kept[process_of(miner.extranonce1, processes)]
        if len(on) < per_process:
            on.append(miner)
        else:
            await miner.stop()
        if all(len(v) >= per_process for v in kept.values()):
            return [m for v in kept.values() for m in v]
    raise AssertionError(f"{limit} connections did not reach every process: {kept}")


def journaled(ledger_dir: Path) -> tuple[Counter[ShareId], dict[str, list[dict[str, Any]]]]:
    """Every share record of every journal (``journal*``) in ``ledger_dir``: their identities
    (counted) and the records per journal directory."""
    identities: Counter[ShareId] = Counter()
    per_journal: dict[str, list[dict[str, Any]]] = {}
    for directory in sorted(ledger_dir.glob("journal*")):
        records = [rec for _, rec in read_records(directory)]
        per_journal[directory.name] = records
        identities.update(journal_identity(r) for r in records)
    return identities, per_journal


def open_store(ledger_dir: Path, dsn: str = "") -> Store:
    """The pool's one store, opened: SQLite in ``ledger_dir``, or PostgreSQL at ``dsn``."""
    if dsn:
        from pool.ledger.pg import PgTarget
        from tests.pg_harness import PG_PASSWORD

        store = Store(ledger_dir / "unused", "", PgTarget(dsn, PG_PASSWORD))
    else:
        store = Store(ledger_dir / "ledger.sqlite3")
    store.open()
    return store


def store_shares(ledger_dir: Path, dsn: str = "") -> dict[str, int]:
    """Shares credited per worker name in the one store (SQLite; PostgreSQL with ``dsn``)."""
    store = open_store(ledger_dir, dsn)
    try:
        return {w["name"]: int(w["shares"]) for w in store.workers()}
    finally:
        store.close()
