"""The store's ``live_workers`` rows (pool/ledger/store_live.py) on both backends (two writers
on one database: what one process publishes, another reads), the merge of several processes'
rows and of this process's live state with them (pool/api/live_merge.py), the webhooks
monitor's merged view, and ``ledger.live_workers_seconds``. One test times a publish of
20 000 rows on each backend (the figures are printed). Wall time: a few seconds."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from pool.api.live_merge import (
    MonitorView,
    address_rates,
    is_known,
    is_online,
    live_fields,
    live_names,
    local_rows,
    merged_stats,
    others_rate,
)
from pool.config import ConfigError, limits_summary, load
from pool.hashrate import HASHES_PER_DIFF1, HashrateBook
from pool.ledger.store import Store
from pool.ledger.store_live import (
    EMPTY_SNAPSHOT,
    HASHRATE_TOLERANCE,
    LivePublisher,
    LiveReader,
    LiveWorker,
    merge_rows,
    snapshot_of,
)
from pool.stats import PoolStats, WorkerStats
from pool.webhooks import WorkerWatch
from tests.unit.test_store import MakeStore, make_store  # noqa: F401 (fixture)

STALE = 15.0  # a process's heartbeat older than this: down
PRUNE = 150.0


def opened(make: MakeStore, journal_id: str) -> Store:
    store = make("ledger", journal_id)
    store.open()
    return store


def beat(store: Store, process: str, now: float, started: float = 0.0) -> None:
    store.heartbeat(
        {
            "instance_id": 0,
            "process": process,
            "pid": 1,
            "host": "h",
            "started_at": started,
            "heartbeat_at": now,
            "stats": {},
        }
    )


def worker(name: str, connections: int = 1, **kw: Any) -> LiveWorker:
    return LiveWorker(name, name.partition(".")[0], connections=connections, **kw)


def test_publish_writes_only_changes_and_readers_see_up_processes(
    make_store: MakeStore,  # noqa: F811
) -> None:
    a, b = opened(make_store, "w0"), opened(make_store, "w1")  # two processes, one database
    pub = LivePublisher(0, "w1", PRUNE)
    reader = LiveReader(0, "w0")
    beat(a, "w0", 100.0)
    beat(b, "w1", 100.0, started=50.0)
    rows = [
        worker("addr1.x", difficulty=8.0, hashrate=((60, 5e9), (300, 4e9)), accepted=3),
        worker("addr1.y", connections=0, last_share=90.0, rejected=(("stale", 2),)),
        worker("addr2", connections=2, difficulty=1.0),
    ]
    first = pub.publish(b, rows, 100.0)
    assert (first.written, first.deleted, first.full) == (3, 0, True)
    seen = reader.read(a, 100.0, STALE)
    assert seen is not None
    assert {r.name: r for r in seen} == {r.name: r for r in rows}  # every field round-trips
    assert reader.read(a, 100.5, STALE) is None  # nothing changed: nothing re-read
    reads = reader.reads

    # one changed, one gone, one new: three row writes, the rest untouched
    again = pub.publish(
        b,
        [
            worker("addr1.x", difficulty=16.0, hashrate=((60, 6e9), (300, 4e9)), accepted=4),
            worker("addr2", connections=2, difficulty=1.0),
            worker("addr3.z"),
        ],
        101.0,
    )
    assert (again.written, again.deleted, again.full) == (2, 1, False)
    seen = reader.read(a, 101.0, STALE)
    assert seen is not None and reader.reads == reads + 1
    got = {r.name: r for r in seen}
    assert set(got) == {"addr1.x", "addr2", "addr3.z"} and got["addr1.x"].difficulty == 16.0
    held = a.conn.execute("SELECT worker, updated_at FROM live_workers ORDER BY worker").fetchall()
    assert [(r[0], r[1]) for r in held] == [
        ("addr1.x", 101.0),
        ("addr2", 100.0),
        ("addr3.z", 101.0),
    ]
    assert pub.publish(b, [r for r in seen], 102.0).written == 0  # unchanged: no writes

    # a process reads its own rows never; a down one's rows are ignored
    assert LiveReader(0, "w1").read(b, 102.0, STALE) == []
    assert reader.read(a, 100.0 + STALE + 1, STALE) == []
    a.close()
    b.close()


def test_restart_rewrites_and_prune_removes_long_down_processes(
    make_store: MakeStore,  # noqa: F811
) -> None:
    a, b = opened(make_store, "w0"), opened(make_store, "w1")
    beat(a, "w0", 100.0)
    beat(b, "w1", 100.0, started=50.0)
    LivePublisher(0, "w1", PRUNE).publish(b, [worker("addr.old"), worker("addr.kept")], 100.0)
    reader = LiveReader(0, "w0")
    # w1 restarts: its new heartbeat says a later start; rows of the earlier run are not shown
    beat(b, "w1", 200.0, started=190.0)
    beat(a, "w0", 200.0)
    assert reader.read(a, 200.0, STALE) == []
    restarted = LivePublisher(0, "w1", PRUNE)
    done = restarted.publish(b, [worker("addr.kept")], 201.0)
    assert done.full and done.written == 1
    names = [r[0] for r in a.conn.execute("SELECT worker FROM live_workers").fetchall()]
    assert names == ["addr.kept"]  # the earlier run's rows are gone
    assert [r.name for r in reader.read(a, 201.0, STALE) or []] == ["addr.kept"]

    # w1 dies; after PRUNE seconds down, another process's publish deletes its rows
    w0 = LivePublisher(0, "w0", PRUNE)
    w0.publish(a, [worker("addr.mine")], 201.0 + PRUNE / 2)  # not yet: still kept
    assert a.conn.execute("SELECT COUNT(*) FROM live_workers").fetchone()[0] == 2
    beat(a, "w0", 201.0 + PRUNE + 1)
    w0.publish(a, [worker("addr.mine")], 201.0 + PRUNE + 1)
    assert w0.pruned == 1
    assert [r[0] for r in a.conn.execute("SELECT worker FROM live_workers").fetchall()] == [
        "addr.mine"
    ]
    # w1 comes back with the same publisher (it only looked down): it sees its rows were
    # pruned and writes them all again
    beat(b, "w1", 400.0, started=190.0)
    back = restarted.publish(b, [worker("addr.kept")], 400.0)
    assert back.full and back.written == 1
    beat(a, "w0", 400.0)
    assert [r.name for r in reader.read(a, 400.0, STALE) or []] == ["addr.kept"]
    a.close()
    b.close()


def test_a_failed_publish_rewrites_everything_next_time(make_store: MakeStore) -> None:  # noqa: F811
    store = opened(make_store, "w1")
    pub = LivePublisher(0, "w1", PRUNE)
    pub.publish(store, [worker("addr.a")], 10.0)
    bad = LiveWorker("addr.b", cast(str, None), connections=1)  # address NOT NULL: refused
    with pytest.raises(Exception):  # noqa: B017 (either backend's own error)
        pub.publish(store, [worker("addr.a"), bad], 11.0)
    assert pub.full  # the table's state is not known: the next publish writes it all
    done = pub.publish(store, [worker("addr.a"), worker("addr.c")], 12.0)
    assert done.full and done.written == 2
    store.close()


def test_publish_of_20000_workers_is_bounded(make_store: MakeStore) -> None:  # noqa: F811
    """20 000 live workers of one process: the first publish (every row), one with a tenth of
    them changed, one with none. Figures printed (run with -s)."""
    store = opened(make_store, "w1")
    beat(store, "w1", 1000.0)
    pub = LivePublisher(0, "w1", PRUNE)
    rows = [
        worker(f"addr{i % 500}.rig{i}", difficulty=1.0, hashrate=((60, 1e9), (300, 1e9)))
        for i in range(20_000)
    ]
    first = pub.publish(store, rows, 1000.0)
    reader = LiveReader(0, "w0")
    started = time.perf_counter()
    read = reader.read(store, 1000.0, STALE)
    read_seconds = time.perf_counter() - started
    assert read is not None and len(read) == 20_000 and reader.reads == 1
    changed = [
        LiveWorker(r.name, r.address, 1, 2.0, r.hashrate, accepted=1) if i % 10 == 0 else r
        for i, r in enumerate(rows)
    ]
    tenth = pub.publish(store, changed, 1005.0)
    started = time.perf_counter()
    again = reader.read(store, 1005.0, STALE)
    again_seconds = time.perf_counter() - started
    assert reader.reads == 1 and reader.updates == 1  # only the 2 000 newer rows were read
    assert again is not None and {r.name: r for r in again} == {r.name: r for r in changed}
    idle = pub.publish(store, changed, 1010.0)
    assert reader.read(store, 1010.0, STALE) is None  # nothing changed, nothing re-read
    print(
        f"\n{store.backend}: publish 20000 rows {first.seconds:.3f} s, 2000 changed "
        f"{tenth.seconds:.3f} s, none changed {idle.seconds:.3f} s; read 20000 "
        f"{read_seconds:.3f} s, then the 2000 changed {again_seconds:.3f} s"
    )
    assert first.written == 20_000 and tenth.written == 2_000 and idle.written == 0
    # bounded on a busy 2-core machine: seconds at most, never minutes
    assert first.seconds < 30 and tenth.seconds < first.seconds + 5 and idle.seconds < 10
    store.close()


# -- the merge ------------------------------------------------------------------------------------


def test_merge_rows_of_several_processes() -> None:
    a = LiveWorker(
        "addr.x",
        "addr",
        connections=1,
        difficulty=4.0,
        hashrate=((60, 1e9), (300, 2e9)),
        accepted=5,
        accepted_work=5.0,
        rejected=(("stale", 1),),
        blocks=1,
        last_share=100.0,
        updated_at=10.0,
    )
    b = LiveWorker(
        "addr.x",
        "addr",
        connections=2,
        difficulty=8.0,
        hashrate=((60, 3e9),),
        accepted=2,
        accepted_work=4.0,
        rejected=(("stale", 2), ("duplicate", 1)),
        last_share=90.0,
        updated_at=11.0,
    )
    gone = LiveWorker("addr.x", "addr", difficulty=99.0, last_share=50.0, updated_at=12.0)
    merged = merge_rows([a, b, gone, LiveWorker("other", "other")])
    x = merged["addr.x"]
    assert x.connections == 3 and x.accepted == 7 and x.accepted_work == 9.0 and x.blocks == 1
    assert dict(x.hashrate) == {60: 4e9, 300: 2e9}
    assert dict(x.rejected) == {"stale": 3, "duplicate": 1}
    assert x.last_share == 100.0  # the latest
    assert x.difficulty == 8.0  # the most recent row WITH a connection (not the gone one's)
    snap = snapshot_of([a, b, LiveWorker("addr.y", "addr"), LiveWorker("o", "o")], 3)
    assert snap.by_address == {"addr": ["addr.x", "addr.y"], "o": ["o"]} and snap.version == 3


def server_with(now: float) -> Any:
    """The parts of a StratumServer the merge reads: its counters and hashrate meters."""
    return SimpleNamespace(stats=PoolStats(), hashrate=HashrateBook(now - 600.0))


def test_live_fields_merge_this_process_with_the_others() -> None:
    now = 1000.0
    server = server_with(now)
    local = server.stats.worker("addr.x", "addr")
    local.connections, local.difficulty, local.accepted, local.last_share = 1, 2.0, 3, 990.0
    server.hashrate.start_worker("addr.x", "addr", now - 600.0)
    for t in range(0, 60):  # one difficulty-1 share a second for the last minute
        server.hashrate.add_share(worker="addr.x", address="addr", difficulty=1.0, now=now - t)
    mine = live_fields(server, EMPTY_SNAPSHOT, "addr.x", now)["hashrate"]["1m"]
    assert mine == pytest.approx(HASHES_PER_DIFF1, rel=0.05)
    remote = LiveWorker(
        "addr.x",
        "addr",
        connections=2,
        difficulty=8.0,
        hashrate=((60, 5e9), (300, 1e9)),
        accepted=4,
        rejected=(("stale", 1),),
        last_share=995.0,
    )
    only_there = LiveWorker("addr.y", "addr", connections=1, hashrate=((60, 7e9),))
    snap = snapshot_of([remote, only_there], 1)
    got = live_fields(server, snap, "addr.x", now)
    assert got["online"] and got["connections"] == 3
    assert got["hashrate"]["1m"] == pytest.approx(mine + 5e9)
    assert got["difficulty"] == 2.0  # this process holds a connection: its difficulty
    assert got["shares"]["accepted"] == 7 and got["shares"]["rejected"] == {"stale": 1}
    assert got["live_last_share"] == 995.0
    y = live_fields(server, snap, "addr.y", now)  # connected only to another process
    assert y["online"] and y["connections"] == 1 and y["hashrate"]["1m"] == 7e9
    assert is_known(server, snap, "addr.y") and not is_known(server, EMPTY_SNAPSHOT, "addr.y")
    assert is_online(server, snap, "addr.y") and not is_online(server, EMPTY_SNAPSHOT, "addr.y")
    names, online = live_names(server, snap)
    assert names == {"addr.x", "addr.y"} and online == 2
    rates = address_rates(server, snap, "addr", now)
    assert rates["1m"] == pytest.approx(mine + 5e9 + 7e9, rel=0.01)
    assert others_rate(snap, 60, worker="addr.x") == 5e9
    assert others_rate(snap, 60, address="addr") == 12e9
    assert others_rate(snap, 300, address="addr") == 1e9
    assert others_rate(EMPTY_SNAPSHOT, 60, address="addr") == 0.0
    # the local side: what this process publishes
    local_only = {r.name: r for r in local_rows(server, now)}
    assert local_only["addr.x"].connections == 1 and local_only["addr.x"].accepted == 3
    assert dict(local_only["addr.x"].hashrate)[60] == pytest.approx(mine)


def test_webhook_monitor_sees_workers_of_other_processes() -> None:
    """A worker connected only to another process goes offline and comes back like one of
    this process's (WorkerWatch, fed ``merged_stats``)."""
    local: dict[str, WorkerStats] = {}
    watch = WorkerWatch(offline_seconds=60.0, started=0.0)
    there = snapshot_of([LiveWorker("addr.y", "addr", connections=1, last_share=100.0)], 1)
    assert watch.check(merged_stats(local, there), 120.0) == []
    events = watch.check(merged_stats(local, there), 161.0)
    assert [(e, d["worker"], a) for e, d, a in events] == [("worker_offline", "addr.y", "addr")]
    back = snapshot_of([LiveWorker("addr.y", "addr", connections=1, last_share=170.0)], 2)
    events = watch.check(merged_stats(local, back), 171.0)
    assert [(e, d["worker"]) for e, d, _ in events] == [("worker_back", "addr.y")]
    # this process's stats are never changed by the merge
    mine = WorkerStats("addr.x", "addr", connections=1, last_share=10.0)
    merged = merged_stats({"addr.x": mine}, snapshot_of([worker("addr.x", last_share=20.0)], 3))
    assert merged["addr.x"].last_share == 20.0 and merged["addr.x"].connections == 2
    assert mine.last_share == 10.0 and mine.connections == 1
    assert merged_stats(local, EMPTY_SNAPSHOT) is local  # one process: no copy, no cost


