"""Extranonce1 prefixes of worker processes and instances (pool/server/extranonce.py): no two
processes of any instance ever hand out the same value; a session id of another process is
never resumed; the single-process default keeps the whole space; the config checks."""

from __future__ import annotations

import dataclasses
import json
from itertools import combinations

import pytest

from pool import config as cfg
from pool.config import Config, ConfigError, validate
from pool.server.extranonce import (
    ExtranonceAllocator,
    ExtranonceSpace,
    extranonce_space,
    process_bits,
)

# (instance_id, processes) of instances that share one ledger: each its own instance_id, any
# process count (instance 0 with one process has no prefix: a pool on its own, not in a set)
LAYOUTS = [(0, 2), (1, 1), (2, 2), (3, 4), (7, 3), (255, 64)]


def spaces(size: int) -> list[tuple[str, ExtranonceSpace]]:
    return [
        (f"i{inst}/{n}:p{p}", extranonce_space(size, inst, p, n))
        for inst, n in LAYOUTS
        for p in range(n)
    ]


def test_process_bits() -> None:
    assert [process_bits(n) for n in (1, 2, 3, 4, 5, 64)] == [0, 1, 2, 2, 3, 6]


def test_the_single_process_default_is_the_whole_space() -> None:
    space = extranonce_space(4)
    assert space == ExtranonceSpace(4) and space.capacity == 1 << 32
    assert ExtranonceAllocator(4).space.prefix_bits == 0


def test_capacity_per_process_with_the_default_size() -> None:
    assert extranonce_space(4, 0, 1, 2).capacity == 1 << 23  # 8 388 608 per process
    assert extranonce_space(4, 3, 63, 64).capacity == 1 << 18  # 262 144 per process
    with pytest.raises(ValueError, match="no room"):
        extranonce_space(2, 1, 0, 256)  # (not a valid config: processes <= 64)
    with pytest.raises(ValueError):
        extranonce_space(4, 0, 2, 2)
    with pytest.raises(ValueError):
        extranonce_space(4, 256, 0, 2)


def test_allocated_values_never_overlap_across_processes_and_instances() -> None:
    """Hundreds of values from every process of several instances (with different process
    counts): all distinct, each owned by its own space only."""
    seen: dict[bytes, str] = {}
    named = spaces(4)
    for name, space in named:
        alloc = ExtranonceAllocator(4, space=space)
        for _ in range(300):
            en1 = alloc.allocate()
            assert en1 not in seen, f"{en1.hex()} of {name} also of {seen.get(en1)}"
            seen[en1] = name
            owners = [n for n, s in named if s.owns(en1)]
            assert owners == [name]


def test_prefixes_are_disjoint_exhaustively_on_a_small_extranonce() -> None:
    """Size 3: every value of every process enumerated (no sampling)."""
    named = [(n, s) for n, s in spaces(3) if s.counter_bits <= 15]
    sets = {n: {s.value(c) for c in range(s.capacity)} for n, s in named}
    for a, b in combinations(sets, 2):
        assert not sets[a] & sets[b], f"{a} and {b} overlap"
    for name, space in named:
        assert all(space.owns(v) for v in sets[name])


def test_a_small_space_is_used_whole_and_wraps() -> None:
    space = extranonce_space(2, 1, 1, 2)  # 7 counter bits: 128 values
    alloc = ExtranonceAllocator(2, space=space, start=5)
    values = [alloc.allocate() for _ in range(space.capacity)]
    assert len(set(values)) == space.capacity and all(space.owns(v) for v in values)
    alloc.release(values[3])
    assert alloc.allocate() == values[3]  # the parked one, when nothing else is free


def test_a_session_of_another_process_is_not_resumed() -> None:
    mine = ExtranonceAllocator(4, space=extranonce_space(4, 0, 0, 2))
    other = ExtranonceAllocator(4, space=extranonce_space(4, 0, 1, 2))
    theirs = other.allocate()
    current = mine.allocate()
    assert mine.resume(current, theirs.hex()) is None  # the miner keeps a fresh value of mine
    old = mine.allocate()
    mine.release(old)
    assert mine.resume(current, old.hex()) == old  # its own parked session comes back
    # the whole-space allocator of one process resumes anything free (as before)
    alone = ExtranonceAllocator(4)
    assert alone.resume(alone.allocate(), theirs.hex()) == theirs


def with_server(config: Config, **fields: object) -> Config:
    return dataclasses.replace(config, server=dataclasses.replace(config.server, **fields))


def test_config_checks_processes_instance_and_room() -> None:
    base = Config()
    validate(with_server(base, processes=64), "t")
    for bad in (0, 65):
        with pytest.raises(ConfigError, match=r"server\.processes must be 1\.\.64"):
            validate(with_server(base, processes=bad), "t")
    for bad in (-1, 256):
        pool = dataclasses.replace(base.pool, instance_id=bad)
        with pytest.raises(ConfigError, match=r"pool\.instance_id must be 0\.\.255"):
            validate(dataclasses.replace(base, pool=pool), "t")
    small = dataclasses.replace(base.pool, extranonce1_size=2)
    validate(dataclasses.replace(base, pool=small), "t")  # one process: the whole space
    with pytest.raises(ConfigError, match=r"pool\.extranonce1_size = 2 leaves 128"):
        validate(with_server(dataclasses.replace(base, pool=small), processes=2), "t")
    with pytest.raises(ConfigError, match="worker_restart_backoff_max_seconds"):
        validate(with_server(base, worker_restart_backoff_max_seconds=0.5), "t")
    with pytest.raises(ConfigError, match="worker_stop_timeout_seconds"):
        validate(with_server(base, worker_stop_timeout_seconds=0), "t")


def test_several_processes_accept_the_simulated_chain() -> None:
    """The simulated chain is shared through the ledger store (pool/chain_sim_state.py)."""
    base = Config()
    sim = dataclasses.replace(base.chain.simulation, enabled=True)
    config = with_server(
        dataclasses.replace(base, chain=cfg.ChainConfig(simulation=sim)), processes=2
    )
    validate(config, "t")


def test_limits_summary_logs_the_new_keys() -> None:
    summary = cfg.limits_summary(with_server(Config(), processes=3))
    assert summary["server.processes"] == 3 and summary["pool.instance_id"] == 0
    assert summary["server.worker_stop_timeout_seconds"] == 60.0


def test_from_data_round_trips_a_resolved_config() -> None:
    config = with_server(Config(), processes=2)
    data = json.loads(json.dumps(dataclasses.asdict(config)))  # as the supervisor writes it
    assert cfg.from_data(data, "t") == dataclasses.replace(config, source=config.source)
    data["server"]["processes"] = 0
    with pytest.raises(ConfigError, match=r"server\.processes"):
        cfg.from_data(data, "t")
