"""Test harness: an in-process pool on the session's real bitcoind, and a raw Stratum client."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from benchmarks.harness import toml_text
from pool.app import PoolApp
from pool.bitcoin import difficulty_to_target, sha256d
from pool.config import (
    ApiConfig,
    Config,
    LedgerConfig,
    LimitsConfig,
    NodeConfig,
    PoolConfig,
    PortConfig,
    StratumConfig,
    VardiffSettings,
)
from pool.miner import header_prefix as miner_header_prefix
from pool.miner import scan
from pool.node.binaries import Binaries
from pool.node.managed import ManagedNode, prepare_regtest_wallet
from stratum.events import Notify


async def wallet_address(node: ManagedNode, wallet: str = "pool", kind: str = "bech32") -> str:
    assert node.rpc is not None
    address: str = await node.rpc.call("getnewaddress", "", kind, wallet=wallet)
    return address


def pool_config(
    node: ManagedNode,
    data_dir: Path,
    payout_address: str,
    *,
    ports: tuple[PortConfig, ...] = (
        PortConfig(port=0, start_difficulty=1e-5, min_difficulty=1e-8, max_difficulty=1e6),
    ),
    vardiff: VardiffSettings | None = None,
    limits: LimitsConfig | None = None,
) -> Config:
    """A pool on ``node`` (external mode, cookie auth), Stratum on a free port."""
    return Config(
        node=NodeConfig(
            mode="external",
            rpc_url=node.rpc_url,
            cookie_file=str(node.cookie_file),
            template_refresh_seconds=30.0,
            poll_interval_seconds=0.5,
        ),
        pool=PoolConfig(payout_address=payout_address, data_dir=str(data_dir)),
        stratum=StratumConfig(ports=ports),
        limits=limits or LimitsConfig(),
        vardiff=vardiff or VardiffSettings(enabled=False),
        api=ApiConfig(port=0),  # a free port: tests never collide on 8080
        # Protocol and vardiff tests time shares at the pool: fsync every 50 ms, not per batch,
        # so disk latency does not queue them. The ledger's own tests use the batch default.
        ledger=LedgerConfig(journal_fsync="interval", journal_fsync_interval_ms=50),
    )


def pool_toml(
    data_dir: Path,
    port: int,
    *,
    node: ManagedNode | None = None,
    payout: str | None = None,
    start_difficulty: float = 5e-6,
    extra: dict[str, dict[str, Any]] | None = None,
) -> str:
    """The config file of a pool run as a process of its own (``stratum-pool run``) by the
    slow tests: an external ``node`` (cookie auth) or, without one, a managed regtest
    bitcoind; one Stratum port; quick vardiff; no API; JSON logs. ``extra``: sections merged
    over these (a key set to None is left out)."""
    if node is None:
        node_keys: dict[str, Any] = {"mode": "managed"}
    else:
        node_keys = {
            "mode": "external",
            "rpc_url": node.rpc_url,
            "cookie_file": str(node.cookie_file),
        }
    config: dict[str, dict[str, Any]] = {
        "node": node_keys | {"poll_interval_seconds": 0.5},
        "pool": {"data_dir": str(data_dir)}
        | ({} if payout is None else {"payout_address": payout}),
        "stratum": {"host": "127.0.0.1", "ports": [stratum_port(port, start_difficulty)]},
        "vardiff": {"target_interval_seconds": 0.3, "retarget_seconds": 5.0},
        "api": {"enabled": False},
        "logging": {"format": "json"},
    }
    for section, keys in (extra or {}).items():
        merged = config.get(section, {}) | keys
        config[section] = {k: v for k, v in merged.items() if v is not None}
    return toml_text(config)


def stratum_port(port: int, start_difficulty: float, **keys: Any) -> dict[str, Any]:
    """One ``[[stratum.ports]]`` table of ``pool_toml``, vardiff between 1e-8 and 1e6."""
    return {
        "port": port,
        **keys,
        "start_difficulty": start_difficulty,
        "min_difficulty": 1e-8,
        "max_difficulty": 1e6,
    }


ShareId = tuple[str, str, str, str]  # extranonce1+2, job id as sent, ntime, nonce (hex)


def miner_share_identity(share: dict[str, Any]) -> ShareId:
    """A share as the bundled miner records it (``--record``, or its pending list)."""
    return (
        share["extranonce1"] + share["extranonce2"],
        share["job_id"],
        share["ntime"],
        share["nonce"],
    )


def told_accepted(record_file: Path) -> list[ShareId]:
    """The shares a bundled miner (``--record FILE``) was told were accepted."""
    entries = (json.loads(line) for line in record_file.read_text().splitlines())
    return [miner_share_identity(e) for e in entries if e["accepted"]]


def journal_identity(record: dict[str, Any]) -> ShareId:
    """The same identity for a share record of the ledger's journal."""
    return (
        record["extranonce"],
        record["job"],
        f"{record['ntime']:08x}",
        f"{record['nonce']:08x}",
    )


