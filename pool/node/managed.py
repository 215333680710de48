"""A managed regtest bitcoind: started in a data dir on free loopback ports, stopped cleanly.

Used by ``stratum-pool run`` with the embedded default config, by scenarios and by the tests.
The RPC uses bitcoind's cookie file (no password in any process list or log).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from pool.node.binaries import Binaries, ensure
from pool.node.lifecycle import (
    Backoff,
    die_with_parent,
    parent_death_signal_supported,
    stop_leftovers,
)
from pool.node.rpc import (
    BitcoinRpc,
    RetryPolicy,
    RpcAuthError,
    RpcError,
    RpcRefused,
    RpcUnavailable,
)

log = structlog.get_logger("pool.node.managed")

RPC_THREADS = 32
RPC_WALLET_ALREADY_LOADED = -35
RPC_WALLET_NOT_FOUND = -18
SUPERVISE_INTERVAL = 0.2  # how often the supervisor looks whether the process still runs


def free_port() -> int:
    """A free TCP port on the loopback (the OS picks; there is a small window for a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_zmq_endpoint() -> str:
    """A ZMQ endpoint on a free loopback port, for a managed node's hashblock feed."""
    return f"tcp://127.0.0.1:{free_port()}"


class NodeStartError(RuntimeError):
    """bitcoind did not start or did not become ready; the message carries its log's tail."""


@dataclass(frozen=True)
class NodePorts:
    rpc: int
    p2p: int


class ManagedNode:
    """One regtest bitcoind process owned by us.

    It dies with the pool (parent-death signal: ``start`` must run on the event loop's thread),
    a leftover node of an earlier run on the same data dir is stopped before it starts, and
    ``supervise`` restarts it with backoff if it dies while the pool runs (same ports, same
    RPC client: the client re-reads the new cookie). ``restarts`` counts the restarts."""

    def __init__(
        self,
        datadir: Path,
        *,
        binaries: Binaries | None = None,
        rpc_port: int | None = None,
        p2p_port: int | None = None,
        extra_args: tuple[str, ...] = (),
        zmq_hashblock: str = "",
        die_with_parent: bool = True,
        restart_backoff: tuple[float, float] = (1.0, 30.0),
        stop_timeout: float = 30.0,
        ready_timeout: float = 60.0,
    ) -> None:
        self.datadir = datadir.resolve()
        self._binaries = binaries
        self.ports = NodePorts(rpc=rpc_port or free_port(), p2p=p2p_port or free_port())
        self.extra_args = extra_args
        self.zmq_hashblock = zmq_hashblock  # tcp://127.0.0.1:PORT: publish new block hashes
        self.die_with_parent = die_with_parent
        self.restart_backoff = restart_backoff
        self.stop_timeout = stop_timeout
        self.ready_timeout = ready_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.rpc: BitcoinRpc | None = None
        self.restarts = 0  # times the node died while the pool ran and was started again
        self.restart_failures = 0  # restart attempts that failed (retried with backoff)
        self.leftovers_stopped = 0  # leftover nodes of earlier runs stopped before the start
        self.restart_listeners: list[Callable[[], None]] = []
        self.exit_listeners: list[Callable[[], None]] = []  # called when the node died
        self._bitcoind: Path | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.rpc}/"

    @property
    def cookie_file(self) -> Path:
        return self.datadir / "regtest" / ".cookie"

    @property
    def debug_log(self) -> Path:
        return self.datadir / "regtest" / "debug.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self, bitcoind: Path) -> list[str]:
        return [
            str(bitcoind),
            "-regtest",
            f"-datadir={self.datadir}",
            "-server=1",
            "-listen=0",
            "-dnsseed=0",
            "-fixedseeds=0",
            "-rpcbind=127.0.0.1",
            "-rpcallowip=127.0.0.1",
            f"-rpcport={self.ports.rpc}",
            f"-port={self.ports.p2p}",
            "-fallbackfee=0.0002",
            "-printtoconsole=0",
            "-rpcworkqueue=64",
            # bitcoind keeps serving a long-poll its client gave up on (a pool stopped, or a
            # client-side timeout) until the next block or mempool change, holding one RPC
            # thread each: the default 4 would let a few pool restarts starve every RPC call.
            f"-rpcthreads={RPC_THREADS}",
            *([f"-zmqpubhashblock={self.zmq_hashblock}"] if self.zmq_hashblock else []),
            *self.extra_args,
        ]

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.debug_log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no debug.log)"
        return "\n".join(text[-lines:])

    def _spawn(self) -> subprocess.Popen[bytes]:
        """Start the process (on the calling thread: the parent-death signal is tied to it)."""
        assert self._bitcoind is not None
        # A cookie left by a node that was killed is stale: the new node writes its own.
        with contextlib.suppress(FileNotFoundError):
            self.cookie_file.unlink()
        preexec = (
            die_with_parent if self.die_with_parent and parent_death_signal_supported() else None
        )
        self.process = subprocess.Popen(
            self.command(self._bitcoind),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec,  # the loop's thread forks: the parent-death signal is tied to it
            # a terminal's Ctrl-C (SIGINT to the foreground group) reaches the pool alone: it
            # stops the node itself, after its own shutdown, over RPC
            start_new_session=True,
        )
        return self.process

    async def start(self, timeout: float | None = None) -> BitcoinRpc:
        """Stop any leftover node on the data dir, start bitcoind and wait until it answers
        RPC. Returns the RPC client. Must run on the event loop's (long-lived) thread."""
        self._stopping = False
        binaries = self._binaries
        if binaries is None:
            binaries = await asyncio.to_thread(ensure)
        self._bitcoind = binaries.bitcoind
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.leftovers_stopped += await stop_leftovers(
            self.datadir, self.cookie_file, timeout=self.stop_timeout
        )
        log.info(
            "bitcoind_starting",
            version=binaries.version,
            datadir=str(self.datadir),
            rpc_port=self.ports.rpc,
        )
        self._spawn()
        self.rpc = BitcoinRpc(
            self.rpc_url,
            cookie_file=self.cookie_file,
            retry=RetryPolicy(give_up_after=0.0, log_every=3600.0),
        )
        try:
            await self._wait_ready(self.ready_timeout if timeout is None else timeout)
        except BaseException:  # not ready, cancelled, interrupted: the process goes too
            await self.stop()
            raise
        self.rpc.retry = RetryPolicy()
        return self.rpc

    async def _wait_ready(self, timeout: float) -> None:
        proc, rpc = self.process, self.rpc
        assert proc is not None and rpc is not None
        deadline = time.monotonic() + timeout
        last_error = ""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                stdout = proc.stdout
                out = stdout.read().decode(errors="replace") if stdout else ""
                raise NodeStartError(
                    f"bitcoind exited with code {proc.returncode} while starting.\n"
                    f"{out.strip()}\n--- debug.log tail ---\n{self.log_tail()}"
                )
            if not self.cookie_file.exists():  # bitcoind writes it when RPC is up: not yet
                last_error = f"no cookie file yet at {self.cookie_file}"
                await asyncio.sleep(0.05)
                continue
            try:
                await rpc.call("getblockchaininfo", retry=False, timeout=5.0)
            except (RpcUnavailable, RpcAuthError) as exc:  # auth: the cookie being rewritten
                last_error = str(exc)
                await asyncio.sleep(0.1)
                continue
            log.info("bitcoind_ready", rpc_url=self.rpc_url, pid=proc.pid)
            return
        raise NodeStartError(
            f"bitcoind did not become ready within {timeout} s (last: {last_error}).\n"
            f"--- debug.log tail ---\n{self.log_tail()}"
        )

    # -- supervision --------------------------------------------------------------------------
    def supervise(self) -> asyncio.Task[None]:
        """Watch the process; if it dies, restart it with backoff until it runs again."""
        if self._supervisor is None or self._supervisor.done():
            self._supervisor = asyncio.create_task(self._supervise(), name="bitcoind-supervisor")
        return self._supervisor

    async def _supervise(self) -> None:
        backoff = Backoff(*self.restart_backoff)
        while not self._stopping:
            proc = self.process
            if proc is None:
                return
            while True:
                if proc.poll() is not None:
                    break
                await asyncio.sleep(SUPERVISE_INTERVAL)
            if self._stopping:
                return
            died = time.monotonic()
            log.error(
                "bitcoind_exited",
                returncode=proc.returncode,
                pid=proc.pid,
                debug_log_tail=self.log_tail(5),
                note="restarting it with backoff",
            )
            _close_output(proc)
            self.process = None
            _notify(self.exit_listeners)
            attempt = 0
            while not self._stopping:
                attempt += 1
                delay = backoff.next_delay()
                log.warning("bitcoind_restart_scheduled", attempt=attempt, in_seconds=delay)
                await asyncio.sleep(delay)
                try:
                    new = self._spawn()
                    await self._wait_ready(self.ready_timeout)
                except (NodeStartError, OSError) as exc:
                    self.restart_failures += 1
                    log.warning(
                        "bitcoind_restart_failed",
                        attempt=attempt,
                        error=str(exc).splitlines()[0] if str(exc) else repr(exc),
                    )
                    await self._end(self.process)
                    self.process = None
                    continue
                self.restarts += 1
                backoff.reset()
                log.warning(
                    "bitcoind_restarted",
                    pid=new.pid,
                    restarts=self.restarts,
                    attempts=attempt,
                    down_seconds=round(time.monotonic() - died, 1),
                )
                _notify(self.restart_listeners)
                break

    async def _end(self, proc: subprocess.Popen[bytes] | None) -> None:
        """Make sure ``proc`` is gone: SIGTERM, wait, SIGKILL."""
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                await asyncio.wait_for(asyncio.to_thread(proc.wait), self.stop_timeout)
            except TimeoutError:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        _close_output(proc)

    async def ensure_wallet(self, name: str) -> None:
        """Create the wallet, or load it if it exists on disk, or accept it if already loaded."""
        assert self.rpc is not None
        await ensure_wallet(self.rpc, name)

    async def stop(self, timeout: float | None = None) -> None:
        """Stop supervising; ask bitcoind to stop over RPC, wait for the process; kill it if it
        does not go. Safe to call more than once and after a failed start."""
        timeout = self.stop_timeout if timeout is None else timeout
        self._stopping = True
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None and not supervisor.done():
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        proc, self.process = self.process, None
        rpc, self.rpc = self.rpc, None
        try:
            if proc is not None and proc.poll() is None and rpc is not None:
                with contextlib.suppress(RpcError, OSError):
                    await rpc.call("stop", retry=False, timeout=10.0)
        finally:
            if rpc is not None:
                await rpc.close()
        if proc is None:
            return
        try:
            await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout)
        except TimeoutError:
            log.warning("bitcoind_kill", reason="did not stop in time", timeout=timeout)
            proc.kill()
            await asyncio.to_thread(proc.wait)
        _close_output(proc)
        log.info("bitcoind_stopped", returncode=proc.returncode)

    def stop_now(self, timeout: float = 30.0) -> None:
        """Last resort, without an event loop (a shutdown that failed or was interrupted):
        SIGTERM the process, wait, SIGKILL."""
        self._stopping = True
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        log.warning("bitcoind_stop_now", pid=proc.pid)
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        _close_output(proc)


