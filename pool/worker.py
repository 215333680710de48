"""One Stratum worker process of several (``stratum-pool worker``, started by the supervisor
in pool/supervisor.py, never by hand): the resolved config the supervisor wrote, this
worker's index, and then the whole pool as one process runs it (pool/app.py), in its worker
role: its own journal and extranonce1 prefix, the pool-wide jobs only on the lead (index 0).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path

import structlog

from pool.config import Config
from pool.server.extranonce import ExtranonceAllocator, extranonce_space

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130


@dataclasses.dataclass(frozen=True)
class WorkerRole:
    """This process as one of ``server.processes`` Stratum workers (pool/supervisor.py): its
    index (its extranonce1 prefix), its journal, and whether it is the lead, the one process
    that runs the API and the pool-wide webhooks (workers, health). Payouts and block checks
    run in whichever process holds the payout lock (pool/ledger/payout_lock.py), so a
    survivor takes them over. The supervisor made the start-up checks already."""

    index: int
    journal_id: str
    lead: bool


def extranonces_for(config: Config, process: int) -> ExtranonceAllocator:
    """Process ``process``'s extranonce1 values (its prefix with ``pool.instance_id``; the
    whole space for a pool of one process and instance 0)."""
    size = config.pool.extranonce1_size
    space = extranonce_space(size, config.pool.instance_id, process, config.server.processes)
    return ExtranonceAllocator(size, space=space)


def _loop_factory(event_loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if event_loop != "uvloop":
        return None
    import uvloop  # the supervisor's process imported it already: it is there

    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_worker(config_path: Path, index: int) -> int:
    from pool import config as config_mod
    from pool import logs
    from pool.app import PoolApp, StartupError
    from pool.node.rpc import RpcError
    from pool.supervisor import journal_id

    try:
        data = json.loads(config_path.read_text())
        cfg = config_mod.from_data(data, str(config_path))
    except (OSError, ValueError) as exc:  # (ConfigError is a ValueError)
        print(f"error: worker config {config_path}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if not 0 <= index < cfg.server.processes:
        print(
            f"error: worker index {index} is not in 0..{cfg.server.processes - 1} "
            "(server.processes)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    name = journal_id(index)
    logs.configure(cfg.logging.level, cfg.logging.format)
    structlog.contextvars.bind_contextvars(worker=name)
    try:
        loop_factory = _loop_factory(cfg.stratum.event_loop)
    except ImportError:
        print("error: stratum.event_loop = 'uvloop' needs the uvloop package", file=sys.stderr)
        return EXIT_CONFIG
    app = PoolApp(cfg, WorkerRole(index=index, journal_id=name, lead=index == 0))
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(app.run_until_signalled())
    except StartupError as exc:
        print(f"error: worker {name} refusing to start: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (RpcError, OSError) as exc:
        print(f"error: worker {name}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_OK
