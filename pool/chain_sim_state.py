"""The simulated chain's state on disk (``DATA/chain_sim.json``): resumed at start, saved
atomically after every change."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import structlog

from pool import preflight
from pool.chain_sim import ChainSim, SimEvent
from pool.config import SimulationConfig

log = structlog.get_logger("pool.app")


class ChainSimStateError(RuntimeError):
    """The saved state cannot be used; the message names the file and what to do."""


def load_chain_sim(path: Path, sim: SimulationConfig) -> ChainSim:
    """The simulated chain: resumed from ``path`` (its saved settings win over the config's,
    each difference logged), or started afresh from ``sim`` and saved."""
    events = [
        SimEvent(
            at_height=e.at_height if e.at_height >= 0 else None,
            at_seconds=e.at_seconds if e.at_seconds >= 0 else None,
            set_difficulty=e.set_difficulty if e.set_difficulty > 0 else None,
            scale=e.scale if e.scale > 0 else None,
        )
        for e in sim.events
    ]
    if path.exists():
        try:
            state = json.loads(path.read_text())
            chain = ChainSim.from_state(state, events=events)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ChainSimStateError(
                f"{path}: the saved simulated-difficulty state cannot be used ({exc}); "
                "remove the file to start the simulation afresh"
            ) from exc
        log.info("chain_sim_resumed", difficulty=chain.difficulty, blocks=chain.blocks_seen)
        for drift in preflight.chain_sim_drift(state, sim):
            log.warning(
                "chain_sim_setting_ignored",
                key=drift.key,
                configured=drift.configured,
                saved=drift.saved,
                note=drift.message(path),
            )
        return chain
    chain = ChainSim(
        initial_difficulty=sim.initial_difficulty,
        retarget_interval=sim.retarget_interval,
        target_spacing=sim.target_spacing_seconds,
        clamp_factor=sim.clamp_factor,
        events=events,
        start_time=time.time(),
        mainnet_difficulty=sim.mainnet_difficulty or None,
    )
    save_chain_sim(path, chain)
    log.info(
        "chain_sim_started",
        difficulty=chain.difficulty,
        retarget_interval=sim.retarget_interval,
        target_spacing_seconds=sim.target_spacing_seconds,
        events=len(events),
    )
    return chain


def save_chain_sim(path: Path, chain: ChainSim) -> None:
    """Atomically: a crash leaves the old state or the new one, never half of one."""
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        json.dump(chain.to_state(), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
