"""The simulated chain's state: in ``DATA/chain_sim.json`` for a single-process pool (resumed at
start, saved atomically after every change), or in the ledger store's ``chain_sim`` row when the
store is shared (``Ledger.is_shared``: worker processes, or instances on one PostgreSQL).

Shared state (:class:`SharedChainSim`)
--------------------------------------
* One writer at a time, by compare-and-set on the row's version (``store_chain_sim.py``): a
  process whose block submission was accepted reads the latest row, applies ``on_block`` (and
  the time events due) to THAT state and writes it only if nobody wrote meanwhile; otherwise it
  reads again and re-applies (``advance_shared``). No lock holder to wait for or take over:
  any process that finds a block advances the chain at once, and a killed process leaves either
  the old state or the new one. Every block is counted exactly once: ``on_block`` ignores a
  height not above the last one counted, so a retry after a conflict (or after a commit whose
  answer was lost) cannot count it twice, and two processes cannot both count one height.
* Every process reads the row's version every ``ledger.shared_refresh_seconds``; when it moved,
  it loads the state (target, retarget history) and, if the target changed, publishes a new
  job on its current template at once (not clean: jobs already sent keep the target they were
  built with, as in a single process between a change and the next job; a share meeting an
  older job's target is still a valid regtest block and is counted like any other block). So
  a new simulated target reaches every process's jobs within one refresh.
* Time events: due ones are applied (and written by compare-and-set) by whichever process
  sees them first; the others read the result.
* A block found while the store fails is applied locally (this process's jobs follow it) and
  kept pending (bounded) until the store takes it.
* At the first start on a fresh store the row is seeded from ``DATA/chain_sim.json`` if one
  exists (a single-process pool switching to a shared store keeps its simulation), else from
  ``[chain.simulation]``. The JSON file is neither read again nor written while shared. To
  restart the simulation afresh: ``DELETE FROM chain_sim`` with the pool stopped.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from pool import preflight
from pool.bitcoin import target_to_bits, target_to_difficulty
from pool.chain_sim import ChainSim, Retarget, SimEvent
from pool.config import SimulationConfig

if TYPE_CHECKING:
    from pool.ledger.store import Store
    from pool.ledger.store_thread import StoreThread

log = structlog.get_logger("pool.app")


class ChainSimStateError(RuntimeError):
    """The saved state cannot be used; the message names the file and what to do."""


def sim_events(sim: SimulationConfig) -> list[SimEvent]:
    return [
        SimEvent(
            at_height=e.at_height if e.at_height >= 0 else None,
            at_seconds=e.at_seconds if e.at_seconds >= 0 else None,
            set_difficulty=e.set_difficulty if e.set_difficulty > 0 else None,
            scale=e.scale if e.scale > 0 else None,
        )
        for e in sim.events
    ]


ROW_REMEDY = "stop the pool and DELETE FROM chain_sim to start the simulation afresh"
FILE_REMEDY = "remove the file to start the simulation afresh"


def _restore(state: Any, sim: SimulationConfig, where: str, remedy: str) -> ChainSim:
    try:
        return ChainSim.from_state(state, events=sim_events(sim))
    except (ValueError, KeyError, TypeError) as exc:
        raise ChainSimStateError(
            f"{where}: the saved simulated-difficulty state cannot be used ({exc}); {remedy}"
        ) from exc


def _drift(state: dict[str, Any], sim: SimulationConfig, where: Path | str) -> None:
    for drift in preflight.chain_sim_drift(state, sim):
        log.warning(
            "chain_sim_setting_ignored",
            key=drift.key,
            configured=drift.configured,
            saved=drift.saved,
            note=drift.message(Path(where)),
        )


def _fresh(sim: SimulationConfig) -> ChainSim:
    chain = ChainSim(
        initial_difficulty=sim.initial_difficulty,
        retarget_interval=sim.retarget_interval,
        target_spacing=sim.target_spacing_seconds,
        clamp_factor=sim.clamp_factor,
        events=sim_events(sim),
        start_time=time.time(),
        mainnet_difficulty=sim.mainnet_difficulty or None,
    )
    log.info(
        "chain_sim_started",
        difficulty=chain.difficulty,
        retarget_interval=sim.retarget_interval,
        target_spacing_seconds=sim.target_spacing_seconds,
        events=len(sim.events),
    )
    return chain


def _read_file(path: Path, sim: SimulationConfig) -> tuple[ChainSim, dict[str, Any]]:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ChainSimStateError(
            f"{path}: the saved simulated-difficulty state cannot be used ({exc}); {FILE_REMEDY}"
        ) from exc
    return _restore(state, sim, str(path), FILE_REMEDY), state


def load_chain_sim(path: Path, sim: SimulationConfig) -> ChainSim:
    """The simulated chain: resumed from ``path`` (its saved settings win over the config's,
    each difference logged), or started afresh from ``sim`` and saved."""
    if path.exists():
        chain, state = _read_file(path, sim)
        log.info("chain_sim_resumed", difficulty=chain.difficulty, blocks=chain.blocks_seen)
        _drift(state, sim, path)
        return chain
    chain = _fresh(sim)
    save_chain_sim(path, chain)
    return chain


def save_chain_sim(path: Path, chain: ChainSim) -> None:
    """Atomically: a crash leaves the old state or the new one, never half of one."""
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        json.dump(chain.to_state(), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# -- shared through the ledger store ---------------------------------------------------------------
def advance_shared(
    store: Store,
    blocks: list[tuple[int, float]],
    now: float,
    events: list[SimEvent],
    by: str,
    attempts: int = 100,
) -> tuple[int, dict[str, Any], list[Retarget]]:
    """On the store's thread: apply ``blocks`` (``on_block`` in order) and the time events due
    by ``now`` to the row's latest state, written by compare-and-set (re-read and re-applied
    on a conflict). Returns ``(version, state, changes this call made)``; nothing is written
    when nothing changed. RuntimeError when there is no row, or after ``attempts`` conflicts
    (``chain.simulation.shared_write_attempts``)."""
    for _ in range(attempts):
        row = store.chain_sim_row()
        if row is None:
            raise RuntimeError("the store has no chain_sim row (deleted while the pool ran?)")
        version, text = row
        before = json.loads(text)
        chain = ChainSim.from_state(before, events=events)
        changes: list[Retarget] = []
        for height, found_at in blocks:
            changes += chain.on_block(height, found_at)
        changes += chain.on_time(now)
        after = chain.to_state()
        if after == before:
            return version, before, []
        if store.chain_sim_put(version, json.dumps(after), now, by):
            return version + 1, after, changes
    raise RuntimeError(f"chain_sim: {attempts} write conflicts in a row")


def _seed_shared(store: Store, state: str, now: float, by: str) -> tuple[int, str]:
    """On the store's thread: insert ``state`` unless a row exists; the row then in force."""
    store.chain_sim_put(0, state, now, by)
    row = store.chain_sim_row()
    assert row is not None
    return row