def test_monitor_keeps_a_stopped_process_workers_until_offline_and_skips_a_stale_view() -> None:
    """MonitorView: a worker only another process held, whose process stopped (its rows left
    the snapshot), still gets its worker_offline; while the snapshot is stale (this
    process's store degraded) the others' workers are left out, not reported offline."""
    view = MonitorView(keep_seconds=120.0)
    watch = WorkerWatch(offline_seconds=60.0, started=0.0)
    local: dict[str, WorkerStats] = {}
    there = snapshot_of([LiveWorker("addr.y", "addr", connections=1, last_share=100.0)], 1)
    assert watch.check(view(local, there, False, 110.0), 110.0) == []
    # the process holding addr.y stops: its rows leave the snapshot
    seen = view(local, EMPTY_SNAPSHOT, False, 130.0)
    assert seen["addr.y"].connections == 0 and seen["addr.y"].last_share == 100.0
    assert watch.check(seen, 130.0) == []
    events = watch.check(view(local, EMPTY_SNAPSHOT, False, 161.0), 161.0)
    assert [(e, d["worker"]) for e, d, _ in events] == [("worker_offline", "addr.y")]
    assert "addr.y" not in view(local, EMPTY_SNAPSHOT, False, 221.0)  # kept 120 s, then gone
    # a stale snapshot (frozen last shares): the others' workers are not watched meanwhile
    watch2 = WorkerWatch(offline_seconds=60.0, started=0.0)
    frozen = snapshot_of([LiveWorker("addr.z", "addr", connections=1, last_share=300.0)], 2)
    assert watch2.check(view(local, frozen, False, 310.0), 310.0) == []
    assert watch2.check(view(local, frozen, True, 400.0), 400.0) == []  # would be "offline"
    assert view(local, frozen, True, 400.0) is local
    assert "addr.z" in view(local, frozen, False, 401.0)  # readable again: watched again


