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
from dataclasses import dataclass
from pathlib import Path

import structlog

from pool.node.binaries import Binaries, ensure
from pool.node.rpc import BitcoinRpc, RetryPolicy, RpcError, RpcRefused, RpcUnavailable

log = structlog.get_logger("pool.node.managed")

RPC_WALLET_ALREADY_LOADED = -35
RPC_WALLET_NOT_FOUND = -18


def free_port() -> int:
    """A free TCP port on the loopback (the OS picks; there is a small window for a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NodeStartError(RuntimeError):
    """bitcoind did not start or did not become ready; the message carries its log's tail."""


@dataclass(frozen=True)
class NodePorts:
    rpc: int
    p2p: int


class ManagedNode:
    """One regtest bitcoind process owned by us."""

    def __init__(
        self,
        datadir: Path,
        *,
        binaries: Binaries | None = None,
        rpc_port: int | None = None,
        p2p_port: int | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.datadir = datadir.resolve()
        self._binaries = binaries
        self.ports = NodePorts(rpc=rpc_port or free_port(), p2p=p2p_port or free_port())
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None
        self.rpc: BitcoinRpc | None = None

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.rpc}/"

    @property
    def cookie_file(self) -> Path:
        return self.datadir / "regtest" / ".cookie"

    @property
    def debug_log(self) -> Path:
        return self.datadir / "regtest" / "debug.log"

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
            *self.extra_args,
        ]

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.debug_log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no debug.log)"
        return "\n".join(text[-lines:])

    async def start(self, timeout: float = 60.0) -> BitcoinRpc:
        """Start bitcoind and wait until it answers RPC. Returns the RPC client."""
        binaries = self._binaries
        if binaries is None:
            binaries = await asyncio.to_thread(ensure)
        self.datadir.mkdir(parents=True, exist_ok=True)
        cmd = self.command(binaries.bitcoind)
        log.info(
            "bitcoind_starting",
            version=binaries.version,
            datadir=str(self.datadir),
            rpc_port=self.ports.rpc,
        )
        self.process = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.rpc = BitcoinRpc(
            self.rpc_url,
            cookie_file=self.cookie_file,
            retry=RetryPolicy(give_up_after=0.0, log_every=3600.0),
        )
        deadline = time.monotonic() + timeout
        last_error = ""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                stdout = self.process.stdout
                out = stdout.read().decode(errors="replace") if stdout else ""
                raise NodeStartError(
                    f"bitcoind exited with code {self.process.returncode} while starting.\n"
                    f"{out.strip()}\n--- debug.log tail ---\n{self.log_tail()}"
                )
            if not self.cookie_file.exists():  # bitcoind writes it when RPC is up: not yet
                last_error = f"no cookie file yet at {self.cookie_file}"
                await asyncio.sleep(0.05)
                continue
            try:
                await self.rpc.call("getblockchaininfo", retry=False, timeout=5.0)
            except RpcUnavailable as exc:
                last_error = str(exc)
                await asyncio.sleep(0.1)
                continue
            self.rpc.retry = RetryPolicy()
            log.info("bitcoind_ready", rpc_url=self.rpc_url)
            return self.rpc
        await self.stop()
        raise NodeStartError(
            f"bitcoind did not become ready within {timeout} s (last: {last_error}).\n"
            f"--- debug.log tail ---\n{self.log_tail()}"
        )

    async def ensure_wallet(self, name: str) -> None:
        """Create the wallet, or load it if it exists on disk, or accept it if already loaded."""
        assert self.rpc is not None
        await ensure_wallet(self.rpc, name)

    async def stop(self, timeout: float = 30.0) -> None:
        """Ask bitcoind to stop over RPC, wait for the process; kill it if it does not go."""
        proc, self.process = self.process, None
        rpc, self.rpc = self.rpc, None
        if proc is None:
            return
        if proc.poll() is None and rpc is not None:
            with contextlib.suppress(RpcError, OSError):
                await rpc.call("stop", retry=False, timeout=10.0)
        if rpc is not None:
            await rpc.close()
        try:
            await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout)
        except TimeoutError:
            log.warning("bitcoind_kill", reason="did not stop in time", timeout=timeout)
            proc.kill()
            await asyncio.to_thread(proc.wait)
        if proc.stdout is not None:
            proc.stdout.close()
        log.info("bitcoind_stopped", returncode=proc.returncode)


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
    return address
