"""The cost of a new job's fan-out to SOLO connections, against PPS connections.

    python -m benchmarks.solo_fanout [connections]

Pure cores (no sockets): the work the server does per connection when a job is published
(``PoolConnection.broadcast_job``). Cases: PPS (one shared notify line), SOLO with every
connection paying one address (one SOLO job for all), SOLO with every connection paying its
own address (one SOLO job per connection: the worst case). Best of 5 rounds, each a new clean
job (so the SOLO jobs are built during the round being timed).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

from pool.bitcoin import REGTEST, difficulty_to_target
from pool.bitcoin.address import encode_segwit
from pool.jobs import Job, JobTable, Template, build_job
from pool.server.context import PoolContext
from pool.server.core import CoreSettings, PoolConnection
from pool.server.core_types import notify_event
from pool.server.solo import SoloJobs
from pool.vardiff import VardiffConfig
from stratum.notifications import encode_notification
from tests.unit.test_jobs import CONFIG, gbt

NOW = 1_700_000_100.0


def _line(id: int, method: str, params: list[object]) -> bytes:
    return json.dumps({"id": id, "method": method, "params": params}).encode() + b"\n"


def run_case(n: int, addresses: int | None) -> float:
    """Seconds per fan-out to ``n`` connections (``addresses`` None: a PPS port)."""
    table = JobTable(max_jobs=4, seed=1)
    ctx = PoolContext(network=REGTEST, jobs=table, extranonce1_size=4, now=NOW)
    template = Template.from_rpc(gbt())

    def new_job() -> Job:
        job = build_job(
            template,
            CONFIG,
            job_id=table.next_id(),
            now=NOW,
            clean=True,
            block_target=difficulty_to_target(1e9),
        )
        table.add(job)
        return job

    new_job()
    settings = CoreSettings(
        extranonce2_size=4,
        version_rolling_mask=0,
        vardiff=VardiffConfig(min_difficulty=1e-9, max_difficulty=1e6, enabled=False),
        start_difficulty=1e-3,
    )
    if addresses is not None:
        settings = dataclasses.replace(settings, scheme="solo", solo=SoloJobs(table))
    names = [encode_segwit("bcrt", 0, i.to_bytes(20, "big")) for i in range(addresses or 1)]
    cores = []
    for i in range(n):
        core = PoolConnection(ctx, settings, conn_id=i, extranonce1=i.to_bytes(4, "big"), now=NOW)
        core.receive_data(
            _line(1, "mining.subscribe", [])
            + _line(2, "mining.authorize", [f"{names[i % len(names)]}.w{i}", "x"]),
            NOW,
        )
        cores.append(core)
    best = float("inf")
    for _ in range(5):
        job = new_job()
        event = notify_event(job, job.job_id, True)
        notify = (event, encode_notification(event))
        started = time.perf_counter()
        for core in cores:
            core.broadcast_job(job, notify, NOW)
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    for label, addresses in (
        ("PPS", None),
        ("SOLO, one address", 1),
        ("SOLO, 10 addresses", 10),
        (f"SOLO, {n} addresses", n),
    ):
        seconds = run_case(n, addresses)
        print(f"{label:>24}: {seconds * 1e3:7.2f} ms per fan-out to {n} connections")


if __name__ == "__main__":
    main()
