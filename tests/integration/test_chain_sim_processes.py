"""The simulated chain with ``server.processes = 2`` (``stratum-pool run``: a supervisor, two
Stratum worker processes, a managed regtest bitcoind), its state shared through the ledger
store's ``chain_sim`` row (pool/chain_sim_state.py):

- both workers' jobs carry the same simulated target from the start;
- blocks found by miners on both workers close one retarget period (``retarget_interval = 5``)
  and the new target reaches both workers' jobs;
- every accepted block is counted exactly once in the shared state, and no ``chain_sim.json``
  is written while the state is shared.

On SQLite and on PostgreSQL (a real server from tests/pg_harness.py). Wall time: about 15 s
per backend here (up to a minute on a busy machine).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pool.bitcoin import difficulty_to_target, target_to_bits
from pool.chain_sim import compact_target
from tests.integration.harness import wait_for
from tests.integration.procs_harness import (
    Miner,
    SupervisedPool,
    miners_on_every_process,
    open_store,
    write_config,
)
from tests.reliability.node_harness import named

pytestmark = pytest.mark.integration

ADDRESS = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
INITIAL_DIFFICULTY = 4e-6  # shares are at 1e-6: about one in four is a block
INTERVAL = 5
SIMULATION = f"""
[chain.simulation]
enabled = true
initial_difficulty = {INITIAL_DIFFICULTY}
retarget_interval = {INTERVAL}
target_spacing_seconds = 600.0
"""


def job_targets(pool: SupervisedPool) -> dict[str, list[str]]:
    """Per worker, the simulated targets (bits) of its jobs, in the order they changed."""
    out: dict[str, list[str]] = {}
    for event in named(pool.log, "chain_sim_job_target"):
        out.setdefault(event["worker"], []).append(event["bits"])
    return out


def accepted(pool: SupervisedPool, worker: str = "") -> list[dict[str, Any]]:
    """The blocks bitcoind accepted (one event per block, in the finder's log)."""
    return [
        e
        for e in named(pool.log, "block_submitted")
        if e.get("status") == "accepted" and worker in ("", e.get("worker"))
    ]


def shared_state(ledger_dir: Path, dsn: str) -> dict[str, Any]:
    store = open_store(ledger_dir, dsn)
    try:
        row = store.chain_sim_row()
    finally:
        store.close()
    assert row is not None
    state: dict[str, Any] = json.loads(row[1])
    return state


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_two_processes_share_the_simulated_chain(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    dsn = request.getfixturevalue("pg_database") if backend == "postgresql" else ""
    data_dir = tmp_path / "pool"
    config = write_config(tmp_path / "pool.toml", data_dir, api=False, dsn=dsn)
    text = config.read_text().replace("[ledger]\n", "[ledger]\nshared_refresh_seconds = 0.5\n")
    config.write_text(text + SIMULATION)
    pool = SupervisedPool(config, data_dir, tmp_path / "pool.log")
    await pool.start()
    miners: list[Miner] = []
    initial = f"{target_to_bits(compact_target(difficulty_to_target(INITIAL_DIFFICULTY))):08x}"
    try:
        assert job_targets(pool) == {"w0": [initial], "w1": [initial]}
        miners = await miners_on_every_process(pool.port, f"{ADDRESS}.", per_process=1)
        by_worker = {"w0": miners[0], "w1": miners[1]}  # one miner on each worker process
        # w0's miner finds the first blocks of the period, then w1's miner the rest
        for _ in range(400):  # (a share on a job a new block made stale is rejected)
            if accepted(pool, "w0"):
                break
            await by_worker["w0"].submit_one()
        assert accepted(pool, "w0"), pool.tail()
        by_worker["w1"].start(every=0.1)

        def retargeted() -> bool:
            if by_worker["w1"].error is not None:
                raise AssertionError(f"w1's miner: {by_worker['w1'].error!r}")
            targets = job_targets(pool)
            return all(len(targets.get(w, [])) >= 2 for w in ("w0", "w1"))

        await wait_for(retargeted, 180, "a retarget in both workers' jobs", pool.tail)
        await by_worker["w1"].stop()
        blocks = accepted(pool)
        heights: dict[int, str] = {}  # height -> the worker whose block is there
        for e in blocks:
            heights.setdefault(e["height"], e["worker"])
        period = sorted(heights.items())[:INTERVAL]
        assert {w for _, w in period} == {"w0", "w1"}  # found across both workers
        changes = named(pool.log, "simulated_difficulty_changed")
        assert changes and changes[0]["kind"] == "retarget"
        assert changes[0]["height"] == period[-1][0]  # closed by the INTERVAL-th block
        assert changes[0]["new_difficulty"] > changes[0]["old_difficulty"]  # fast blocks
        assert len(changes) == len({(c["height"], c["kind"]) for c in changes})  # logged once
        # both workers' jobs went to the same new target (one refresh at most after it)
        targets = job_targets(pool)
        assert targets["w0"][1] == targets["w1"][1] != initial
        new = [e for e in named(pool.log, "chain_sim_job_target") if e["bits"] != initial]
        assert {e["worker"] for e in new} >= {"w0", "w1"}
        assert new[0]["difficulty"] == pytest.approx(changes[0]["new_difficulty"])

        # every accepted block counted exactly once (the row settles after the last write)
        def counted() -> bool:
            blocks_seen = shared_state(data_dir / "ledger", dsn)["blocks_seen"]
            return blocks_seen == len({e["height"] for e in accepted(pool)})

        await wait_for(
            counted, 30, "every block counted once", lambda: shared_state(data_dir / "ledger", dsn)
        )
        history = shared_state(data_dir / "ledger", dsn)["history"]
        assert isinstance(history, list) and history[0]["height"] == changes[0]["height"]
        assert not (data_dir / "chain_sim.json").exists()  # the row, not the file
        assert await pool.terminate() == 0
    finally:
        for miner in miners:
            await miner.stop()
        pool.kill_all()
