"""The runner's side of the outsider benchmark: one regtest bitcoind per bench run, the pool as
a separate OS process per scenario (its CLI, a TOML config, pinned to one core) and the load
generator as another process (pinned to another core).

Nothing here reaches into the pool's internals: the pool is configured through its TOML file
(keys checked with ``stratum-pool config check``), started with ``python -m pool run`` and
watched through /proc. Only the managed regtest node (``pool.node``) is borrowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pool.node.binaries import ensure
from pool.node.managed import ManagedNode, free_port, prepare_regtest_wallet
from pool.node.rpc import BitcoinRpc

REPO = Path(__file__).resolve().parent.parent
BACKLOG = 8192  # ckpool's listen backlog; the kernel caps it at net.core.somaxconn


@dataclass(frozen=True)
class Cpus:
    """The core the pool is pinned to and the load generator's (None: not pinned)."""

    pool: int | None
    loadgen: int | None


def choose_cpus() -> Cpus:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return Cpus(None, None)
    return Cpus(cpus[0], cpus[1])


def child_setup(cpu: int | None, nice: int = 0) -> Callable[[], None]:
    """For ``preexec_fn``: what ``taskset -c CPU``, ``prlimit --nofile=HARD`` and ``nice -n
    NICE`` do, in the child just before it runs the program (so the pid measured is the
    program's)."""

    def setup() -> None:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        if nice:
            os.nice(nice)

    return setup


def proc_status(pid: int, key: str) -> str:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


# ------------------------------------------------------------------ the regtest node


@dataclass(frozen=True)
class Node:
    node: ManagedNode
    address: str  # a bech32 address of the node's wallet: miners' usernames, block rewards

    @property
    def rpc(self) -> BitcoinRpc:
        assert self.node.rpc is not None
        return self.node.rpc


@contextlib.asynccontextmanager
async def regtest_node(datadir: Path, wallet: str = "pool") -> AsyncIterator[Node]:
    """A managed regtest bitcoind (floating: not pinned) with ``wallet`` and mature coins."""
    node = ManagedNode(datadir, binaries=await asyncio.to_thread(ensure))
    await node.start()
    try:
        address = await prepare_regtest_wallet(node, wallet)
        yield Node(node, address)
    finally:
        await node.stop()


# ------------------------------------------------------------------ the pool's config


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    raise TypeError(f"no TOML for {value!r}")


def toml_text(config: dict[str, dict[str, Any]]) -> str:
    """Sections of scalars; a list of tables (``stratum.ports``) becomes ``[[section.key]]``;
    a section name with a dot (``chain.simulation``) is a nested table."""
    out: list[str] = []
    for section, keys in config.items():
        out.append(f"[{section}]")
        tables: list[tuple[str, list[dict[str, Any]]]] = []
        for key, value in keys.items():
            if isinstance(value, list):
                tables.append((key, value))
            else:
                out.append(f"{key} = {toml_value(value)}")
        for key, items in tables:
            for item in items:
                out.append(f"\n[[{section}.{key}]]")
                out.extend(f"{k} = {toml_value(v)}" for k, v in item.items())
        out.append("")
    return "\n".join(out)


