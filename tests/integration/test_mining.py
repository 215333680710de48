"""Real miners on the pool: the bundled miner mining against a real regtest bitcoind."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from pool.config import ChainConfig, PortConfig, SimulationConfig, VardiffSettings
from pool.miner import Miner, MinerOptions
from pool.node.managed import ManagedNode
from tests.integration.harness import pool_config, start_pool, wallet_address

pytestmark = pytest.mark.integration


async def test_two_miners_sixty_seconds_every_share_and_block_accepted(
    regtest_node: ManagedNode, tmp_path: Path
) -> None:
    """Two bundled miners for 60 s. The simulated network difficulty makes about one share in
    5 a block: many blocks (two in-process miners send ~50 shares a minute on a busy machine:
    at one in 20, none in 10 % of runs), and shares keep flowing between them; the two miners
    sometimes solve the same height (a race every pool has)."""
    rpc = regtest_node.rpc
    assert rpc is not None
    address = await wallet_address(regtest_node)
    share_diff = 2e-4
    config = dataclasses.replace(
        pool_config(
            regtest_node,
            tmp_path,
            address,
            ports=(
                PortConfig(
                    port=0, start_difficulty=share_diff, min_difficulty=1e-8, max_difficulty=1e6
                ),
            ),
        ),
        chain=ChainConfig(
            simulation=SimulationConfig(enabled=True, initial_difficulty=share_diff * 5)
        ),
    )
    height_before = await rpc.call("getblockcount")
    app = await start_pool(config)
    assert app.server is not None
    try:
        miners = [
            Miner(
                MinerOptions(
                    host="127.0.0.1",
                    port=app.server.bound_ports[0],
                    user=f"{address}.m{i}",
                    duration=60.0,
                    version_rolling=i == 1,
                )
            )
            for i in range(2)
        ]

        summaries = await asyncio.gather(*(m.run() for m in miners))
    finally:
        await app.stop()
    stats = app.server.stats
    total_accepted = sum(s["accepted"] for s in summaries)
    assert total_accepted >= 20, summaries  # enough shares for the test to mean something
    # Every share is accepted except one that crossed a new block's clean job on the wire: the
    # protocol makes the pool reject shares for retired jobs as stale (21). The miner already
    # discards work for an old block it knows about (as cpuminer does), so such crossings are
    # rare: at most one per block found.
    for summary in summaries:
        assert set(summary["reasons"]) <= {r for r in summary["reasons"] if "stale" in r}, summary
    assert set(stats.rejected) <= {"stale"}, stats.rejected
    assert stats.rejected["stale"] <= len(stats.blocks)
    assert stats.accepted == total_accepted
    found = [b for b in stats.blocks]
    assert found, "no block found in 60 s"
    # Both miners may solve the same height before the clean job reaches the second: bitcoind
    # keeps the first and holds the other as a valid side block ("inconclusive"), a real race
    # of any pool. Every height the pool solved is on the chain exactly once.
    heights = Counter(b.height for b in found)
    on_chain = [b for b in found if b.status == "accepted"]
    assert sorted(b.height for b in on_chain) == sorted(heights), found
    assert all(b.status in ("accepted", "inconclusive", "stale") for b in found), found
    assert await rpc.call("getblockcount") - height_before == len(heights)
    for block in found:
        if block.status == "stale":  # the race lost before bitcoind kept it as a side block
            continue
        info = await rpc.call("getblock", block.hash)
        assert info["height"] == block.height
        assert (info["confirmations"] >= 1) == (block.status == "accepted"), (block, info)


async def test_throttled_miner_hashrate_within_four_standard_errors(
    regtest_node: ManagedNode, tmp_path: Path
) -> None:
    """A miner throttled to a known rate: the pool's estimate must lie within 4 standard errors
    (1/sqrt(shares)) of the rate the miner really hashed at. A Poisson count is beyond 4 standard
    errors in 6e-5 of runs (two-sided), so a correct pool fails this less than once in 10 000."""
    address = await wallet_address(regtest_node)
    rate = 100_000.0  # H/s, well below what one core does
    share_diff = 2e-6  # ~8600 hashes per share: ~12 shares/s
    config = dataclasses.replace(
        pool_config(
            regtest_node,
            tmp_path,
            address,
            ports=(
                PortConfig(
                    port=0, start_difficulty=share_diff, min_difficulty=1e-9, max_difficulty=1e6
                ),
            ),
            vardiff=VardiffSettings(enabled=False),
        ),
        chain=ChainConfig(simulation=SimulationConfig(enabled=True, initial_difficulty=1e9)),
    )
    app = await start_pool(config)
    assert app.server is not None
    worker = f"{address}.throttled"
    try:
        miner = Miner(
            MinerOptions(
                host="127.0.0.1",
                port=app.server.bound_ports[0],
                user=worker,
                hashrate=rate,
                duration=30.0,
                batch=5000,
            )
        )
        summary = await miner.run()
        now = time.time()
    finally:
        await app.stop()
    shares = summary["accepted"]
    assert shares >= 200, summary
    # The miner really hashed at the throttled rate (its own count, not the pool's).
    assert summary["hashrate"] == pytest.approx(rate, rel=0.05)
    meter = app.server.hashrate.worker(worker)
    assert meter is not None
    estimate = meter.hashrate(60, now)
    actual = summary["hashrate"]
    sigma = actual / math.sqrt(shares)
    assert abs(estimate - actual) < 4 * sigma, (estimate, actual, shares)


async def test_vardiff_converges_from_1000x_too_low_and_too_high(
    regtest_node: ManagedNode, tmp_path: Path
) -> None:
    """Two miners throttled to a known rate, one on a port starting 1000x too low, one on a
    port starting 1000x too high. Within 2 minutes each difficulty is within 25 % of the ideal
    (rate * target interval / 2**32), and it stays there (checked again 20 s later)."""

    rate = 150_000.0
    # A short target interval: many shares, so the test is short and its check is precise.
    # What fails a single run is the landing: the difficulty is set from the estimate of the
    # moment (~50-100 shares, 10-14 % standard error) and the 15 % band then keeps it until a
    # later, better estimate disagrees by more than 15 %. At 0.5 s per share (~100 shares by
    # 2 minutes) that failed 3.3 % of simulated runs. At 0.04 s (~2000 shares by 2 minutes),
    # the pure module under the same schedule (1 s ticks, 0.1 s of work in flight after each
    # change; the simulation of tests/unit/test_vardiff.py) was never beyond 18 % at 2 min or
    # 2 min 20 s in 10 000 runs from 1000x too high, nor beyond 17 % in 5000 from 1000x too low
    # (0.5 % of runs beyond 15 %, none beyond 20 %; `python -m tests.stats.vardiff_e2e` reproduces
    # these figures). The tail falls steeply from 15 % to 20 %, and 25 % is further out still: a
    # correct pool fails this test less than once in 10 000 runs.
    interval = 0.04
    ideal = rate * interval / 2**32
    ports = (
        PortConfig(
            port=0,
            start_difficulty=ideal / 1000,
            min_difficulty=1e-12,
            max_difficulty=1e6,
            name="low",
        ),
        PortConfig(
            port=0,
            start_difficulty=ideal * 1000,
            min_difficulty=1e-12,
            max_difficulty=1e6,
            name="high",
        ),
    )
    address = await wallet_address(regtest_node)
    config = dataclasses.replace(
        pool_config(
            regtest_node,
            tmp_path,
            address,
            ports=ports,
            vardiff=VardiffSettings(enabled=True, target_interval_seconds=interval),
        ),
        chain=ChainConfig(simulation=SimulationConfig(enabled=True, initial_difficulty=1e9)),
    )
    app = await start_pool(config)
    assert app.server is not None
    workers = [f"{address}.low", f"{address}.high"]
    # The miners run as their own processes, as real miners do: the pool's process then handles
    # the first seconds' flood of shares (1000x too low: ~25 000 shares/s nominal, a few hundred
    # in all before the first retargets lift the difficulty) on its own.
    miners = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pool",
            "miner",
            "-o",
            f"stratum+tcp://127.0.0.1:{port}",
            "-u",
            worker,
            "--hashrate",
            str(rate),
            "--duration",
            "140",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        for port, worker in zip(app.server.bound_ports, workers, strict=True)
    ]
    history: dict[str, list[float]] = {w: [] for w in workers}
    try:
        for _ in range(115):
            await asyncio.sleep(1)
            for w in workers:
                if w in app.server.stats.workers:
                    history[w].append(app.server.stats.workers[w].difficulty)
        at_two_minutes = {w: app.server.stats.workers[w].difficulty for w in workers}
        await asyncio.sleep(20)
        later = {w: app.server.stats.workers[w].difficulty for w in workers}
        outputs = [await m.communicate() for m in miners]
        summaries = [json.loads(out.decode().strip().splitlines()[-1]) for out, _ in outputs]
    finally:
        for m in miners:
            if m.returncode is None:
                m.kill()
        await app.stop()
    for worker, summary in zip(workers, summaries, strict=True):
        actual = summary["hashrate"] * interval / 2**32  # the rate the miner really hashed at
        # The checks below are against ``actual``; this only makes sure the throttle worked
        # (a loaded CI machine may slow a miner a little, which is no fault of the pool).
        assert actual == pytest.approx(ideal, rel=0.25), summary
        for when, value in (("2 min", at_two_minutes[worker]), ("2 min 20 s", later[worker])):
            assert value == pytest.approx(actual, rel=0.25), (
                worker,
                when,
                value,
                actual,
                sorted(set(history[worker])),
            )
