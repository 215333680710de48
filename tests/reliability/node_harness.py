"""Helpers of the managed-node reliability tests: a ``stratum-pool run`` process with its own
managed bitcoind, its JSON log read as events, the node's pid and RPC, a Stratum client that
keeps submitting shares."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

from pool.node.lifecycle import PIDFILE
from pool.node.rpc import BitcoinRpc
from tests.integration.harness import RawClient, pool_toml, solve


def write_managed_config(
    path: Path,
    data_dir: Path,
    port: int,
    *,
    sim_difficulty: float = 2e-5,
    node: dict[str, Any] | None = None,
) -> Path:
    """A pool with its managed regtest bitcoind in ``data_dir`` (simulated network difficulty
    ``sim_difficulty``: a block every ``sim_difficulty * 2**32`` hashes)."""
    extra: dict[str, dict[str, Any]] = {
        "node": node or {},
        "chain.simulation": {"enabled": True, "initial_difficulty": sim_difficulty},
        "ledger": {"payout_interval_seconds": 0},
    }
    path.write_text(pool_toml(data_dir, port, start_difficulty=1e-6, extra=extra))
    return path


def events(log: Path, since: int = 0, until: int | None = None) -> list[dict[str, Any]]:
    """The JSON log lines of ``log`` between byte offsets ``since`` and ``until``."""
    with log.open("rb") as f:
        f.seek(since)
        data = f.read() if until is None else f.read(max(0, until - since))
    found = []
    for line in data.splitlines():
        if line.startswith(b"{"):
            with contextlib.suppress(ValueError):
                found.append(json.loads(line))
    return found


def named(log: Path, event: str, since: int = 0, until: int | None = None) -> list[dict[str, Any]]:
    return [e for e in events(log, since, until) if e.get("event") == event]


def node_datadir(data_dir: Path) -> Path:
    return data_dir / "bitcoind"


def node_pid(data_dir: Path) -> int:
    return int((node_datadir(data_dir) / "regtest" / PIDFILE).read_text().strip())


def node_rpc(data_dir: Path, log: Path) -> BitcoinRpc:
    """An RPC client of the pool's managed node (its port from the last start in the log)."""
    port = named(log, "bitcoind_starting")[-1]["rpc_port"]
    return BitcoinRpc(
        f"http://127.0.0.1:{port}/", cookie_file=node_datadir(data_dir) / "regtest" / ".cookie"
    )


class ShareClient:
    """A Stratum connection of the test's own that submits a share every ``every`` seconds
    and records the answers; any disconnection ends it with ``error`` set."""

    def __init__(self, client: RawClient, worker: str) -> None:
        self.client = client
        self.worker = worker
        self.answers: list[bool] = []
        self.refusals: list[Any] = []  # the error of each share refused
        self.error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._n = 0

    @classmethod
    async def connect(cls, port: int, worker: str) -> ShareClient:
        client = await RawClient.connect(port)
        await client.handshake(worker)
        return cls(client, worker)

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
        accepted = answer.get("result") is True
        self.answers.append(accepted)
        if not accepted:
            self.refusals.append(answer.get("error"))
        return accepted

    def start(self, every: float) -> None:
        async def loop() -> None:
            try:
                while True:
                    await self.submit_one()
                    await asyncio.sleep(every)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                self.error = exc

        self._task = asyncio.create_task(loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.client.close()
