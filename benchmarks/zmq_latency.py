"""The ``zmq`` scenario: new block -> clean mining.notify with bitcoind's ZMQ hashblock feed,
with the getblocktemplate long-poll alone, and with both (as shipped).

The scenario starts a regtest bitcoind of its own that publishes hashblock (the run's shared
node does not, so the other scenarios measure what they always did). For each way a pool is
started on it with only that way on (the best-block poll slowed to 60 s, the refresh to 110 s),
idle miners connect (the ``fanout`` load generator), and each round mines one block: the
latency runs from the instant before ``generatetoaddress`` is called (the block is mined,
connected and announced within that call; a ZMQ notify may come before the call returns) to
each miner's kernel receive stamp of the clean notify. The pool's ``new_block`` log lines tell
which source announced each block.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.harness import REPO, Cpus, Loadgen, Node, PoolProcess, free_ports, pool_config
from pool.node.binaries import ensure
from pool.node.managed import ManagedNode, free_zmq_endpoint, prepare_regtest_wallet

WAYS = ("zmq", "longpoll", "both")


def node_keys(way: str, endpoint: str) -> dict[str, Any]:
    return {
        "zmq_hashblock": "" if way == "longpoll" else endpoint,
        "longpoll": way != "zmq",
        "poll_interval_seconds": 60.0,
    }


def block_sources(log_path: Path) -> dict[str, int]:
    """New blocks by announcing source, from the pool's JSON log (the start's is left out)."""
    counts: Counter[str] = Counter()
    for line in log_path.read_text(errors="replace").splitlines():
        if '"new_block"' not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == "new_block" and entry.get("source") != "start":
            counts[str(entry.get("source"))] += 1
    return dict(sorted(counts.items()))


async def _one_way(
    way: str, node: Node, endpoint: str, cpus: Cpus, workdir: Path, settings: Any
) -> dict[str, Any]:
    (port,) = free_ports(1)
    data = Path(tempfile.mkdtemp(prefix=f"zmq-{way}-", dir=workdir))
    config = pool_config(
        node,
        data / "data",
        stratum_port=port,
        difficulty=1.0,
        template_refresh_seconds=110.0,
        event_loop=settings.event_loop,
    )
    config["node"].update(node_keys(way, endpoint))
    pool = PoolProcess(
        config, data, cpus.pool, src=Path(settings.pool_src) if settings.pool_src else REPO
    )
    await pool.start()
    spec = {
        "mode": "fanout",
        "host": "127.0.0.1",
        "port": pool.stratum_port,
        "pool_pid": pool.pid,
        "address": node.address,
        "drain_timeout": 60.0,
        "connect_timeout": 120.0,
        "batch": 100,
        "deadline": 30.0,
    }
    gen = Loadgen(spec, cpus.loadgen)
    rounds: list[dict[str, Any]] = []
    try:
        await gen.start()
        await gen.send(cmd="grow", to=settings.zmq_miners)
        grown = await gen.until("grown", timeout=300)
        for _ in range(settings.zmq_rounds):
            await asyncio.sleep(1.0)
            t_call, t_wall = time.monotonic(), time.time()
            hashes = await node.rpc.call("generatetoaddress", 1, node.address)
            rpc_seconds = time.monotonic() - t_call
            # timed from before the call: a ZMQ notify can beat the RPC answer
            await gen.send(cmd="block", hash=hashes[0], t=t_call, t_wall=t_wall, t_call=t_call)
            event = await gen.until("round", timeout=120)
            event.pop("event")
            event["rpc_seconds"] = round(rpc_seconds, 4)
            rounds.append(event)
        await gen.send(cmd="stop")
        await gen.finish(timeout=120)
    finally:
        await gen.kill()
        await pool.stop()
    lat = [r["latency_ms"] for r in rounds if r["latency_ms"]["count"]]
    firsts = [r["first_ms"] for r in rounds if r["first_ms"] is not None]
    return {
        "miners": grown.get("connected"),
        "rounds": rounds,
        "p50_ms": round(statistics.median(x["p50"] for x in lat), 3) if lat else None,
        "p99_ms": max(x["p99"] for x in lat) if lat else None,
        "first_ms_median": round(statistics.median(firsts), 3) if firsts else None,
        "missing": sum(r["missing"] for r in rounds),
        "sources": block_sources(pool.log_path),
        "pool": pool.meta,
    }


async def zmq(node: Node, cpus: Cpus, workdir: Path, settings: Any) -> dict[str, Any]:
    """Each way in ``WAYS`` on a ZMQ-publishing node of the scenario's own."""
    endpoint = free_zmq_endpoint()
    own = ManagedNode(
        workdir / "bitcoind-zmq",
        binaries=await asyncio.to_thread(ensure),
        zmq_hashblock=endpoint,
    )
    await own.start()
    try:
        address = await prepare_regtest_wallet(own, "pool")
        zmq_node = Node(own, address)
        out: dict[str, Any] = {"endpoint": endpoint}
        for way in WAYS:
            out[way] = await _one_way(way, zmq_node, endpoint, cpus, workdir, settings)
        return out
    finally:
        await own.stop()
