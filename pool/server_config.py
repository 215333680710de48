"""``[server]`` (Stratum worker processes on one host) and ``pool.instance_id``: the section's
dataclass, its checks and its start-up log entries (pool/config.py includes them)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pool.config import Config

MAX_PROCESSES = 64
MAX_INSTANCE_ID = 255  # the first byte of the extranonce1 prefix (pool/server/extranonce.py)


@dataclass(frozen=True)
class ServerConfig:
    """Stratum worker processes on this host (pool/supervisor.py). 1: the pool is one process
    (no supervisor); N > 1: a supervisor starts bitcoind once and N workers on the same ports
    (SO_REUSEPORT), each with its own journal and extranonce1 prefix, into one ledger store."""

    processes: int = 1
    worker_restart_backoff_seconds: float = 1.0  # a dead worker's first restart delay (doubles)
    worker_restart_backoff_max_seconds: float = 30.0  # ...up to this
    worker_stop_timeout_seconds: float = 60.0  # a draining worker is killed after this
    # worker i runs on CPU i (mod the CPUs the pool may use): a new block's fan-out then runs
    # on every core at once, never two workers on one core while another idles
    pin_workers: bool = False


def validate_server(config: Config, fail: Callable[[str, str], None]) -> None:
    """server.processes and pool.instance_id: ranges, the extranonce1 space left to each
    process. (The simulated chain works with several processes: its state is then shared
    through the ledger store, pool/chain_sim_state.py.)"""
    from pool.server.extranonce import extranonce_space

    server = config.server
    if not 1 <= server.processes <= MAX_PROCESSES:
        fail("server.processes", f"must be 1..{MAX_PROCESSES}")
    if not 0 <= config.pool.instance_id <= MAX_INSTANCE_ID:
        fail("pool.instance_id", f"must be 0..{MAX_INSTANCE_ID}")
    backoff, backoff_max = (
        server.worker_restart_backoff_seconds,
        server.worker_restart_backoff_max_seconds,
    )
    if not 0.01 <= backoff <= 60:
        fail("server.worker_restart_backoff_seconds", "must be 0.01..60 seconds")
    if not backoff <= backoff_max <= 3600:
        fail(
            "server.worker_restart_backoff_max_seconds",
            "must be server.worker_restart_backoff_seconds..3600 seconds",
        )
    if not 1 <= server.worker_stop_timeout_seconds <= 3600:
        fail("server.worker_stop_timeout_seconds", "must be 1..3600 seconds")
    space = extranonce_space(
        config.pool.extranonce1_size, config.pool.instance_id, 0, server.processes
    )
    if space.capacity <= config.limits.max_connections:
        fail(
            "pool.extranonce1_size",
            f"= {config.pool.extranonce1_size} leaves {space.capacity} extranonce1 values per "
            f"process once the prefix of pool.instance_id and server.processes "
            f"({space.prefix_bits} bits) is taken, not more than limits.max_connections "
            f"({config.limits.max_connections}): raise pool.extranonce1_size",
        )


def server_limits(config: Config) -> dict[str, Any]:
    """The section's entries of the start-up ``limits`` log line."""
    server = config.server
    return {
        "pool.instance_id": config.pool.instance_id,
        "server.processes": server.processes,
        "server.worker_restart_backoff_seconds": server.worker_restart_backoff_seconds,
        "server.worker_restart_backoff_max_seconds": server.worker_restart_backoff_max_seconds,
        "server.worker_stop_timeout_seconds": server.worker_stop_timeout_seconds,
        "server.pin_workers": server.pin_workers,
    }