def pool_config(
    node: Node,
    data_dir: Path,
    *,
    stratum_port: int,
    difficulty: float,
    max_difficulty: float = 1e15,
    api_port: int | None = None,
    simulation: bool = False,
    template_refresh_seconds: float = 30.0,
    event_loop: str = "asyncio",
    ledger: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """The bench's pool config: external node, one Stratum port at a fixed ``difficulty``
    (vardiff off), limits high enough for 20 000 connections from one IP, random-nonce
    floods allowed (invalid shares in a row), payouts off, logging as shipped (info)."""
    config: dict[str, dict[str, Any]] = {
        "node": {
            "mode": "external",
            "rpc_url": node.node.rpc_url,
            "cookie_file": str(node.node.cookie_file),
            "template_refresh_seconds": template_refresh_seconds,
        },
        "pool": {"payout_address": node.address, "data_dir": str(data_dir)},
        "stratum": {
            "host": "127.0.0.1",
            "event_loop": event_loop,
            "ports": [
                {
                    "port": stratum_port,
                    "start_difficulty": difficulty,
                    "min_difficulty": difficulty,
                    "max_difficulty": max_difficulty,
                }
            ],
        },
        "limits": {
            "max_connections": 30000,
            "max_connections_per_ip": 30000,
            "max_workers_per_connection": 128,
            "max_invalid_shares_in_row": 1_000_000_000,
            "handshake_timeout_seconds": 300.0,
            # One load generator on one IP: the per-IP abuse limits would throttle it.
            "connect_rate_per_ip": 1e9,
            "connect_burst_per_ip": 1_000_000,
            "max_unauthorized_per_ip": 30000,
            "max_workers_per_ip": 10_000_000,
            "max_workers_per_address": 10_000_000,
            "invalid_share_burst": 1_000_000_000,
        },
        "vardiff": {"enabled": False},
        "ledger": {"payout_interval_seconds": 0.0, **(ledger or {})},
        "api": {"enabled": api_port is not None, "port": api_port or free_port()},
        "logging": {"level": "info", "format": "json"},
    }
    if simulation:  # every hash meets the share target and none the network's: no blocks
        config["chain.simulation"] = {"enabled": True, "initial_difficulty": 1e12}
    return config


class PoolError(RuntimeError):
    """The pool refused the config, died or did not start; the message has its log's tail."""


def config_check(path: Path, src: Path = REPO) -> dict[str, Any]:
    """``stratum-pool config check``: the effective config as the pool reads it."""
    proc = subprocess.run(
        [sys.executable, "-m", "pool", "config", "check", str(path)],
        capture_output=True,
        text=True,
        cwd=src,
        check=False,
    )
    if proc.returncode != 0:
        raise PoolError(f"the pool refused the bench config: {proc.stderr.strip()}")
    effective: dict[str, Any] = json.loads(proc.stdout)
    return effective


def backlog_keys(effective: dict[str, Any]) -> list[tuple[str, str]]:
    """(section, key) of every config key that names a listen backlog, if the pool has one."""
    found = []
    for section, keys in effective.items():
        if isinstance(keys, dict):
            found += [(section, k) for k in keys if "backlog" in k]
            for name, value in keys.items():
                if isinstance(value, list) and value and isinstance(value[0], dict):
                    found += [(f"{section}.{name}[]", k) for k in value[0] if "backlog" in k]
    return found


def with_backlog(config: dict[str, dict[str, Any]], keys: list[tuple[str, str]]) -> None:
    for section, key in keys:
        if section.endswith("[]"):
            top, name = section[:-2].split(".", 1)
            for item in config[top][name]:
                item[key] = BACKLOG
        else:
            config.setdefault(section, {})[key] = BACKLOG


# ------------------------------------------------------------------ the pool process


class PoolProcess:
    """``python -m pool run --config FILE`` pinned to ``cpu``, logs to ``DIR/pool.log``. The
    pool's code is imported from ``src`` (``python -m`` puts the working directory first on
    the path): this checkout, or another tree such as ``git archive`` of an older commit."""

    def __init__(
        self,
        config: dict[str, dict[str, Any]],
        workdir: Path,
        cpu: int | None,
        src: Path = REPO,
    ) -> None:
        self.src = src
        self.config = config
        self.workdir = workdir
        self.cpu = cpu
        self.config_path = workdir / "pool.toml"
        self.log_path = workdir / "pool.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.meta: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def stratum_port(self) -> int:
        return int(self.config["stratum"]["ports"][0]["port"])

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no pool.log)"
        return "\n".join(text[-lines:])

    async def start(self, timeout: float = 60.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(toml_text(self.config))
        effective = await asyncio.to_thread(config_check, self.config_path, self.src)
        backlog = backlog_keys(effective)
        if backlog:
            with_backlog(self.config, backlog)
            self.config_path.write_text(toml_text(self.config))
            await asyncio.to_thread(config_check, self.config_path, self.src)
        command = [sys.executable, "-m", "pool", "run", "--config", str(self.config_path)]
        self.process = spawn(command, self.log_path, self.cpu, self.src)
        self.meta = {
            "command": command,
            "pool_src": str(self.src),
            "pinned_cpu": self.cpu,
            "backlog_keys": [f"{s}.{k}" for s, k in backlog] or "none in the pool's config",
        }
        ports = [self.stratum_port]
        if self.config["api"]["enabled"]:
            ports.append(int(self.config["api"]["port"]))
        deadline = time.monotonic() + timeout
        for port in ports:
            while not await _port_open(port):
                if self.process.poll() is not None:
                    raise PoolError(
                        f"the pool exited with code {self.process.returncode} while starting\n"
                        f"--- pool.log tail ---\n{self.log_tail()}"
                    )
                if time.monotonic() > deadline:
                    await self.stop()
                    raise PoolError(
                        f"the pool did not listen on {port} within {timeout} s\n"
                        f"--- pool.log tail ---\n{self.log_tail()}"
                    )
                await asyncio.sleep(0.1)
        self.meta["cpus_allowed"] = proc_status(self.pid, "Cpus_allowed_list")
        self.meta["nofile_limit"] = _nofile(self.pid)

    async def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (the pool's graceful stop), SIGKILL after ``timeout``. Returns the exit code."""
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout)
            except TimeoutError:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        self.meta["exit_code"] = proc.returncode
        return proc.returncode


def spawn(
    command: list[str], log_path: Path, cpu: int | None, cwd: Path
) -> subprocess.Popen[bytes]:
    """Start ``command`` in ``cwd`` pinned to ``cpu``, stdout and stderr into ``log_path``."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            preexec_fn=child_setup(cpu),
        )


async def _port_open(port: int) -> bool:
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _nofile(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return " ".join(line.split()[3:5])
    except OSError:
        pass
    return "?"


# ------------------------------------------------------------------ the load generator process


class LoadgenError(RuntimeError):
    pass


class Loadgen:
    """``python -m benchmarks.loadgen SPEC`` pinned to ``cpu``: JSON events on its stdout,
    JSON commands on its stdin. ``nice``: its scheduling niceness (0: as the runner's)."""

    def __init__(self, spec: dict[str, Any], cpu: int | None, nice: int = 0) -> None:
        self.spec = spec
        self.cpu = cpu
        self.nice = nice
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.loadgen",
            json.dumps(self.spec),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=REPO,
            env=env,
            limit=1 << 24,
            preexec_fn=child_setup(self.cpu, self.nice),
        )

    async def event(self, timeout: float) -> dict[str, Any]:
        """The next JSON event line (raises when the generator exits or is silent too long)."""
        assert self.process is not None and self.process.stdout is not None
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        except TimeoutError:
            await self.kill()
            raise LoadgenError(f"no word from the load generator in {timeout} s") from None
        if not line:
            code = await self.process.wait()
            raise LoadgenError(f"the load generator exited (code {code}) without a result")
        event: dict[str, Any] = json.loads(line)
        return event

    async def until(self, name: str, timeout: float) -> dict[str, Any]:
        while True:
            event = await self.event(timeout)
            if event["event"] == name:
                return event
            print(f"  loadgen: {json.dumps(event)[:300]}", flush=True)

    async def send(self, **command: Any) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        await self.process.stdin.drain()

    async def finish(self, timeout: float) -> dict[str, Any]:
        result = await self.until("result", timeout)
        assert self.process is not None
        if self.process.stdin is not None:
            self.process.stdin.close()
        await asyncio.wait_for(self.process.wait(), 30)
        result.pop("event")
        return result

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


async def run_loadgen(spec: dict[str, Any], cpus: Cpus, timeout: float) -> dict[str, Any]:
    """One load generator run to its end (killed if it does not finish)."""
    gen = Loadgen(spec, cpus.loadgen)
    await gen.start()
    try:
        return await gen.finish(timeout)
    finally:
        await gen.kill()


def loadgen_spec(mode: str, node: Node, pool: PoolProcess, **fields: Any) -> dict[str, Any]:
    """A load generator's spec against ``pool``'s Stratum port."""
    return {
        "mode": mode,
        "host": "127.0.0.1",
        "port": pool.stratum_port,
        "pool_pid": pool.pid,
        "address": node.address,
        "drain_timeout": 60.0,
        "connect_timeout": 120.0,
        **fields,
    }
