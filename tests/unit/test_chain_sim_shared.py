"""The simulated chain shared through the ledger store (pool/ledger/store_chain_sim.py,
pool/chain_sim_state.py) on both backends (SQLite and a real PostgreSQL): the row's
compare-and-set, blocks found by two processes counted exactly once, a write conflict
re-applied on the latest state, time events applied once, and two processes' views
(``SharedChainSim``) following each other's changes. Wall time: a few seconds."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pool.chain_sim import ChainSim, SimEvent
from pool.chain_sim_state import (
    ChainSimStateError,
    SharedChainSim,
    _seed_shared,
    advance_shared,
    load_chain_sim,
    save_chain_sim,
)
from pool.config import SimEventConfig, SimulationConfig
from pool.ledger.store import Store
from pool.ledger.store_thread import StoreThread
from tests.pg_harness import PG_PASSWORD, PgServer
from tests.unit.test_store import BACKENDS, MakeStore, make_store  # noqa: F401 (fixture)

START = 1000.0


def opened(make: MakeStore, journal_id: str) -> Store:
    store = make("ledger", journal_id)
    store.open()
    return store


def fresh(events: tuple[SimEvent, ...] = (), interval: int = 3) -> ChainSim:
    return ChainSim(
        initial_difficulty=1.0,
        retarget_interval=interval,
        target_spacing=10.0,
        events=events,
        start_time=START,
    )


def test_row_compare_and_set(make_store: MakeStore) -> None:  # noqa: F811
    a, b = opened(make_store, "w0"), opened(make_store, "w1")  # two writers, one database
    assert a.chain_sim_row() is None and a.chain_sim_version() == 0
    assert a.chain_sim_put(0, '{"s": 1}', 1.0, "0/w0")
    assert not b.chain_sim_put(0, '{"s": 2}', 1.0, "0/w1")  # a row exists: the first wins
    assert b.chain_sim_row() == (1, '{"s": 1}')
    assert a.chain_sim_put(1, '{"s": 3}', 2.0, "0/w0")
    assert not b.chain_sim_put(1, '{"s": 4}', 2.0, "0/w1")  # stale version: nothing written
    assert b.chain_sim_row() == (2, '{"s": 3}') and b.chain_sim_version() == 2
    assert b.chain_sim_put(2, '{"s": 4}', 3.0, "0/w1")
    assert a.chain_sim_row() == (3, '{"s": 4}')
    a.chain_sim_reset()
    assert b.chain_sim_row() is None
    a.close()
    b.close()


def test_blocks_of_two_processes_counted_once_and_retarget(make_store: MakeStore) -> None:  # noqa: F811
    a, b = opened(make_store, "w0"), opened(make_store, "w1")
    assert _seed_shared(a, json.dumps(fresh().to_state()), START, "0/w0")[0] == 1
    reference = fresh()  # the same blocks fed to one process's chain
    blocks = [
        (a, 101, START + 10),
        (b, 102, START + 15),
        (b, 102, START + 15),
        (a, 104, START + 25),
    ]
    versions = []
    for store, height, found_at in blocks:
        version, state, changes = advance_shared(store, [(height, found_at)], found_at, [], "p")
        versions.append(version)
        assert changes == reference.on_block(height, found_at)
    # the replayed block 102 (a retry whose commit's answer was lost) wrote nothing
    assert versions == [2, 3, 3, 4]
    assert state == reference.to_state() and state["blocks_seen"] == 3
    (retarget,) = changes  # 3 blocks in 15 s where 30 s were expected: difficulty x2
    assert retarget.kind == "retarget" and retarget.new_difficulty == pytest.approx(2.0)
    row = b.chain_sim_row()
    assert row is not None and json.loads(row[1]) == state
    a.close()
    b.close()


def test_write_conflict_is_reapplied_on_the_latest_state(
    make_store: MakeStore,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = opened(make_store, "w0"), opened(make_store, "w1")
    _seed_shared(a, json.dumps(fresh().to_state()), START, "0/w0")
    real_put = b.chain_sim_put
    calls: list[int] = []
    race = [(101, START + 10)]  # the block a writes first

    def racing_put(expected: int, state: str, now: float, by: str) -> bool:
        calls.append(expected)
        if len(calls) == 1:  # a writes its block between b's read and b's write
            advance_shared(a, race, race[0][1], [], "0/w0")
        return real_put(expected, state, now, by)

    monkeypatch.setattr(b, "chain_sim_put", racing_put)
    version, state, _ = advance_shared(b, [(102, START + 12)], START + 12, [], "0/w1")
    assert calls == [1, 2]  # the first write lost (version 1 was gone), the retry won
    assert version == 3 and state["blocks_seen"] == 2 and state["last_height"] == 102
    assert state["period_blocks"] == [[101, START + 10], [102, START + 12]]
    # chain.simulation.shared_write_attempts = 1: the lost write is not tried again here
    calls.clear()  # (racing_put still in place: a writes again between b's read and write)
    race[0] = (103, START + 14)
    with pytest.raises(RuntimeError, match="1 write conflicts in a row"):
        advance_shared(b, [(104, START + 16)], START + 16, [], "0/w1", 1)
    assert calls == [3]
    a.close()
    b.close()


def test_time_event_applied_once(make_store: MakeStore) -> None:  # noqa: F811
    a, b = opened(make_store, "w0"), opened(make_store, "w1")
    events = [SimEvent(at_seconds=5.0, scale=2.0)]
    _seed_shared(a, json.dumps(fresh(tuple(events)).to_state()), START, "0/w0")
    assert advance_shared(a, [], START + 4, events, "0/w0")[0] == 1  # not due: no write
    version, state, changes = advance_shared(b, [], START + 6, events, "0/w1")
    assert version == 2 and [c.kind for c in changes] == ["event"]
    assert changes[0].new_difficulty == pytest.approx(2.0)
    assert advance_shared(a, [], START + 7, events, "0/w0")[1:] == (state, [])  # once
    a.close()
    b.close()


# -- two processes' views, each on its own store thread --------------------------------------------
def no_records(_: dict[str, Any]) -> Any:
    raise AssertionError("no share expected")


MakeThread = Callable[[str], StoreThread]


@pytest.fixture(params=BACKENDS)
def make_thread(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeThread]:
    """``make(journal_id)``: a store thread (not opened) on this test's backend, all on one
    database."""
    database: list[str] = []

    def make(journal_id: str) -> StoreThread:
        if request.param == "sqlite":
            return StoreThread(tmp_path / "ledger.sqlite3", no_records, journal_id)
        from pool.ledger.pg import PgTarget

        server: PgServer = request.getfixturevalue("postgres")
        if not database:
            database.append(server.create_database())
        target = PgTarget(server.dsn(database[0]), PG_PASSWORD)
        return StoreThread(tmp_path / "pg", no_records, journal_id, pg=target)

    yield make
    if database:
        request.getfixturevalue("postgres").drop_database(database[0])


@pytest.fixture
async def threads(make_thread: MakeThread) -> AsyncIterator[tuple[StoreThread, StoreThread]]:
    a, b = make_thread("w0"), make_thread("w1")
    await a.open()
    await b.open()
    yield a, b
    await a.close()
    await b.close()


SIM = SimulationConfig(
    enabled=True, initial_difficulty=1.0, retarget_interval=2, target_spacing_seconds=10.0
)


async def test_two_views_follow_each_other(
    threads: tuple[StoreThread, StoreThread], tmp_path: Path
) -> None:
    a_store, b_store = threads
    no_file = tmp_path / "absent.json"
    a = await SharedChainSim.open(a_store, SIM, no_file, 0.1, "0/w0")
    b = await SharedChainSim.open(b_store, SIM, no_file, 0.1, "0/w1")
    assert a.version == b.version == 1 and a.chain.start_time == b.chain.start_time
    updates: list[tuple[str, bool]] = []

    def recorder(name: str) -> Any:
        async def on_update(chain: ChainSim, target_changed: bool) -> None:
            updates.append((name, target_changed))

        return on_update

    a.on_update, b.on_update = recorder("a"), recorder("b")
    t0 = a.chain.start_time
    assert await a.on_block(101, t0 + 1) == []  # first block of the period
    assert await b.sync() == [] and b.chain.blocks_seen == 1 and b.loads == 1
    changes = await b.on_block(102, t0 + 2)  # b closes the period: 1 s for 20 s expected
    assert [c.kind for c in changes] == ["retarget"] and b.writes == 1
    await a.sync()
    assert a.chain.target == b.chain.target < a.chain.initial_target
    assert a.chain.history == b.chain.history and a.version == b.version == 3
    assert ("a", True) in updates and ("b", True) in updates
    assert await a.sync() == [] and a.loads == 1  # nothing new: nothing loaded again


async def test_seeded_from_the_single_process_file_and_time_event_via_local_change(
    threads: tuple[StoreThread, StoreThread], tmp_path: Path
) -> None:
    a_store, b_store = threads
    sim = dataclasses.replace(SIM, events=(SimEventConfig(at_seconds=0.0, scale=4.0),))
    old = fresh(interval=2)
    old.on_block(50, START + 1)
    save_chain_sim(tmp_path / "chain_sim.json", old)  # a single-process pool's saved chain
    a = await SharedChainSim.open(a_store, sim, tmp_path / "chain_sim.json", 0.1, "0/w0")
    assert a.chain.blocks_seen == 1 and a.chain.start_time == START
    # the app applies a due time event for a job, then the round writes it to the row
    assert [c.kind for c in a.chain.on_time(START + 2)] == ["event"]
    a.local_change()
    await a.sync()
    b = await SharedChainSim.open(b_store, sim, tmp_path / "absent.json", 0.1, "0/w1")
    assert b.version == 2 and b.chain.difficulty == pytest.approx(4.0)
    assert not b.chain.pending_events and await b.sync() == []


async def test_block_found_while_the_store_fails_is_applied_locally_then_written(
    make_thread: MakeThread, tmp_path: Path
) -> None:
    store = make_thread("w0")
    await store.open()
    a = await SharedChainSim.open(store, SIM, tmp_path / "absent.json", 0.1, "0/w0")
    t0 = a.chain.start_time
    await a.on_block(101, t0 + 1)
    await store.close()  # the store is gone (a real fault: its connection closed)
    changes = await a.on_block(102, t0 + 2)  # closes the period: applied here all the same
    assert [c.kind for c in changes] == ["retarget"] and a.pending == [(102, t0 + 2)]
    target = a.chain.target
    assert target < a.chain.initial_target and a.version == 2  # the row is still at 2
    back = make_thread("w0")  # the store again (as the ledger reopens it)
    await back.open()
    try:
        a.store = back
        await a.sync()  # the pending block is written, on the row's state
        assert a.pending == [] and a.version == 3 and a.chain.target == target
        row = await back.run(Store.chain_sim_row)
        assert row is not None and json.loads(row[1])["blocks_seen"] == 2
    finally:
        await back.close()


async def test_blocks_kept_while_the_store_fails_are_bounded(
    make_thread: MakeThread, tmp_path: Path
) -> None:
    """chain.simulation.shared_max_pending_blocks: the oldest found block is dropped."""
    store = make_thread("w0")
    await store.open()
    sim = dataclasses.replace(SIM, retarget_interval=100, shared_max_pending_blocks=2)
    a = await SharedChainSim.open(store, sim, tmp_path / "absent.json", 0.1, "0/w0")
    t0 = a.chain.start_time
    await store.close()  # the store is gone: blocks wait for it
    for height in (101, 102, 103):
        await a.on_block(height, t0 + height - 100)
    assert a.pending == [(102, t0 + 2), (103, t0 + 3)]
    assert a.chain.blocks_seen == 3  # applied here all the same


async def test_unusable_row_or_file_is_a_clear_error(
    threads: tuple[StoreThread, StoreThread], tmp_path: Path
) -> None:
    a_store, _ = threads
    bad_file = tmp_path / "chain_sim.json"
    bad_file.write_text("{not json")
    with pytest.raises(ChainSimStateError, match=r"chain_sim\.json.*remove the file"):
        load_chain_sim(bad_file, SIM)  # the single-process file
    with pytest.raises(ChainSimStateError, match=r"chain_sim\.json.*remove the file"):
        await SharedChainSim.open(a_store, SIM, bad_file, 0.1, "0/w0")  # seeding from it
    state = fresh().to_state() | {"target": "zz"}
    assert await a_store.run(Store.chain_sim_put, 0, json.dumps(state), 1.0, "x")
    with pytest.raises(ChainSimStateError, match=r"chain_sim row \(version 1\).*DELETE FROM"):
        await SharedChainSim.open(a_store, SIM, tmp_path / "absent.json", 0.1, "0/w0")
