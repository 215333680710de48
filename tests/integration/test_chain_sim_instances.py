"""The simulated chain shared by two pool instances (own ``pool.instance_id``, data dirs and
ports: two hosts' worth, here in one test process) on one PostgreSQL ledger and one regtest
bitcoind: blocks found through both close one retarget period, both instances' jobs move to
the same new target, and the shared row counts each block once.

Wall time: about 10 to 30 seconds (PostgreSQL from tests/pg_harness.py; skipped, with the
reason, where it cannot be installed).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from pool.app import PoolApp
from pool.config import ChainConfig, PortConfig, SimulationConfig
from pool.node.managed import ManagedNode
from tests.integration.harness import pool_config, start_pool, wait_for, wallet_address
from tests.integration.procs_harness import Miner

pytestmark = pytest.mark.integration

INTERVAL = 6  # (instance 1 may find a block or two more before it stops: background submits)


def instance_config(
    node: ManagedNode, data_dir: Path, address: str, dsn: str, instance_id: int
) -> Any:
    base = pool_config(
        node,
        data_dir,
        address,
        ports=(PortConfig(port=0, start_difficulty=1e-6, min_difficulty=1e-8),),
    )
    return dataclasses.replace(
        base,
        pool=dataclasses.replace(base.pool, instance_id=instance_id),
        ledger=dataclasses.replace(
            base.ledger, backend="postgresql", dsn=dsn, shared_refresh_seconds=0.5
        ),
        chain=ChainConfig(
            simulation=SimulationConfig(
                enabled=True,
                initial_difficulty=4e-6,  # about one share in four is a block
                retarget_interval=INTERVAL,
                target_spacing_seconds=600.0,  # far slower than here: the difficulty rises
            )
        ),
    )


async def test_two_instances_share_the_simulated_chain(
    regtest_node: ManagedNode, tmp_path: Path, pg_database: str
) -> None:
    address = await wallet_address(regtest_node)
    apps: list[PoolApp] = []
    found: list[tuple[int, int]] = []  # (instance, height) of each accepted block
    miners: list[Miner] = []
    try:
        for instance in (1, 2):
            app = await start_pool(
                instance_config(
                    regtest_node, tmp_path / f"i{instance}", address, pg_database, instance
                )
            )
            apps.append(app)
            assert app.server is not None and app.sim_shared is not None

            async def listener(
                result: Any, creds: Any, now: float, sub: Any, i: int = instance
            ) -> None:
                if sub.accepted:
                    found.append((i, sub.height))

            app.server.block_listeners.append(listener)
        a, b = apps
        assert a.chain_sim is not None and b.chain_sim is not None
        assert a.chain_sim.start_time == b.chain_sim.start_time  # one simulation, one row
        start_target = a.chain_sim.target
        for app in apps:
            assert app.server is not None and app.server.jobs.current is not None
            assert app.server.jobs.current.block_target == start_target
        assert a.server is not None and b.server is not None
        miners = [
            await Miner.connect(a.server.bound_ports[0], f"{address}.a"),
            await Miner.connect(b.server.bound_ports[0], f"{address}.b"),
        ]
        # instance 1 finds the first block(s) of the period, instance 2 the rest
        for _ in range(400):
            if any(i == 1 for i, _ in found):
                break
            await miners[0].submit_one()
        for _ in range(2000):
            if b.chain_sim.history:
                break
            await miners[1].submit_one()
        assert b.chain_sim.history, found
        change = b.chain_sim.history[0]
        # (the listeners hear of a block after the app counted it)
        await wait_for(
            lambda: change.height in {h for _, h in found}, 30, "the listener", lambda: found
        )
        heights: dict[int, int] = {}  # height -> the instance whose block is there
        for i, height in found:
            heights.setdefault(height, i)
        period = sorted(heights.items())[:INTERVAL]
        assert {i for _, i in period} == {1, 2}, found  # the period's blocks: through both
        assert change.kind == "retarget" and change.height == period[-1][0], found
        assert change.new_difficulty > change.old_difficulty

        def same_new_target() -> bool:
            targets = set()
            for app in apps:
                assert app.server is not None and app.chain_sim is not None
                job = app.server.jobs.current
                targets.add(app.chain_sim.target)
                targets.add(job.block_target if job is not None else None)
            return len(targets) == 1 and start_target not in targets

        await wait_for(same_new_target, 30, "both instances' jobs at the new target")
        assert a.chain_sim is not None and a.chain_sim.history == b.chain_sim.history

        def counted() -> bool:
            assert a.chain_sim is not None
            return a.chain_sim.blocks_seen == len({h for _, h in found})

        await wait_for(counted, 30, "every block counted once", lambda: found)
        for app in apps:
            assert not (Path(app.data_dir) / "chain_sim.json").exists()
    finally:
        for miner in miners:
            await miner.stop()
        for app in apps:
            await app.stop()