@contextlib.asynccontextmanager
async def own_node(binaries: Binaries, datadir: Path) -> AsyncIterator[ManagedNode]:
    """A regtest bitcoind of a test module's own, with a funded "pool" wallet and a "miners"
    wallet; stopped afterwards, also when a test failed."""
    node = ManagedNode(datadir, binaries=binaries)
    await node.start()
    try:
        await prepare_regtest_wallet(node, "pool")
        await node.ensure_wallet("miners")
        yield node
    finally:
        await node.stop()


async def start_pool(config: Config) -> PoolApp:
    app = PoolApp(config)
    await app.start()
    return app


async def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    seen: Callable[[], object] = lambda: None,
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; saw {seen()!r}")
        await asyncio.sleep(0.05)


async def until(
    check: Callable[[], Awaitable[bool]], what: str, state: object, timeout: float = 60
) -> None:
    """``check`` (an async predicate: an HTTP or RPC call) polled until true; ``state`` (what
    the checks saw, filled in by them) goes into the failure message."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; saw {state!r}")
        await asyncio.sleep(0.2)


class RawClient:
    """A line-level Stratum client: sends exactly what a test says, records every message."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.messages: list[dict[str, Any]] = []
        self._next = 0
        self.extranonce1 = b""
        self.extranonce2_size = 0

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def close(self) -> None:
        self.writer.close()

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    def send(self, id: Any, method: str, params: list[Any]) -> None:
        line = json.dumps({"id": id, "method": method, "params": params}) + "\n"
        self.writer.write(line.encode())

    async def next_message(self, timeout: float = 10.0) -> dict[str, Any]:
        while self._next >= len(self.messages):
            line = await asyncio.wait_for(self.reader.readline(), timeout)
            if not line:
                raise ConnectionError("pool closed the connection")
            self.messages.append(json.loads(line))
        msg = self.messages[self._next]
        self._next += 1
        return msg

    async def response(self, id: Any, timeout: float = 10.0) -> dict[str, Any]:
        """The next response with this id (notifications before it are kept in messages)."""
        while True:
            msg = await self.next_message(timeout)
            if msg.get("method") is None and msg.get("id") == id:
                return msg

    async def notification(self, method: str, timeout: float = 10.0) -> dict[str, Any]:
        while True:
            msg = await self.next_message(timeout)
            if msg.get("method") == method:
                return msg

    async def handshake(self, user: str, password: str = "x") -> tuple[float, dict[str, Any]]:
        """subscribe + authorize; returns the difficulty set and the first notify."""
        self.send(1, "mining.subscribe", ["test-client/1"])
        sub = await self.response(1)
        self.extranonce1 = bytes.fromhex(sub["result"][1])
        self.extranonce2_size = sub["result"][2]
        self.send(2, "mining.authorize", [user, password])
        auth = await self.response(2)
        assert auth["result"] is True, auth
        diff = await self.notification("mining.set_difficulty")
        notify = await self.notification("mining.notify")
        return float(diff["params"][0]), notify


@dataclasses.dataclass
class Solution:
    job_id: str
    extranonce2: str
    ntime: str
    nonce: str
    hash_int: int

    def params(self, worker: str) -> list[str]:
        return [worker, self.job_id, self.extranonce2, self.ntime, self.nonce]


def header_prefix(notify_params: list[Any], extranonce: bytes, version: int | None = None) -> bytes:
    job = Notify(
        notify_params[0],
        notify_params[1],
        notify_params[2],
        notify_params[3],
        tuple(notify_params[4]),
        notify_params[5],
        notify_params[6],
        notify_params[7],
        notify_params[8],
    )
    return miner_header_prefix(
        job, extranonce, int(job.version, 16) if version is None else version
    )


def solve(
    notify_params: list[Any],
    extranonce1: bytes,
    extranonce2: bytes,
    difficulty: float,
    *,
    max_difficulty: float | None = None,
    version: int | None = None,
    start: int = 0,
) -> Solution:
    """A nonce meeting ``difficulty`` (and, if given, NOT meeting ``max_difficulty``)."""
    target = difficulty_to_target(difficulty)
    prefix = header_prefix(notify_params, extranonce1 + extranonce2, version)
    too_good = difficulty_to_target(max_difficulty) if max_difficulty else -1
    nonce = start
    while nonce < 1 << 32:
        for n in scan(prefix, nonce, 50000, target):
            h = int.from_bytes(sha256d(prefix + struct.pack("<I", n)), "little")
            if h > too_good:
                return Solution(
                    notify_params[0], extranonce2.hex(), notify_params[7], f"{n:08x}", h
                )
        nonce += 50000
    raise AssertionError("no solution found")
