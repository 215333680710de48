"""Several Stratum worker processes on one host (``server.processes`` = N > 1).

The hot path does not change: each worker is a whole pool (its own event loop, listeners,
template watcher and ZMQ feed against the one bitcoind, its own journal: a share is
acknowledged only once that worker's journal wrote it), and every worker applies its journal
into the one ledger store with a checkpoint of its own (journal ``w<i>``; in a PostgreSQL
store shared by instances ``i<instance_id>-w<i>``), in the ledger's shared mode (each worker
reloads the pool-wide totals from the store). The supervisor:

1. makes the start-up checks once (config, ports, data dir, bans file, TLS pairs), starts the
   managed bitcoind (or checks the external one) and settles the payout address;
2. writes the resolved config for the workers (``<data_dir>/supervisor/worker-config.json``):
   the node as an external one (the managed node's RPC port, cookie and ZMQ address), every
   port 0 replaced by a free port (all workers listen on the same ports, SO_REUSEPORT);
3. starts N fresh interpreters (``python -m pool worker --index i``) that die with it
   (parent-death signal), and restarts one that exits or is killed, after a backoff
   (``server.worker_restart_backoff_seconds``, doubled up to the ``_max_``); a restarted
   worker replays its own journal first, so no acknowledged share is lost;
4. on SIGTERM/SIGINT asks every worker to drain (their own shutdown: miners asked to
   reconnect, journals committed and closed; killed after ``server.worker_stop_timeout_seconds``),
   then stops the managed bitcoind.

Worker 0 is the lead (``pool.app.WorkerRole``): the API (it reads and acts on a live pool's
state, which only a worker has; the store's process heartbeats give it the whole pool) and
the pool-wide webhooks (workers, health) run there only. Payouts and block checks run in the
worker holding the payout lock (pool/ledger/payout_lock.py: a survivor takes it over). The
workers' state is in ``<data_dir>/supervisor/workers.json`` (pids, restarts), which the
lead's /metrics reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import structlog

from pool import preflight
from pool.app import StartupError, payout_script_for
from pool.bitcoin import network_for_chain
from pool.config import Config, NodeConfig, limits_summary
from pool.node.lifecycle import Backoff, die_with_parent
from pool.node.managed import (
    ManagedNode,
    ensure_wallet,
    free_port,
    free_zmq_endpoint,
    prepare_regtest_wallet,
)
from pool.node.rpc import BitcoinRpc, RetryPolicy
from pool.server import tls
from pool.server.bans import BansFileError, load_bans
from pool.tasks import run_until_signalled
from pool.worker_status import STATE_DIR, status_path

log = structlog.get_logger("pool.supervisor")

WORKER_CONFIG = "worker-config.json"


def journal_id(index: int) -> str:
    """Worker ``index``'s journal (``<data_dir>/ledger/journal-w<i>``) and store checkpoint
    name (PostgreSQL: ``i<instance_id>-w<i>``, pool/ledger/shared.py)."""
    return f"w{index}"


@dataclasses.dataclass
class WorkerSlot:
    index: int
    journal_id: str
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started: float = 0.0  # wall clock of the last start
    last_exit: int | None = None

    def status(self) -> dict[str, Any]:
        running = self.proc is not None and self.proc.returncode is None
        return {
            "index": self.index,
            "journal_id": self.journal_id,
            "pid": self.proc.pid if self.proc is not None else None,
            "running": running,
            "restarts": self.restarts,
            "started": self.started,
            "last_exit": self.last_exit,
        }


def _hold_port(host: str) -> socket.socket:
    """A free port, held (bound, not listening, SO_REUSEPORT) so the workers can listen on it
    and nothing else takes it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host or "0.0.0.0", 0))
    return sock