def test_an_idle_worker_decaying_hashrate_is_not_rewritten_every_publish(
    make_store: MakeStore,  # noqa: F811
) -> None:
    """Rates that moved less than HASHRATE_TOLERANCE since the row was written are not
    written again (an idle worker's rates decay a little at every publish); a bigger move
    is, and the comparison is with what the table holds, so small moves cannot add up."""
    b = opened(make_store, "w1")
    beat(b, "w1", 100.0)
    pub = LivePublisher(0, "w1", PRUNE)
    rate = 1e9
    assert pub.publish(b, [worker("a.x", hashrate=((3600, rate),))], 100.0).written == 1
    small = rate * (1 - HASHRATE_TOLERANCE / 2)
    assert pub.publish(b, [worker("a.x", hashrate=((3600, small),))], 105.0).written == 0
    smaller = rate * (1 - HASHRATE_TOLERANCE * 1.5)  # two small moves: over it in all
    assert pub.publish(b, [worker("a.x", hashrate=((3600, smaller),))], 110.0).written == 1
    held = b.conn.execute("SELECT hashrate FROM live_workers").fetchone()[0]
    assert str(smaller)[:6] in str(held)
    assert pub.publish(b, [worker("a.x", hashrate=((3600, 0.0),))], 115.0).written == 1
    assert pub.publish(b, [worker("a.x", hashrate=((3600, 0.0),), accepted=1)], 120.0).written == 1


# -- the config key -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-1", "0.05", "1e9", "nan"])
def test_live_workers_seconds_is_validated(tmp_path: Path, value: str) -> None:
    path = tmp_path / "pool.toml"
    path.write_text(f"[ledger]\nlive_workers_seconds = {value}\n")
    with pytest.raises(
        ConfigError, match=r"ledger\.live_workers_seconds must be (0\.1\.\.3600|fin)"
    ):
        load(path, env={})


def test_live_workers_seconds_default_and_summary(tmp_path: Path) -> None:
    path = tmp_path / "pool.toml"
    path.write_text("[ledger]\nlive_workers_seconds = 2.5\n")
    config = load(path, env={})
    assert config.ledger.live_workers_seconds == 2.5
    path.write_text("")
    assert limits_summary(load(path, env={}))["ledger.live_workers_seconds"] == 5.0
