"""Checks against the machine made before anything starts: real sockets, real directories."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pool import preflight
from pool.chain_sim import ChainSim
from pool.config import ApiConfig, Config, PoolConfig, PortConfig, SimulationConfig, StratumConfig
from pool.preflight import PreflightError


@pytest.fixture
def listener() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    yield int(sock.getsockname()[1])
    sock.close()


def config(tmp_path: Path, *, stratum: tuple[int, ...] = (0,), api: int = 0) -> Config:
    return Config(
        pool=PoolConfig(data_dir=str(tmp_path / "data")),
        stratum=StratumConfig(ports=tuple(PortConfig(port=p) for p in stratum)),
        api=ApiConfig(port=api),
    )


def test_free_ports_pass_and_are_released(tmp_path: Path) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = int(probe.getsockname()[1])
    probe.close()
    preflight.check_ports(config(tmp_path, stratum=(port,)))
    again = socket.socket()  # released: the pool can bind it right after the check
    again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    again.bind(("127.0.0.1", port))
    again.close()


def test_a_stratum_port_in_use_names_its_key(tmp_path: Path, listener: int) -> None:
    with pytest.raises(PreflightError) as info:
        preflight.check_ports(config(tmp_path, stratum=(0, listener)))
    text = str(info.value)
    assert text.startswith("stratum.ports[1].port: ")
    assert f"127.0.0.1:{listener}" in text and "already in use" in text


def test_the_api_port_in_use_names_its_key(tmp_path: Path, listener: int) -> None:
    with pytest.raises(PreflightError, match=r"^api\.port: .*already in use"):
        preflight.check_ports(config(tmp_path, api=listener))
    off = dataclasses.replace(
        config(tmp_path), api=ApiConfig(enabled=False, port=listener)
    )  # no API: its port is not needed
    preflight.check_ports(off)


def test_an_unresolvable_host_names_its_key(tmp_path: Path) -> None:
    bad = dataclasses.replace(
        config(tmp_path), stratum=StratumConfig(host="no-such-host.invalid", ports=(PortConfig(),))
    )
    with pytest.raises(PreflightError, match=r"^stratum\.ports\[0\]\.port: cannot resolve"):
        preflight.check_ports(bad)


def test_data_dir_made_when_missing_and_checked(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    assert preflight.check_data_dir(cfg, create=False) == tmp_path / "data"
    assert not (tmp_path / "data").exists()  # `config check` creates nothing
    assert preflight.check_data_dir(cfg, create=True) == tmp_path / "data"
    assert (tmp_path / "data").is_dir() and os.listdir(tmp_path / "data") == []


def test_data_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("x")
    with pytest.raises(PreflightError, match=r"^pool\.data_dir: .* is not a directory"):
        preflight.check_data_dir(config(tmp_path), create=True)


def _chattr(flag: str, path: Path) -> None:
    result = subprocess.run(["chattr", flag, str(path)], capture_output=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"chattr {flag} not possible here: {result.stderr.decode().strip()}")


@pytest.mark.parametrize("where", ["data", "data/ledger"])
def test_data_dir_or_ledger_dir_not_writable(tmp_path: Path, where: str) -> None:
    """chattr +i: not writable even for root (permission bits would not stop root)."""
    (tmp_path / "data" / "ledger").mkdir(parents=True)
    _chattr("+i", tmp_path / where)
    try:
        for create in (True, False):
            with pytest.raises(PreflightError, match=r"^pool\.data_dir: .* not writable") as info:
                preflight.check_data_dir(config(tmp_path), create=create)
            assert str(tmp_path / where) in str(info.value)
    finally:
        _chattr("-i", tmp_path / where)


def test_missing_data_dir_under_a_read_only_parent(tmp_path: Path) -> None:
    _chattr("+i", tmp_path)
    try:
        with pytest.raises(PreflightError, match=r"^pool\.data_dir: .*not writable"):
            preflight.check_data_dir(config(tmp_path), create=False)
        with pytest.raises(PreflightError, match=r"^pool\.data_dir: cannot create"):
            preflight.check_data_dir(config(tmp_path), create=True)
    finally:
        _chattr("-i", tmp_path)


def test_chain_sim_drift_names_each_changed_key_with_both_values() -> None:
    sim = SimulationConfig(enabled=True, initial_difficulty=2.0, retarget_interval=10)
    state = ChainSim(
        initial_difficulty=sim.initial_difficulty,
        retarget_interval=sim.retarget_interval,
        target_spacing=sim.target_spacing_seconds,
        clamp_factor=sim.clamp_factor,
        start_time=0.0,
    ).to_state()
    assert preflight.chain_sim_drift(state, sim) == []
    changed = dataclasses.replace(sim, initial_difficulty=0.5, clamp_factor=2.0)
    drifts = preflight.chain_sim_drift(state, changed)
    assert [(d.key, d.saved, d.configured) for d in drifts] == [
        ("chain.simulation.initial_difficulty", 2.0, 0.5),
        ("chain.simulation.clamp_factor", 4.0, 2.0),
    ]
    text = drifts[0].message(Path("d/chain_sim.json"))
    assert "chain.simulation.initial_difficulty = 0.5 is ignored" in text
    assert "goes on with 2.0" in text and "delete d/chain_sim.json" in text