def _notify(listeners: list[Callable[[], None]]) -> None:
    for listener in listeners:
        try:
            listener()
        except Exception as exc:  # a listener must not stop the supervision
            log.exception("bitcoind_listener_failed", error=repr(exc))


def _close_output(proc: subprocess.Popen[bytes]) -> None:
    if proc.stdout is not None:
        with contextlib.suppress(OSError):
            proc.stdout.close()


async def ensure_wallet(rpc: BitcoinRpc, name: str) -> None:
    """Create the wallet, or load it if it exists on disk, or accept it if already loaded."""
    loaded = await rpc.call("listwallets")
    if name in loaded:
        return
    try:
        await rpc.call("loadwallet", name)
    except RpcRefused as exc:
        if exc.code == RPC_WALLET_ALREADY_LOADED:
            return
        if exc.code != RPC_WALLET_NOT_FOUND:
            raise
        await rpc.call("createwallet", name)


async def prepare_regtest_wallet(
    node: ManagedNode, wallet: str, *, mature_blocks: int = 101
) -> str:
    """Create/load ``wallet``; if the chain is shorter than ``mature_blocks``, mine up to it to a
    fresh wallet address so coinbase rewards are spendable. Returns a bech32 wallet address."""
    assert node.rpc is not None
    await node.ensure_wallet(wallet)
    address: str = await node.rpc.call("getnewaddress", "", "bech32", wallet=wallet)
    height: int = await node.rpc.call("getblockcount")
    if height < mature_blocks:
        await node.rpc.call("generatetoaddress", mature_blocks - height, address, timeout=120.0)
        # bitcoind flushes its chain state to disk now and then; these blocks are nobody
        # else's: flush them now (gettxoutsetinfo does), so a node killed later keeps them.
        await node.rpc.call("gettxoutsetinfo", "none", timeout=120.0)
    return address
