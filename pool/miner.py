"""``stratum-pool miner``: a real CPU miner on hashlib that speaks Stratum v1 like cpuminer.

    stratum-pool miner -o stratum+tcp://127.0.0.1:3333 -u ADDRESS.worker -p x --threads 2

What tests and scenarios need on top: ``--connections K`` (K workers ``<user>-0 .. <user>-K-1``
in one process), ``--hashrate H`` (each connection hashes at most H hashes per second, so the
pool's hashrate estimate can be checked against a known rate), ``--version-rolling``,
``--duration`` / ``--max-shares`` for a clean exit, ``--record FILE`` (one JSON line per share
with the pool's answer) and a summary of accepted and rejected shares at exit.

With ``--cpuminer-compat`` it behaves exactly like cpuminer 2.5.1 on the wire: no
mining.configure, no suggest_difficulty, every submit with id 4 and five params.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import signal
import struct
import sys
import time
from collections import Counter
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TextIO
from urllib.parse import urlsplit

from pool.bitcoin import difficulty_to_target, sha256d
from stratum.client import ClientConnection
from stratum.errors import RemoteProtocolError
from stratum.events import (
    AuthorizeResult,
    ConfigureResult,
    ConnectionClosed,
    NeedData,
    Notify,
    Reconnect,
    RequestFailed,
    SetDifficulty,
    SetExtranonce,
    SubmitResult,
    SubscribeResult,
)

USER_AGENT = "stratum-pool-miner/0.1"
CPUMINER_AGENT = "cpuminer/2.5.1"
CPUMINER_SUBMIT_ID = 4
MINER_VERSION_MASK = 0x1FFFE000
NONCE_SPACE = 1 << 32
STOP_GRACE_SECONDS = 2.0  # at stop, answers to shares already sent are awaited this long
MAX_THROTTLE_DEBT = 0.5  # seconds a throttled miner may fall behind before it resets its pace


def scan(prefix76: bytes, start: int, count: int, target: int) -> list[int]:
    """Nonces in [start, start+count) whose header hash is <= target (midstate on 64 bytes)."""
    mid = hashlib.sha256(prefix76[:64])
    tail = prefix76[64:76]
    sha256 = hashlib.sha256
    pack = struct.Struct("<I").pack
    top_limit = target >> 248
    found = []
    for nonce in range(start, min(start + count, NONCE_SPACE)):
        h = mid.copy()
        h.update(tail + pack(nonce))
        digest = sha256(h.digest()).digest()
        if digest[31] <= top_limit and int.from_bytes(digest, "little") <= target:
            found.append(nonce)
    return found


def header_prefix(job: Notify, extranonce: bytes, version: int) -> bytes:
    """The first 76 header bytes (all but the nonce) for ``job`` with this extranonce
    (extranonce1 + extranonce2) and header version."""
    coinbase = bytes.fromhex(job.coinb1) + extranonce + bytes.fromhex(job.coinb2)
    root = sha256d(coinbase)
    for branch in job.merkle_branch:
        root = sha256d(root + bytes.fromhex(branch))
    return (
        struct.pack("<I", version)
        + stratum_prevhash_to_internal(job.prevhash)
        + root
        + struct.pack("<II", int(job.ntime, 16), int(job.nbits, 16))
    )


def stratum_prevhash_to_internal(prevhash: str) -> bytes:
    raw = bytes.fromhex(prevhash)
    return b"".join(raw[i : i + 4][::-1] for i in range(0, 32, 4))


@dataclass
class WorkUnit:
    job_id: str
    prefix76: bytes
    extranonce2: str
    ntime: str
    version_bits: str | None
    target: int
    difficulty: float
    prevhash: str


@dataclass
class MinerOptions:
    host: str
    port: int
    user: str
    password: str = "x"
    threads: int = 1
    connections: int = 1
    hashrate: float | None = None
    version_rolling: bool = False
    cpuminer_compat: bool = False
    suggest_difficulty: float | None = None
    duration: float | None = None
    max_shares: int | None = None
    record: str | None = None
    batch: int = 20000


def throttle(done: int, rate: float, elapsed: float) -> tuple[float, float]:
    """The pace of a throttled miner: ``done`` hashes ``elapsed`` seconds after its start, at
    ``rate`` per second. Returns (seconds to sleep, seconds to move the start later). A miner
    that fell more than MAX_THROTTLE_DEBT behind (CPU busy) forgives itself the rest: it keeps
    its rate steady instead of bursting to catch up."""
    ahead = done / rate - elapsed
    if ahead > 0:
        return ahead, 0.0
    if ahead < -MAX_THROTTLE_DEBT:
        return 0.0, -ahead - MAX_THROTTLE_DEBT
    return 0.0, 0.0


@dataclass
class MinerStats:
    accepted: int = 0
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    hashes: int = 0
    accepted_work: float = 0.0
    discarded_stale: int = 0
    started: float = field(default_factory=time.monotonic)

    def summary(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self.started
        return {
            "accepted": self.accepted,
            "rejected": self.rejected,
            "reasons": dict(self.reasons),
            "hashes": self.hashes,
            "elapsed": round(elapsed, 3),
            "hashrate": self.hashes / elapsed if elapsed > 0 else 0.0,
            "accepted_work": self.accepted_work,
            "discarded_stale": self.discarded_stale,
        }


class MinerConnection:
    """One Stratum connection (one worker) of the miner."""

    def __init__(self, miner: Miner, worker: str) -> None:
        self.miner = miner
        self.opts = miner.opts
        self.worker = worker
        self.client = ClientConnection(
            fixed_submit_id=CPUMINER_SUBMIT_ID if self.opts.cpuminer_compat else None
        )
        self.writer: asyncio.StreamWriter | None = None
        self.extranonce1 = b""
        self.extranonce2_size = 4
        self.difficulty = 1.0  # cpuminer resets to 1 at every subscribe
        self.version_mask = 0
        self.job: Notify | None = None
        self.job_difficulty = 1.0
        self.job_changed = asyncio.Event()
        self.authorized = asyncio.Event()
        self.en2_counter = 0
        self.pending: list[dict[str, Any]] = []  # FIFO of submitted shares awaiting answers
        self.session_id: str | None = None
        self.reconnect_to: tuple[str, int] | None = None

    def send(self, data: bytes) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(data)

    async def run(self) -> None:
        host, port = self.opts.host, self.opts.port
        while not self.miner.stopping.is_set():
            try:
                reader, self.writer = await asyncio.open_connection(host, port)
            except OSError as exc:
                self.miner.log(f"{self.worker}: connect to {host}:{port} failed: {exc}")
                await self.miner.sleep(1.0)
                continue
            self.client = ClientConnection(
                fixed_submit_id=CPUMINER_SUBMIT_ID if self.opts.cpuminer_compat else None
            )
            self.job = None
            self.pending.clear()  # shares of a lost connection get no answer: never pair them
            self.authorized.clear()
            hasher = asyncio.create_task(self.hash_loop())
            try:
                self.handshake()
                await self.read_loop(reader)
            except OSError as exc:
                # A pool that dies with our submits unread resets the connection (RST), which
                # the read raises; like EOF it means: reconnect, never stop mining silently.
                self.miner.log(f"{self.worker}: connection lost: {exc!r}")
            finally:
                hasher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await hasher
                self.writer.close()
            if self.reconnect_to is not None:
                host, port = self.reconnect_to
                self.reconnect_to = None
            await self.miner.sleep(0.5)

    def handshake(self) -> None:
        if self.opts.version_rolling and not self.opts.cpuminer_compat:
            self.send(
                self.client.configure(
                    ["version-rolling"],
                    {
                        "version-rolling.mask": f"{MINER_VERSION_MASK:08x}",
                        "version-rolling.min-bit-count": 2,
                    },
                )
            )
        agent = CPUMINER_AGENT if self.opts.cpuminer_compat else USER_AGENT
        self.send(self.client.subscribe(agent, self.session_id))
        if self.opts.suggest_difficulty and not self.opts.cpuminer_compat:
            self.send(self.client.suggest_difficulty(self.opts.suggest_difficulty))
        self.send(self.client.authorize(self.worker, self.opts.password))

    async def read_loop(self, reader: asyncio.StreamReader) -> None:
        while not self.miner.stopping.is_set():
            read = asyncio.create_task(reader.read(65536))
            stop = asyncio.create_task(self.miner.stopping.wait())
            done, _ = await asyncio.wait({read, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if read not in done:
                # Stopping: shares already sent still get their answers (bounded wait), so the
                # summary and --record count every share the pool judged.
                if self.pending:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(STOP_GRACE_SECONDS):
                            while self.pending:
                                data = await read
                                if not data:
                                    break
                                self.client.receive_data(data)
                                if not self._drain_events():
                                    break
                                read = asyncio.create_task(reader.read(65536))
                read.cancel()
                return
            data = read.result()
            self.client.receive_data(data)
            if not self._drain_events():
                return
            if not data:
                self.miner.log(f"{self.worker}: pool closed the connection")
                return

    def _drain_events(self) -> bool:
        """Handle every complete event received; False when the connection is over."""
        while True:
            try:
                event = self.client.next_event()
            except RemoteProtocolError as exc:
                self.miner.log(f"{self.worker}: protocol error from the pool: {exc.message}")
                return False
            if isinstance(event, NeedData):
                return True
            if isinstance(event, ConnectionClosed):
                return False
            self.on_event(event)

    def on_event(self, event: object) -> None:
        if isinstance(event, SubscribeResult):
            self.extranonce1 = bytes.fromhex(event.extranonce1)
            self.extranonce2_size = event.extranonce2_size
            self.session_id = event.session_id
            self.difficulty = 1.0
        elif isinstance(event, RequestFailed) and event.method == "mining.subscribe":
            if self.session_id is not None:  # as cpuminer: retry without the session id
                self.session_id = None
                self.send(
                    self.client.subscribe(
                        CPUMINER_AGENT if self.opts.cpuminer_compat else USER_AGENT
                    )
                )
        elif isinstance(event, AuthorizeResult):
            if event.ok:
                self.authorized.set()
            else:
                self.miner.log(f"{self.worker}: authorize refused: {event.error}")
                self.miner.failed = True
                self.miner.stopping.set()
        elif isinstance(event, SetDifficulty):
            self.difficulty = event.difficulty
        elif isinstance(event, SetExtranonce):
            self.extranonce1 = bytes.fromhex(event.extranonce1)
            self.extranonce2_size = event.extranonce2_size
        elif isinstance(event, Notify):
            if self.job is None or event.job_id != self.job.job_id:
                self.job = event
                self.job_difficulty = self.difficulty  # applied at the next notify, as cpuminer
                self.job_changed.set()
        elif isinstance(event, SubmitResult):
            self.on_submit_result(event)
        elif isinstance(event, Reconnect):
            if event.host and event.port:
                self.reconnect_to = (event.host, event.port)
            if self.writer is not None:
                self.writer.close()
        elif isinstance(event, ConfigureResult):
            self.version_mask = self.client.version_mask or 0

    def on_submit_result(self, event: SubmitResult) -> None:
        share = self.pending.pop(0) if self.pending else {}
        stats = self.miner.stats
        if event.accepted:
            stats.accepted += 1
            stats.accepted_work += float(share.get("difficulty", 0.0))
        else:
            stats.rejected += 1
            reason = event.error[1] if event.error else "rejected"
            stats.reasons[reason] += 1
        self.miner.record(
            {
                **share,
                "worker": self.worker,
                "accepted": event.accepted,
                "error": list(event.error) if event.error else None,
            }
        )
        if self.opts.max_shares and stats.accepted + stats.rejected >= self.opts.max_shares:
            self.miner.stopping.set()

    def work_unit(self, job: Notify) -> WorkUnit:
        en2 = (self.en2_counter % (1 << (8 * self.extranonce2_size))).to_bytes(
            self.extranonce2_size, "big"
        )
        self.en2_counter += 1
        version = int(job.version, 16)
        version_bits = None
        if self.version_mask:
            rolled = (self.en2_counter * 0x2000) & self.version_mask
            version = (version & ~self.version_mask) | rolled
            version_bits = f"{rolled:08x}"
        prefix = header_prefix(job, self.extranonce1 + en2, version)
        return WorkUnit(
            job.job_id,
            prefix,
            en2.hex(),
            job.ntime,
            version_bits,
            difficulty_to_target(self.job_difficulty),
            self.job_difficulty,
            job.prevhash,
        )

    async def hash_loop(self) -> None:
        await self.authorized.wait()
        loop = asyncio.get_running_loop()
        rate = self.opts.hashrate
        batch = self.opts.batch if rate is None else max(1, min(self.opts.batch, int(rate / 10)))
        start = time.monotonic()
        done = 0
        while not self.miner.stopping.is_set():
            if self.job is None:
                self.job_changed.clear()
                await self.job_changed.wait()
                continue
            self.job_changed.clear()
            unit = self.work_unit(self.job)
            nonce = 0
            while nonce < NONCE_SPACE and not self.job_changed.is_set():
                found = await loop.run_in_executor(
                    self.miner.executor, scan, unit.prefix76, nonce, batch, unit.target
                )
                count = min(batch, NONCE_SPACE - nonce)
                nonce += count
                done += count
                self.miner.stats.hashes += count
                for n in found:
                    self.submit(unit, n)
                if rate is not None:
                    pause, forgive = throttle(done, rate, time.monotonic() - start)
                    start += forgive
                    if pause > 0:
                        await asyncio.sleep(pause)

    def submit(self, unit: WorkUnit, nonce: int) -> None:
        if self.job is None or self.miner.stopping.is_set():
            return
        if self.job.job_id != unit.job_id and self.job.prevhash != unit.prevhash:
            # As cpuminer: work for a previous block is stale, discard it instead of sending.
            self.miner.stats.discarded_stale += 1
            return
        nonce_hex = f"{nonce:08x}"
        self.pending.append(
            {
                "job_id": unit.job_id,
                "extranonce1": self.extranonce1.hex(),
                "extranonce2": unit.extranonce2,
                "ntime": unit.ntime,
                "nonce": nonce_hex,
                "difficulty": unit.difficulty,
            }
        )
        self.send(
            self.client.submit(
                self.worker, unit.job_id, unit.extranonce2, unit.ntime, nonce_hex, unit.version_bits
            )
        )


class Miner:
    def __init__(self, opts: MinerOptions, *, out: TextIO | None = None) -> None:
        self.opts = opts
        self.out = out or sys.stderr
        self.stats = MinerStats()
        self.stopping = asyncio.Event()
        self.failed = False
        self.executor: Executor = (
            ProcessPoolExecutor(opts.threads) if opts.threads > 1 else ThreadPoolExecutor(1)
        )
        self._record: TextIO | None = open(opts.record, "a") if opts.record else None  # noqa: SIM115
        if opts.connections == 1:
            names = [opts.user]
        else:
            names = [
                f"{opts.user}-{i}" if "." in opts.user else f"{opts.user}.w{i}"
                for i in range(opts.connections)
            ]
        self.connections = [MinerConnection(self, name) for name in names]

    def log(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def record(self, entry: dict[str, Any]) -> None:
        if self._record is not None:
            self._record.write(json.dumps(entry) + "\n")
            self._record.flush()

    async def sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.stopping.wait()

    async def run(self) -> dict[str, Any]:
        tasks = [asyncio.create_task(c.run()) for c in self.connections]
        try:
            if self.opts.duration is not None:
                await self.sleep(self.opts.duration)
                self.stopping.set()
            await self.stopping.wait()
            await asyncio.sleep(0.3)  # let the answers to the last submits arrive
        finally:
            self.stopping.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.executor.shutdown(wait=True, cancel_futures=True)
            if self._record is not None:
                self._record.close()
        return self.stats.summary()


def parse_url(url: str) -> tuple[str, int]:
    if "://" not in url:
        url = "stratum+tcp://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("stratum+tcp", "tcp") or not parts.hostname or not parts.port:
        raise ValueError(f"pool URL must look like stratum+tcp://HOST:PORT, got {url!r}")
    return parts.hostname, parts.port


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--url", required=True, help="stratum+tcp://HOST:PORT")
    p.add_argument("-u", "--user", required=True, help="ADDRESS or ADDRESS.worker")
    p.add_argument("-p", "--password", default="x", help="password (d=N fixes the difficulty)")
    p.add_argument("-t", "--threads", type=int, default=1, help="hashing processes")
    p.add_argument("--connections", type=int, default=1, help="workers in this process")
    p.add_argument("--hashrate", type=float, help="hashes per second per connection (throttle)")
    p.add_argument("--version-rolling", action="store_true", help="negotiate BIP310")
    p.add_argument(
        "--cpuminer-compat",
        action="store_true",
        help="speak exactly as cpuminer 2.5.1 (submit id 4, 5 params, no configure)",
    )
    p.add_argument("--suggest-difficulty", type=float, help="send mining.suggest_difficulty")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--max-shares", type=int, help="stop after this many answered shares")
    p.add_argument("--record", help="append one JSON line per answered share to this file")


def run_from_args(args: argparse.Namespace) -> int:
    try:
        host, port = parse_url(args.url)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name in ("threads", "connections"):
        if getattr(args, name) < 1:
            print(f"error: --{name} must be at least 1", file=sys.stderr)
            return 2
    if args.hashrate is not None and args.hashrate <= 0:
        print("error: --hashrate must be positive", file=sys.stderr)
        return 2
    opts = MinerOptions(
        host=host,
        port=port,
        user=args.user,
        password=args.password,
        threads=args.threads,
        connections=args.connections,
        hashrate=args.hashrate,
        version_rolling=args.version_rolling,
        cpuminer_compat=args.cpuminer_compat,
        suggest_difficulty=args.suggest_difficulty,
        duration=args.duration,
        max_shares=args.max_shares,
        record=args.record,
    )

    async def main() -> tuple[dict[str, Any], bool]:
        miner = Miner(opts)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, miner.stopping.set)
        summary = await miner.run()
        return summary, miner.failed

    summary, failed = asyncio.run(main())
    print(json.dumps(summary), flush=True)
    return 1 if failed else 0