def _seed_state(seed_file: Path, sim: SimulationConfig) -> str:
    if seed_file.exists():
        seed, _ = _read_file(seed_file, sim)
        log.info("chain_sim_seeded_from_file", file=str(seed_file))
    else:
        seed = _fresh(sim)
    return json.dumps(seed.to_state())


class SharedChainSim:
    """This process's view of the shared simulated chain (see the module docstring)."""

    def __init__(
        self,
        store: StoreThread,
        sim: SimulationConfig,
        version: int,
        chain: ChainSim,
        refresh: float,
        by: str,
    ) -> None:
        self.store = store  # the StoreThread
        self.sim = sim
        self.events = sim_events(sim)
        self.version = version  # the row version ``chain`` was read from
        self.chain = chain
        self.refresh = refresh
        self.by = by
        self.pending: list[tuple[int, float]] = []  # accepted blocks not yet in the store
        self.dirty = False  # a time event was applied locally: the store gets it next round
        self.on_update: Callable[[ChainSim, bool], Awaitable[None]] | None = None
        self.wake = asyncio.Event()
        self.job_target: int | None = None  # the simulated target of the last job published
        self.loads = 0  # states written elsewhere loaded here
        self.writes = 0  # states this process wrote

    @classmethod
    async def open(
        cls, store: StoreThread, sim: SimulationConfig, seed_file: Path, refresh: float, by: str
    ) -> SharedChainSim:
        """The row in force; seeded (first start on this store) from ``seed_file`` if it
        exists, else from ``sim``."""
        from pool.ledger.store import Store

        row = await store.run(Store.chain_sim_row)
        if row is None:
            row = await store.run(_seed_shared, _seed_state(seed_file, sim), time.time(), by)
        version, text = row
        where = f"the ledger store's chain_sim row (version {version})"
        try:
            state_data = json.loads(text)
        except ValueError as exc:
            raise ChainSimStateError(
                f"{where}: the saved simulated-difficulty state cannot be used ({exc}); "
                f"{ROW_REMEDY}"
            ) from exc
        chain = _restore(state_data, sim, where, ROW_REMEDY)
        _drift(state_data, sim, "the ledger store's chain_sim row")
        log.info(
            "chain_sim_shared",
            version=version,
            difficulty=chain.difficulty,
            blocks=chain.blocks_seen,
            refresh_seconds=refresh,
        )
        return cls(store, sim, version, chain, refresh, by)

    def _time_events_due(self, now: float) -> bool:
        start = self.chain.start_time
        return any(
            e.at_seconds is not None and start + e.at_seconds <= now
            for e in self.chain.pending_events
        )

    async def _load(self, version: int, state: dict[str, Any]) -> None:
        old_target = self.chain.target
        self.chain = ChainSim.from_state(state, events=self.events)
        self.version = version
        if self.on_update is not None:
            await self.on_update(self.chain, self.chain.target != old_target)

    def published(self, job_id: str, target: int | None) -> None:
        """A job went out with ``target``: logged when it differs from the previous job's."""
        if target is None or target == self.job_target:
            return
        self.job_target = target
        log.info(
            "chain_sim_job_target",
            job_id=job_id,
            bits=f"{target_to_bits(target):08x}",
            difficulty=target_to_difficulty(target),
            version=self.version,
        )

    def local_change(self) -> None:
        """The app applied a due time event to ``chain`` (for a job): written next round."""
        self.dirty = True
        self.wake.set()

    async def on_block(self, height: int, found_at: float) -> list[Retarget]:
        """A block this process found was accepted: counted in the store (or kept pending, and
        applied locally, while the store fails); the changes this process wrote."""
        self.pending.append((height, found_at))
        if len(self.pending) > self.sim.shared_max_pending_blocks:
            del self.pending[0]
        # A new target goes out at once on the current template too: the new tip's template
        # may already be there (long-poll, ZMQ), and a poke would not publish it again.
        try:
            return await self.sync()
        except Exception as exc:
            log.warning("chain_sim_store_failed", error=repr(exc), pending=len(self.pending))
            changes = self.chain.on_block(height, found_at)
            if changes and self.on_update is not None:
                await self.on_update(self.chain, True)
            return changes

    async def sync(self) -> list[Retarget]:
        """One round: write this process's pending blocks and due time events, or load the
        state written elsewhere; the changes this process wrote."""
        from pool.ledger.store import Store

        now = time.time()
        if self.pending or self.dirty or self._time_events_due(now):
            blocks, self.dirty = list(self.pending), False
            try:
                version, state, changes = await self.store.run(
                    advance_shared,
                    blocks,
                    now,
                    self.events,
                    self.by,
                    self.sim.shared_write_attempts,
                )
            except BaseException:
                self.dirty = True
                raise
            del self.pending[: len(blocks)]
            if changes:
                self.writes += 1
            if version != self.version or changes:
                await self._load(version, state)
            return changes
        version = await self.store.run(Store.chain_sim_version)
        if version != self.version:
            row = await self.store.run(Store.chain_sim_row)
            if row is not None:
                self.loads += 1
                await self._load(row[0], json.loads(row[1]))
                log.info("chain_sim_loaded", version=row[0], difficulty=self.chain.difficulty)
        return []

    async def run(self) -> None:
        """Every ``refresh`` seconds (at once when woken): ``sync``."""
        while True:
            self.wake.clear()
            try:
                changes = await self.sync()
                for change in changes:
                    log.info("simulated_difficulty_changed", **change.to_dict())
            except Exception as exc:  # the store is retried by the ledger; so is this
                log.warning("chain_sim_sync_failed", error=repr(exc))
            try:
                async with asyncio.timeout(self.refresh):
                    await self.wake.wait()
            except TimeoutError:
                pass
