"""The outsider scenarios of issue 11 (item 5), and ``zmq`` (issue 15). Each starts a fresh
pool process (fresh data dir) on the shared regtest node (``zmq``: on a node of its own),
runs the load generator against it and returns a dict for the results file.

- ``submits``: random-nonce mining.submit answered per second (nearly all rejected, low
  difficulty) at 20 and 100 connections, 32 in flight each, share difficulty 1.
- ``accepted``: valid, unique shares answered ``true`` per second with the default journal
  fsync policy (every hash meets difficulty 1e-12; the simulated network difficulty 1e12
  keeps them from being blocks).
- ``accepted_pg``: the same with ``[ledger] backend = "postgresql"`` (a throwaway cluster of
  the installed PostgreSQL server, tests/pg_harness.py), reported beside ``accepted``.
- ``idle``: 10 000 miners connecting at once; how many got a job; pool RSS per connection.
- ``fanout``: new block -> clean mining.notify at every one of 1 000 and 10 000 idle miners.
- ``fanout_processes``: the same with the pool on both cores, 1 and 2 worker processes
  (benchmarks/fanout_processes.py).
- ``send_floor``: no pool: a bare loop of one send per connection, the same pinning: the
  machine's floor under the fan-out figures (benchmarks/send_floor.py).
- ``api``: Stratum answer latency (paced submits) without and with 10 clients polling
  GET /api/workers and GET /metrics, with 20 000 workers known.
- ``zmq``: new block -> clean mining.notify through bitcoind's ZMQ hashblock feed, the
  getblocktemplate long-poll, and both (benchmarks/zmq_latency.py; a node of its own).

The pool runs as shipped except for what a benchmark must set (``harness.pool_config``): an
external node, one port at a fixed difficulty with vardiff off, connection limits raised for
20 000 connections from one address, no limit on invalid shares in a row, payouts off, the
listen backlog at 8192 when the pool has such a key. Logging stays at ``info`` and goes to a
file (``pool.log`` in the scenario's dir), as a deployment's would. Every miner authorizes a
worker name of its own (``ADDRESS.bN``, ``.iN``, ...), as separate rigs do.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import fanout_processes, send_floor, zmq_latency
from benchmarks import processes as worker_processes
from benchmarks.harness import REPO, Cpus, Loadgen, Node, PoolProcess, free_ports, pool_config
from benchmarks.harness import loadgen_spec as _spec
from benchmarks.harness import run_loadgen as _loadgen

SCENARIOS = (
    "submits",
    "accepted",
    "accepted_pg",
    "idle",
    "fanout",
    "fanout_processes",
    "send_floor",
    "api",
    "zmq",
    "processes",
)


@dataclass(frozen=True)
class Settings:
    in_flight: int = 32
    warmup: float = 2.0
    window: float = 10.0
    submit_connections: tuple[int, ...] = (20, 100)
    accepted_connections: int = 20
    idle_connections: int = 10_000
    idle_deadline: float = 60.0
    idle_settle: float = 2.0
    fanout_counts: tuple[int, ...] = (1_000, 10_000)
    fanout_rounds: int = 5
    fanout_batch: int = 500
    api_worker_connections: int = 200
    api_workers_per_connection: int = 100
    api_submitters: int = 20
    api_rate: float = 2000.0
    api_http_clients: int = 10
    zmq_miners: int = 100  # the zmq scenario (benchmarks/zmq_latency.py): idle miners...
    zmq_rounds: int = 10  # ...and blocks per way (zmq, longpoll, both)
    pool_src: str = ""  # run the pool from this source tree (default: this checkout)
    event_loop: str = "asyncio"  # the pool's stratum.event_loop (asyncio | uvloop)
    fanout_loadgen_nice: int = 0  # fanout_processes: the load generator's niceness
    fanout_process_counts: tuple[int, ...] = (1, 2)  # fanout_processes: pools measured

    @classmethod
    def quick(cls) -> Settings:
        """A smoke run: every scenario, small, about a minute in all."""
        return cls(
            warmup=0.5,
            window=2.0,
            idle_connections=1_000,
            idle_deadline=20.0,
            idle_settle=0.5,
            fanout_counts=(100, 1_000),
            fanout_rounds=2,
            api_worker_connections=20,
            zmq_miners=10,
            zmq_rounds=3,
        )


async def _with_pool(
    name: str,
    node: Node,
    cpus: Cpus,
    workdir: Path,
    settings: Settings,
    run: Any,
    **config: Any,
) -> dict[str, Any]:
    """Start a pool with ``pool_config(**config)`` in a fresh dir, ``await run(pool)``, stop."""
    port, api_port = free_ports(2)
    data = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir))
    api = api_port if config.pop("api", False) else None
    pool = PoolProcess(
        pool_config(
            node,
            data / "data",
            stratum_port=port,
            api_port=api,
            event_loop=settings.event_loop,
            **config,
        ),
        data,
        cpus.pool,
        src=Path(settings.pool_src) if settings.pool_src else REPO,
    )
    await pool.start()
    try:
        result: dict[str, Any] = await run(pool)
    finally:
        await pool.stop()
    result["pool"] = pool.meta
    if pool.meta.get("exit_code") not in (0, None):
        result["pool_log_tail"] = pool.log_tail()
    return result


async def submits(node: Node, cpus: Cpus, workdir: Path, s: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in s.submit_connections:

        async def run(pool: PoolProcess, n: int = n) -> dict[str, Any]:
            spec = _spec(
                "flood",
                node,
                pool,
                connections=n,
                in_flight=s.in_flight,
                unique_nonces=False,
                warmup=s.warmup,
                window=s.window,
            )
            return await _loadgen(spec, cpus, timeout=300)

        out[str(n)] = await _with_pool(f"submits{n}", node, cpus, workdir, s, run, difficulty=1.0)
    return out


async def accepted(
    node: Node, cpus: Cpus, workdir: Path, s: Settings, ledger: dict[str, Any] | None = None
) -> dict[str, Any]:
    async def run(pool: PoolProcess) -> dict[str, Any]:
        spec = _spec(
            "flood",
            node,
            pool,
            connections=s.accepted_connections,
            in_flight=s.in_flight,
            unique_nonces=True,
            warmup=s.warmup,
            window=s.window,
        )
        result = await _loadgen(spec, cpus, timeout=300)
        result["all_accepted"] = result.get("accepted_total") == result.get("answers_total")
        return result

    return await _with_pool(
        "accepted",
        node,
        cpus,
        workdir,
        s,
        run,
        difficulty=1e-12,
        max_difficulty=1.0,
        simulation=True,
        ledger=ledger,
    )


async def accepted_pg(node: Node, cpus: Cpus, workdir: Path, s: Settings) -> dict[str, Any]:
    """``accepted`` with the PostgreSQL ledger (skipped with the reason when no server is
    installed: ``make postgres``)."""
    import os

    from tests.pg_harness import PG_PASSWORD, running_server

    try:
        with running_server() as server:
            dsn = server.dsn(server.create_database())
            os.environ["POOL_PG_PASSWORD"] = PG_PASSWORD  # the pool process inherits it
            ledger = {"backend": "postgresql", "dsn": dsn}
            return await accepted(node, cpus, workdir, s, ledger=ledger)
    except LookupError as exc:
        return {"error": str(exc)}


async def idle(node: Node, cpus: Cpus, workdir: Path, s: Settings) -> dict[str, Any]:
    async def run(pool: PoolProcess) -> dict[str, Any]:
        await asyncio.sleep(1.0)  # the pool's start-up work (first template, store) settles
        spec = _spec(
            "idle",
            node,
            pool,
            connections=s.idle_connections,
            deadline=s.idle_deadline,
            settle=s.idle_settle,
        )
        return await _loadgen(spec, cpus, timeout=s.idle_deadline + 300)

    return await _with_pool("idle", node, cpus, workdir, s, run, difficulty=1.0)


def fanout_rounds(
    node: Node, cpus: Cpus, s: Settings, loadgen_nice: int = 0, processes: int = 1
) -> Any:
    """The fan-out measurement against a started pool (``await run(pool)``): at each miner
    count, rounds of a quiet second, ``generatetoaddress 1`` (timed), then the generator times
    each miner's clean notify for that block from the RPC call's return. Also used with
    several worker processes (benchmarks/fanout_processes.py)."""

    async def run(pool: PoolProcess, *_args: Any) -> dict[str, Any]:
        spec = _spec("fanout", node, pool, batch=s.fanout_batch, deadline=30.0, processes=processes)
        gen = Loadgen(spec, cpus.loadgen, nice=loadgen_nice)
        await gen.start()
        out: dict[str, Any] = {}
        try:
            for count in s.fanout_counts:
                await gen.send(cmd="grow", to=count)
                grown = await gen.until("grown", timeout=600)
                grown.pop("event")
                log_from = _size(pool.log_path)
                rounds: list[dict[str, Any]] = []
                for _ in range(s.fanout_rounds):
                    await asyncio.sleep(1.0)
                    t_call = time.monotonic()
                    hashes = await node.rpc.call("generatetoaddress", 1, node.address)
                    t, t_wall = time.monotonic(), time.time()
                    await gen.send(cmd="block", hash=hashes[0], t=t, t_wall=t_wall, t_call=t_call)
                    event = await gen.until("round", timeout=120)
                    event.pop("event")
                    rounds.append(event)
                out[str(count)] = {"connected": grown, "rounds": rounds, **summarize(rounds)}
                await asyncio.sleep(LOG_FLUSH_WAIT)  # the pool's buffered log lines written
                out[str(count)]["pool_fanout_ms"] = logged_fanouts(pool.log_path, log_from)
            await gen.send(cmd="stop")
            out["loadgen"] = await gen.finish(timeout=120)
            out["loadgen"].pop("rounds", None)
        finally:
            await gen.kill()
        return out

    return run


LOG_FLUSH_WAIT = 1.0  # the pool flushes its buffered log lines every 0.2 s (pool/logs.py)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def logged_fanouts(log_path: Path, offset: int) -> list[float]:
    """The pool's own time for each clean job's fan-out (``job_published`` ``fanout_ms``: its
    loop over the connections, every send included) logged after ``offset``: each worker
    process logs its own."""
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        if '"job_published"' in line and '"fanout_ms"' in line:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                entry = json.loads(line)
                if entry["clean"]:
                    out.append(float(entry["fanout_ms"]))
    return out


# A new block reaches the pool through its template watcher's long-poll at once; the periodic
# template refresh is pushed past the scenario so no refresh job lands inside a round.
FANOUT_CONFIG: dict[str, Any] = {"difficulty": 1.0, "template_refresh_seconds": 110.0}


async def fanout(node: Node, cpus: Cpus, workdir: Path, s: Settings) -> dict[str, Any]:
    """New block -> clean notify at 1 000 and 10 000 idle miners, one pool process."""
    run = fanout_rounds(node, cpus, s)
    return await _with_pool("fanout", node, cpus, workdir, s, run, **FANOUT_CONFIG)


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Across rounds: median p50, worst p99, worst max, total missing."""
    lat = [r["latency_ms"] for r in rounds if r["latency_ms"]["count"]]
    if not lat:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None, "missing": None}
    return {
        "p50_ms": round(statistics.median(x["p50"] for x in lat), 3),
        "p99_ms": max(x["p99"] for x in lat),
        "max_ms": max(x["max"] for x in lat),
        "missing": sum(r["missing"] for r in rounds),
    }


