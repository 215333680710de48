"""The simulated network difficulty inside a running pool: blocks retarget it, jobs follow it,
PPS pays against it, and its state survives a restart."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import pytest

from pool.chain_sim import bitcoin_retarget
from pool.config import ChainConfig, PortConfig, SimulationConfig
from pool.miner import Miner, MinerOptions
from pool.node.managed import ManagedNode
from tests.integration.harness import pool_config, start_pool, wait_for, wallet_address

pytestmark = pytest.mark.integration


async def test_pool_retargets_the_simulated_difficulty_and_resumes_it(
    regtest_node: ManagedNode, tmp_path: Path
) -> None:
    address = await wallet_address(regtest_node)
    config = dataclasses.replace(
        pool_config(
            regtest_node,
            tmp_path,
            address,
            ports=(PortConfig(port=0, start_difficulty=2e-5, min_difficulty=1e-8),),
        ),
        chain=ChainConfig(
            simulation=SimulationConfig(
                enabled=True,
                initial_difficulty=2e-4,
                retarget_interval=3,
                target_spacing_seconds=30.0,  # far slower than the miner: the difficulty rises
            )
        ),
    )
    app = await start_pool(config)
    assert app.server is not None and app.chain_sim is not None
    sim = app.chain_sim
    start_target = sim.target
    miner = Miner(
        MinerOptions(
            host="127.0.0.1",
            port=app.server.bound_ports[0],
            user=f"{address}.sim",
            duration=90.0,
            hashrate=150_000.0,
        )
    )
    task = asyncio.create_task(miner.run())
    try:
        await wait_for(lambda: bool(sim.history), 90, "a retarget", lambda: sim.blocks_seen)
        change = sim.history[0]
        assert change.kind == "retarget" and change.new_difficulty > change.old_difficulty
        state = sim.to_state()
        times = [t for _, t in state.get("period_blocks", [])]
        assert change.actual_timespan is not None
        expected = bitcoin_retarget(start_target, 0.0, change.actual_timespan, 3, 30.0)
        # new/old difficulty = old/new target, Bitcoin's rule on the measured timespan
        ratio = change.new_difficulty / change.old_difficulty
        assert ratio == pytest.approx(start_target / expected, rel=1e-9)
        assert len(times) < 3  # a new period started
        # New jobs carry the new target, so PPS pays against it.
        await wait_for(
            lambda: (
                app.server is not None
                and app.server.jobs.current is not None
                and app.server.jobs.current.block_target == sim.target
            ),
            30,
            "a job at the new simulated target",
        )
    finally:
        miner.stopping.set()
        await task
        await app.stop()
    saved = json.loads((tmp_path / "chain_sim.json").read_text())
    again = await start_pool(config)
    try:
        assert again.chain_sim is not None
        assert again.chain_sim.to_state() == saved
        assert again.chain_sim.target == sim.target
    finally:
        await again.stop()
