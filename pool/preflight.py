"""Checks of the machine a config will run on, made before anything starts.

``pool.config.validate`` checks the config on its own; these check it against the machine:
every listening port can be bound (then it is released at once), the data dir can be
written and every TLS port's certificate and key are usable. ``stratum-pool run`` makes them
before it starts bitcoind, so a port in use, a read-only data dir or a key that does not match
its certificate is one line naming the key, not a traceback after the node is up;
``stratum-pool config check`` makes them too (``--static`` skips them, e.g. for the config of a
pool that is running and so holds its ports).

``chain_sim_drift`` compares a saved simulated chain (``<data_dir>/chain_sim.json``) with the
configured ``chain.simulation``: the saved chain wins (it is the chain's history, as a real
chain's difficulty is), and every configured value it overrides is reported.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pool.config import Config, SimulationConfig
from pool.server import tls

CHAIN_SIM_FILE = "chain_sim.json"
# Subdirectories the pool writes to when they exist (bitcoind's datadir, the ledger).
WRITTEN_SUBDIRS = ("bitcoind", "ledger")


class PreflightError(RuntimeError):
    """The message starts with the config key at fault."""


def _why(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use (another process listens there)"
    return exc.strerror or str(exc)


def check_port(key: str, host: str, port: int) -> None:
    """Bind and listen on every address ``host`` resolves to (as the servers will, with
    SO_REUSEADDR), then release. PreflightError naming ``key`` if any bind fails."""
    if port == 0:
        return  # the system picks a free port
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise PreflightError(f"{key}: cannot resolve {host!r} ({exc.strerror})") from None
    for family, kind, proto, _name, address in dict.fromkeys(infos):
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(1)
        except OSError as exc:
            where = (
                f"[{address[0]}]:{port}" if family == socket.AF_INET6 else f"{address[0]}:{port}"
            )
            raise PreflightError(f"{key}: cannot listen on {where}: {_why(exc)}") from None
        finally:
            sock.close()


def check_ports(config: Config) -> None:
    for i, port in enumerate(config.stratum.ports):
        check_port(f"stratum.ports[{i}].port", config.stratum.host, port.port)
    if config.api.enabled:
        check_port("api.port", config.api.host, config.api.port)


def _check_writable(key: str, directory: Path) -> None:
    """Create and remove a file in ``directory`` (as root, permission bits say nothing: a
    read-only mount or an immutable directory only shows when writing)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".write-check-", dir=directory)
    except OSError as exc:
        raise PreflightError(f"{key}: {directory} is not writable ({_why(exc)})") from None
    try:
        os.write(fd, b"ok")
        os.fsync(fd)
    except OSError as exc:
        raise PreflightError(f"{key}: cannot write in {directory} ({_why(exc)})") from None
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name)


def check_data_dir(config: Config, *, create: bool) -> Path:
    """``pool.data_dir`` exists (made when ``create``) or can be made, and can be written,
    with the subdirectories the pool writes to. Returns the resolved path."""
    key = "pool.data_dir"
    path = Path(config.pool.data_dir).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise PreflightError(f"{key}: {path} exists and is not a directory")
    if not path.exists():
        if not create:
            parent = path.parent
            while not parent.exists():
                parent = parent.parent
            if not parent.is_dir():
                raise PreflightError(f"{key}: {parent} (on the way to {path}) is not a directory")
            _check_writable(key, parent)
            return path
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PreflightError(f"{key}: cannot create {path} ({_why(exc)})") from None
    _check_writable(key, path)
    for sub in WRITTEN_SUBDIRS:
        if (path / sub).is_dir():
            _check_writable(key, path / sub)
    return path


def check_environment(config: Config, *, create: bool = True) -> Path:
    """Every check of this module; the first failure raises PreflightError."""
    path = check_data_dir(config, create=create)
    check_ports(config)
    check_tls(config, path, create=create)
    return path


def check_tls(config: Config, data_dir: Path, *, create: bool) -> None:
    """Every TLS port's certificate and key can be read, are PEM, match and load; the pool's
    self-signed pair is made here on the first start (when ``create``)."""
    for i, port in enumerate(config.stratum.ports):
        try:
            tls.listener(i, port, data_dir, config.stratum.host, create=create)
        except tls.TlsError as exc:
            raise PreflightError(str(exc)) from None


@dataclass(frozen=True)
class Drift:
    """A configured ``chain.simulation`` value that a saved simulated chain overrides."""

    key: str
    saved: Any
    configured: Any

    def message(self, path: Path) -> str:
        return (
            f"{self.key} = {self.configured!r} is ignored: the simulated chain saved in {path} "
            f"goes on with {self.saved!r} (to restart the simulation with the configured values, "
            f"stop the pool and delete {path})"
        )


def chain_sim_drift(state: dict[str, Any], sim: SimulationConfig) -> list[Drift]:
    """The configured values that differ from those ``state`` (ChainSim.to_state) was made
    with. The saved chain is resumed as it is, so each of these is not applied."""
    pairs = (
        ("initial_difficulty", "initial_difficulty", sim.initial_difficulty),
        ("retarget_interval", "retarget_interval", sim.retarget_interval),
        ("target_spacing_seconds", "target_spacing", sim.target_spacing_seconds),
        ("clamp_factor", "clamp_factor", sim.clamp_factor),
        ("mainnet_difficulty", "mainnet_difficulty", sim.mainnet_difficulty or None),
    )
    out = []
    for name, field, configured in pairs:
        saved = state.get(field)
        if saved != configured:
            out.append(Drift(f"chain.simulation.{name}", saved, configured))
    return out


def saved_chain_sim_drift(config: Config, data_dir: Path) -> tuple[Path, list[Drift]]:
    """``chain_sim_drift`` of the chain saved under ``data_dir``, if any and readable (a file
    that cannot be used is reported by the start itself)."""
    path = data_dir / CHAIN_SIM_FILE
    if not config.chain.simulation.enabled or not path.is_file():
        return path, []
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return path, []
    if not isinstance(state, dict):
        return path, []
    return path, chain_sim_drift(state, config.chain.simulation)
