"""``make bench``: throughput of the pool's hot paths, on this machine, single core.

- share validation (``pool.shares.validate_share``), the per-share cost of the pool;
- decoding a ``mining.submit`` line (``stratum.ServerConnection``);
- the bundled miner's hashing loop (``pool.miner.scan``);
- the whole pool end to end (``benchmarks/pool_shares.py``: TCP, validation, journal with each
  fsync policy, answers) on a regtest bitcoind.

Each is timed several times; the best run is reported (least disturbed by other load).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

from benchmarks import pool_shares
from pool.bitcoin import REGTEST, address_to_script
from pool.jobs import JobConfig, Template, build_job
from pool.miner import scan
from pool.shares import ConnectionView, DuplicateFilter, ShareSubmit, validate_share
from stratum.connection import ServerConnection

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


def bench_validate(n: int = 20000) -> float:
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

    return best_rate(run)


def bench_decode(n: int = 20000) -> float:
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

    return best_rate(run)


def bench_scan(n: int = 200000) -> float:
    return best_rate(lambda: (scan(bytes(76), 0, n, 0), n)[1], repeats=3)


def main() -> int:
    results = {
        "validate_share_per_s": round(bench_validate()),
        "decode_submit_per_s": round(bench_decode()),
        "miner_hashes_per_s_per_core": round(bench_scan()),
        "pool_end_to_end": pool_shares.measure_all(),
        "python": sys.version.split()[0],
    }
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