async def api(node: Node, cpus: Cpus, workdir: Path, s: Settings) -> dict[str, Any]:
    async def run(pool: PoolProcess) -> dict[str, Any]:
        spec = _spec(
            "api",
            node,
            pool,
            worker_connections=s.api_worker_connections,
            workers_per_connection=s.api_workers_per_connection,
            worker_batch=50,
            submitters=s.api_submitters,
            rate=s.api_rate,
            warmup=s.warmup,
            api_warmup=min(1.0, s.warmup),
            window=s.window,
            http_host="127.0.0.1",
            http_port=int(pool.config["api"]["port"]),
            http_clients=s.api_http_clients,
            http_paths=["/api/workers", "/metrics"],
        )
        return await _loadgen(spec, cpus, timeout=900)

    return await _with_pool(
        "api",
        node,
        cpus,
        workdir,
        s,
        run,
        difficulty=1e-12,
        max_difficulty=1.0,
        simulation=True,
        api=True,
    )


RUNNERS = {
    "submits": submits,
    "accepted": accepted,
    "accepted_pg": accepted_pg,
    "idle": idle,
    "fanout": fanout,
    "api": api,
    "zmq": zmq_latency.zmq,
    "processes": worker_processes.processes,  # benchmarks/processes.py
    "fanout_processes": fanout_processes.fanout_processes,  # benchmarks/fanout_processes.py
    "send_floor": send_floor.send_floor,  # benchmarks/send_floor.py
}


def settings_dict(s: Settings) -> dict[str, Any]:
    return dataclasses.asdict(s)
