"""End to end share throughput: the whole pool (TCP, validation, journal, answers) on a regtest
bitcoind, with clients that pipeline ``mining.submit`` as fast as the pool answers.

    python -m benchmarks.pool_shares [--shares 4000] [--connections 1,20]

Not part of ``make bench`` any more: the pool and its clients share one process and one event
loop here, and the pool is built from its internals (``PoolApp``). ``make bench`` measures
accepted shares as an outsider (scenario ``accepted``: the pool in its own process pinned to a
core, the load generator on another). This stays for comparing the journal's fsync policies.

Every hash meets the share target (difficulty 1e-12) and none meets the simulated network's, so
every submit is a valid, unique share and no block interrupts. Reported per journal fsync
policy and connection count: accepted shares per second and the median time from a submit to
its answer. With ``batch`` each answer waits for an fsync of the batch its share is in.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pool import logs
from pool.app import PoolApp
from pool.config import (
    ApiConfig,
    ChainConfig,
    Config,
    LedgerConfig,
    NodeConfig,
    PoolConfig,
    PortConfig,
    SimulationConfig,
    StratumConfig,
    VardiffSettings,
)
from pool.node.binaries import ensure
from pool.node.managed import ManagedNode, prepare_regtest_wallet

WINDOW = 200  # submits in flight per connection (a real miner has a handful; this finds limits)


def config(node: ManagedNode, data_dir: Path, payout: str, fsync: str) -> Config:
    return Config(
        node=NodeConfig(mode="external", rpc_url=node.rpc_url, cookie_file=str(node.cookie_file)),
        pool=PoolConfig(payout_address=payout, data_dir=str(data_dir)),
        stratum=StratumConfig(
            ports=(
                PortConfig(
                    port=0, start_difficulty=1e-12, min_difficulty=1e-12, max_difficulty=1.0
                ),
            )
        ),
        vardiff=VardiffSettings(enabled=False),
        chain=ChainConfig(simulation=SimulationConfig(enabled=True, initial_difficulty=1e12)),
        ledger=LedgerConfig(journal_fsync=fsync, payout_interval_seconds=0),
        api=ApiConfig(enabled=False),
    )


async def client(port: int, user: str, shares: int, latencies: list[float]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    def send(id: int, method: str, params: list[Any]) -> None:
        writer.write((json.dumps({"id": id, "method": method, "params": params}) + "\n").encode())

    send(1, "mining.subscribe", ["bench/1"])
    send(2, "mining.authorize", [user, "x"])
    notify: list[Any] | None = None
    while notify is None:
        msg = json.loads(await reader.readline())
        if msg.get("method") == "mining.notify":
            notify = msg["params"]
        elif msg.get("id") == 2 and msg.get("result") is not True:
            raise RuntimeError(f"authorize refused: {msg}")
    job_id, ntime = notify[0], notify[7]
    sent: dict[int, float] = {}
    accepted = 0
    next_id = 10

    def submit() -> None:
        nonlocal next_id
        nonce = next_id - 10
        sent[next_id] = time.perf_counter()
        send(next_id, "mining.submit", [user, job_id, f"{nonce >> 32:08x}", ntime, f"{nonce:08x}"])
        next_id += 1

    for _ in range(min(WINDOW, shares)):
        submit()
    answered = 0
    while answered < shares:
        msg = json.loads(await reader.readline())
        if msg.get("id") not in sent:
            continue  # notifications
        latencies.append(time.perf_counter() - sent.pop(msg["id"]))
        answered += 1
        accepted += msg.get("result") is True
        if next_id - 10 < shares:
            submit()
    writer.close()
    return accepted


async def measure(
    node: ManagedNode, payout: str, fsync: str, connections: int, shares: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-pool-") as tmp:
        app = PoolApp(config(node, Path(tmp), payout, fsync))
        await app.start()
        try:
            assert app.server is not None
            port = app.server.bound_ports[0]
            per = shares // connections
            latencies: list[float] = []
            start = time.perf_counter()
            accepted = await asyncio.gather(
                *(client(port, f"{payout}.b{i}", per, latencies) for i in range(connections))
            )
            elapsed = time.perf_counter() - start
        finally:
            await app.stop()
    if sum(accepted) != per * connections:
        raise RuntimeError(f"only {sum(accepted)} of {per * connections} shares accepted")
    return {
        "fsync": fsync,
        "connections": connections,
        "shares_per_s": round(sum(accepted) / elapsed),
        "median_answer_ms": round(statistics.median(latencies) * 1000, 2),
    }


async def run(shares: int, connections: list[int]) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="bench-node-") as tmp:
        node = ManagedNode(Path(tmp), binaries=ensure())
        await node.start()
        try:
            payout = await prepare_regtest_wallet(node, "pool")
            return [
                await measure(node, payout, fsync, n, shares)
                for fsync in ("batch", "interval")
                for n in connections
            ]
        finally:
            await node.stop()


def measure_all(shares: int = 4000, connections: tuple[int, ...] = (1, 20)) -> list[Any]:
    logs.configure("warning")  # the pool's start/stop lines would drown the results
    return asyncio.run(run(shares, list(connections)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shares", type=int, default=4000, help="per measurement")
    parser.add_argument("--connections", default="1,20", help="comma-separated counts")
    args = parser.parse_args()
    counts = [int(c) for c in args.connections.split(",")]
    results = measure_all(args.shares, tuple(counts))
    print(json.dumps({"pool_shares": results, "python": sys.version.split()[0]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