class PoolSupervisor:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.data_dir = Path(config.pool.data_dir).resolve()
        self.state_dir = self.data_dir / STATE_DIR
        self.node: ManagedNode | None = None
        self.rpc: BitcoinRpc | None = None
        self.worker_config: Config | None = None
        self.slots = [WorkerSlot(i, journal_id(i)) for i in range(config.server.processes)]
        self._held: list[socket.socket] = []
        self._watchers: list[asyncio.Task[None]] = []
        self._stopping = False

    # -- start-up ---------------------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.config
        log.info("limits", **limits_summary(cfg))
        log.info(
            "supervisor_starting", processes=cfg.server.processes, instance=cfg.pool.instance_id
        )
        try:
            preflight.check_environment(cfg)
        except preflight.PreflightError as exc:
            raise StartupError(str(exc)) from None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            load_bans(self.data_dir / "bans.json")
        except BansFileError as exc:
            raise StartupError(f"{exc} (fix or remove it; the pool keeps its bans there)") from exc
        for index, port in enumerate(cfg.stratum.ports):  # self-signed pairs made once, here
            tls.listener(index, port, cfg.pool.data_dir, cfg.stratum.host)
        resolved = self._resolve_ports(cfg)
        node_cfg, address = await self._start_node()
        # limits.max_connections is the pool's total: each worker holds its share of it (the
        # kernel spreads connections evenly); the per-IP limits hold in each worker
        share = -(-cfg.limits.max_connections // len(self.slots))
        self.worker_config = dataclasses.replace(
            resolved,
            node=node_cfg,
            pool=dataclasses.replace(resolved.pool, payout_address=address),
            limits=dataclasses.replace(resolved.limits, max_connections=share),
        )
        log.info("limits_per_worker", max_connections=share, processes=len(self.slots))
        path = self._write_worker_config(self.worker_config)
        for slot in self.slots:
            self._watchers.append(
                asyncio.create_task(self._watch(slot, path), name=f"worker-{slot.journal_id}")
            )
        log.info(
            "supervisor_started",
            processes=len(self.slots),
            stratum_ports=[p.port for p in self.worker_config.stratum.ports],
            api_port=self.worker_config.api.port if self.worker_config.api.enabled else None,
            journals=[s.journal_id for s in self.slots],
        )

    def _resolve_ports(self, cfg: Config) -> Config:
        """Port 0 ("any free port") made one port all the workers share."""
        ports = []
        for port in cfg.stratum.ports:
            if port.port == 0:
                sock = _hold_port(cfg.stratum.host)
                self._held.append(sock)
                port = dataclasses.replace(port, port=sock.getsockname()[1])
            ports.append(port)
        api = cfg.api
        if api.enabled and api.port == 0:
            api = dataclasses.replace(api, port=free_port())
        return dataclasses.replace(
            cfg, stratum=dataclasses.replace(cfg.stratum, ports=tuple(ports)), api=api
        )

    async def _start_node(self) -> tuple[NodeConfig, str]:
        """bitcoind up (managed: started here, restarted when it dies) and the payout address
        settled; the node settings the workers use (always an external node to them)."""
        cfg = self.config
        node_cfg = cfg.node
        retry = RetryPolicy(give_up_after=node_cfg.rpc_give_up_seconds)
        if node_cfg.mode == "managed":
            zmq = node_cfg.zmq_hashblock
            endpoint = free_zmq_endpoint() if zmq == "auto" else zmq
            self.node = node = ManagedNode(
                self.data_dir / "bitcoind",
                zmq_hashblock=endpoint,
                restart_backoff=(
                    node_cfg.restart_backoff_seconds,
                    node_cfg.restart_backoff_max_seconds,
                ),
                stop_timeout=node_cfg.stop_timeout_seconds,
            )
            self.rpc = rpc = await node.start()
            rpc.retry = retry
            node.supervise()
            workers_node = dataclasses.replace(
                node_cfg,
                mode="external",
                rpc_url=node.rpc_url,
                rpc_user="",
                cookie_file=str(node.cookie_file),
                zmq_hashblock=endpoint,
            )
        else:
            from pool.app import PoolApp

            self.rpc = rpc = PoolApp(cfg)._external_rpc(retry)
            workers_node = node_cfg
        info = await rpc.call("getblockchaininfo")
        network = network_for_chain(info["chain"])
        address = cfg.pool.payout_address
        if not address:
            if self.node is not None:
                address = await prepare_regtest_wallet(self.node, node_cfg.wallet)
            elif network.name == "regtest":
                await ensure_wallet(rpc, node_cfg.wallet)
                address = await rpc.call("getnewaddress", "", "bech32", wallet=node_cfg.wallet)
            else:
                raise StartupError(
                    f"pool.payout_address must be set for an external node on {network.name}"
                )
        payout_script_for(address, network)
        log.info("payout_address", address=address, chain=network.name)
        return workers_node, address

    def _write_worker_config(self, config: Config) -> Path:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.state_dir / WORKER_CONFIG
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(dataclasses.asdict(config), f, indent=1)
        os.replace(tmp, path)
        return path

    # -- workers ----------------------------------------------------------------------------------
    async def _spawn(self, slot: WorkerSlot, config_path: Path) -> asyncio.subprocess.Process:
        # From the event loop's thread (long-lived): the parent-death signal fires when the
        # thread that forked the worker exits.
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pool",
            "worker",
            "--config-json",
            str(config_path),
            "--index",
            str(slot.index),
            stdin=asyncio.subprocess.DEVNULL,
            preexec_fn=functools.partial(_worker_setup, cpu := self._cpu_of(slot.index)),
        )
        slot.proc = proc
        slot.started = time.time()
        log.info(
            "worker_started", worker=slot.journal_id, pid=proc.pid, restarts=slot.restarts, cpu=cpu
        )
        self._write_status()
        return proc

    def _cpu_of(self, index: int) -> int | None:
        """Worker ``index``'s CPU with ``server.pin_workers`` (None: the kernel places it)."""
        if not self.config.server.pin_workers:
            return None
        cpus = sorted(os.sched_getaffinity(0))
        return cpus[index % len(cpus)]

    async def _watch(self, slot: WorkerSlot, config_path: Path) -> None:
        """Start the worker; whenever it exits while the pool runs, start it again (backoff)."""
        server = self.config.server
        backoff = Backoff(
            server.worker_restart_backoff_seconds, server.worker_restart_backoff_max_seconds
        )
        loop = asyncio.get_running_loop()
        while not self._stopping:
            proc = await self._spawn(slot, config_path)
            began = loop.time()
            code = await proc.wait()
            slot.last_exit = code
            if self._stopping:
                break
            slot.restarts += 1
            if loop.time() - began >= backoff.maximum:  # it ran a good while: start afresh
                backoff.reset()
            delay = backoff.next_delay()
            log.error(
                "worker_exited",
                worker=slot.journal_id,
                pid=proc.pid,
                code=code,
                signal=signal.Signals(-code).name if code < 0 else None,
                restarts=slot.restarts,
                restart_in_seconds=delay,
            )
            self._write_status()
            await asyncio.sleep(delay)

    def _write_status(self) -> None:
        data = {"supervisor_pid": os.getpid(), "workers": [s.status() for s in self.slots]}
        path = status_path(self.data_dir)
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(data))
            os.replace(tmp, path)
        except OSError as exc:  # bookkeeping for /metrics: never stops the pool
            log.warning("worker_status_not_written", error=repr(exc))

    # -- shutdown ---------------------------------------------------------------------------------
    async def stop(self) -> None:
        """Drain every worker (SIGTERM: their own graceful shutdown), then bitcoind."""
        self._stopping = True
        log.info("supervisor_stopping", workers=len(self.slots))
        try:
            await self._stop_workers()
        finally:
            for sock in self._held:
                sock.close()
            if self.node is not None:
                await self.node.stop()
            elif self.rpc is not None:
                await self.rpc.close()
        log.info("supervisor_stopped")

    async def _stop_workers(self) -> None:
        for task in self._watchers:  # no restart from here on
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        procs = [s.proc for s in self.slots if s.proc is not None and s.proc.returncode is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        timeout = self.config.server.worker_stop_timeout_seconds
        if procs:
            waits = [asyncio.ensure_future(p.wait()) for p in procs]
            _done, pending = await asyncio.wait(waits, timeout=timeout)
            for proc in procs:
                if proc.returncode is None:
                    log.error("worker_stop_timeout", pid=proc.pid, seconds=timeout)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            if pending:
                await asyncio.wait(pending, timeout=10)
        for slot in self.slots:
            if slot.proc is not None:
                slot.last_exit = slot.proc.returncode
            log.info("worker_stopped", worker=slot.journal_id, code=slot.last_exit)
        self._write_status()

    def stop_now(self) -> None:
        """A shutdown that failed or was interrupted: the workers and the node still go."""
        for slot in self.slots:
            proc = slot.proc
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        if self.node is not None:
            self.node.stop_now()

    async def run_until_signalled(self) -> None:
        await run_until_signalled(self.start, self.stop)


def _worker_setup(cpu: int | None) -> None:
    """In the worker between fork and exec: die with the supervisor; its CPU when pinned."""
    die_with_parent()
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def run_supervisor(config: Config) -> int:
    """``stratum-pool run`` with ``server.processes`` > 1 (exit codes as ``run``'s)."""
    from pool.node.binaries import BitcoindNotFound
    from pool.node.managed import NodeStartError
    from pool.node.rpc import RpcError

    supervisor = PoolSupervisor(config)
    try:
        with asyncio.Runner() as runner:
            runner.run(supervisor.run_until_signalled())
    except StartupError as exc:
        print(f"error: refusing to start: {exc}", file=sys.stderr)
        return 2
    except (BitcoindNotFound, NodeStartError, RpcError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:  # a shutdown that failed or was interrupted: workers and node still go
        supervisor.stop_now()
    return 0
