"""Micro-benchmarks of the pool's hot paths, in this process, on one core: share validation,
decoding a ``mining.submit`` line, the bundled miner's hashing loop. They import the pool's
internals, which are being rewritten: a benchmark whose import fails is skipped with the
reason instead of stopping the run.

Each is timed several times; the best run is reported (least disturbed by other load).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

GBT = {
    "version": 0x20000000,
    "previousblockhash": "11" * 32,
    "transactions": [
        {"data": "00" * 200, "txid": f"{i:064x}", "fee": 1000, "weight": 800} for i in range(2000)
    ],
    "coinbasevalue": 50 * 10**8,
    "target": "7fffff" + "00" * 29,
    "bits": "207fffff",
    "curtime": 1_700_000_000,
    "mintime": 1_699_999_000,
    "height": 500,
    "default_witness_commitment": "6a24aa21a9ed" + "22" * 32,
}


def best_rate(fn: Callable[[], int], repeats: int = 5) -> float:
    """Operations per second of ``fn`` (which returns how many operations it did)."""
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        count = fn()
        best = max(best, count / (time.perf_counter() - start))
    return best


def bench_validate(n: int = 20000, repeats: int = 5) -> float:
    from pool.bitcoin import REGTEST, address_to_script
    from pool.jobs import JobConfig, Template, build_job
    from pool.shares import ConnectionView, DuplicateFilter, ShareSubmit, validate_share

    script = address_to_script("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", REGTEST)
    job = build_job(
        Template.from_rpc(GBT),
        JobConfig(payout_script=script),
        job_id="1",
        now=0.0,
        clean=True,
        block_target=1,
    )
    conn = ConnectionView(
        subscribed=True,
        authorized=frozenset({"w"}),
        extranonce1=bytes(4),
        extranonce2_size=4,
        version_mask=0,
    )

    def run() -> int:
        dups = DuplicateFilter()
        for i in range(n):
            submit = ShareSubmit("w", "1", f"{i:08x}", f"{job.ntime:08x}", f"{i:08x}")
            validate_share(submit, conn, job, dups, difficulty=1e-12, now=1_700_000_000.0)
        return n

    return best_rate(run, repeats)


def bench_decode(n: int = 20000, repeats: int = 5) -> float:
    from stratum.connection import ServerConnection

    line = (
        b'{"id": 4, "method": "mining.submit", "params": ["bcrt1qw508d6qejxtdg4y5r3zarvary0c5'
        b'xw7kygt080.rig", "1a2b", "00000001", "6553f100", "a1b2c3d4"]}\n'
    )

    def run() -> int:
        conn = ServerConnection()
        conn.receive_data(line * n)
        for _ in range(n):
            conn.next_event()
        return n

    return best_rate(run, repeats)


def bench_scan(n: int = 200000, repeats: int = 3) -> float:
    from pool.miner import scan

    return best_rate(lambda: (scan(bytes(76), 0, n, 0), n)[1], repeats)


def measure(quick: bool = False) -> dict[str, Any]:
    """Each result, or ``{"skipped": reason}`` when the benchmark no longer runs."""
    repeats = 1 if quick else 5
    benches: dict[str, Callable[[], float]] = {
        "validate_share_per_s": lambda: bench_validate(repeats=repeats),
        "decode_submit_per_s": lambda: bench_decode(repeats=repeats),
        "miner_hashes_per_s_per_core": lambda: bench_scan(repeats=min(repeats, 3)),
    }
    out: dict[str, Any] = {}
    for name, bench in benches.items():
        try:
            out[name] = round(bench())
        except Exception as exc:  # an internal API changed under us: say so, go on
            out[name] = {"skipped": f"{type(exc).__name__}: {exc}"}
            print(f"micro-benchmark {name} skipped: {type(exc).__name__}: {exc}", flush=True)
    return out
