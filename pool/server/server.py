"""The Stratum listeners: ports, sessions, extranonce1 allocation, job broadcast, limits.

Data flows one way: the app hands finished jobs to ``publish``; sessions turn miners' bytes into
shares; every judged share goes to ``on_share`` (stats, hashrate, vardiff feedback through the
session, block submission for candidates before the miner gets its answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from pool.bitcoin import Network
from pool.config import Config, PortConfig
from pool.hashrate import HashrateBook
from pool.jobs import Job, JobTable
from pool.node.submit import BlockSubmission
from pool.server.auth import Credentials
from pool.server.bans import Bans
from pool.server.session import Session, notify_event
from pool.shares import DuplicateFilter, ShareResult
from pool.stats import FoundBlock, PoolStats
from pool.vardiff import VardiffConfig
from stratum.codec import encode_notification

log = structlog.get_logger("pool.server")

BlockSubmitter = Callable[[ShareResult], Awaitable[BlockSubmission]]
# Called for every judged share, after a block candidate was submitted and BEFORE the miner is
# answered (the ledger journals accepted shares here). An exception means "not recorded": the
# miner is told the share failed instead of "accepted".
ShareListener = Callable[
    [ShareResult, Credentials | None, float, BlockSubmission | None], Awaitable[None]
]

TICK_SECONDS = 2.0
PRUNE_SECONDS = 300.0
RESUMABLE_SESSIONS = 4096


class StratumServer:
    def __init__(
        self,
        config: Config,
        network: Network,
        *,
        submit_block: BlockSubmitter,
        jobs: JobTable | None = None,
    ) -> None:
        self.config = config
        self.network = network
        self.jobs = jobs or JobTable(max_jobs=config.pool.max_jobs)
        self.duplicates = DuplicateFilter()
        self.stats = PoolStats()
        self.hashrate = HashrateBook(time.time())
        self.submit_block = submit_block
        self.share_listeners: list[ShareListener] = []
        self.sessions: dict[int, Session] = {}
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._tick_task: asyncio.Task[None] | None = None
        self._conn_ids = itertools.count(1)
        self._per_ip: dict[str, int] = {}
        size = config.pool.extranonce1_size
        self._en1_bits = 8 * size
        self._en1_next = int.from_bytes(os.urandom(size), "big")
        self._en1_live: set[bytes] = set()
        self._en1_released: OrderedDict[bytes, None] = OrderedDict()
        self.bound_ports: list[int] = []
        self.accepting = True
        # Bans (the admin API edits them; saved to ``bans_path`` when set, see bans.py): IPs
        # refused at accept; worker names or bare addresses (all of that address's workers)
        # refused at authorize.
        self.banned_ips: set[str] = set()
        self.banned_workers: set[str] = set()
        self.bans_path: Path | None = None
        self.bans_lock = asyncio.Lock()  # one save of the bans file at a time

    # -- config -----------------------------------------------------------------------------------
    def vardiff_config(self, port: PortConfig) -> VardiffConfig:
        v = self.config.vardiff
        return VardiffConfig(
            target_interval=v.target_interval_seconds,
            retarget_shares=v.retarget_shares,
            retarget_time=v.retarget_seconds,
            tolerance=v.tolerance,
            min_difficulty=port.min_difficulty,
            max_difficulty=port.max_difficulty,
            enabled=v.enabled,
        )

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> list[int]:
        host = self.config.stratum.host
        for port in self.config.stratum.ports:
            server = await asyncio.start_server(
                lambda r, w, p=port: self._accept(r, w, p),  # type: ignore[misc]
                host=host,
                port=port.port,
                limit=self.config.limits.max_line_bytes * 2,
                reuse_address=True,
            )
            self._servers.append(server)
            bound = server.sockets[0].getsockname()[1]
            self.bound_ports.append(bound)
            log.info(
                "stratum_listening",
                host=host,
                port=bound,
                start_difficulty=port.start_difficulty,
                min_difficulty=port.min_difficulty,
                max_difficulty=port.max_difficulty,
            )
        self._tick_task = asyncio.create_task(self._tick_loop(), name="stratum-tick")
        return self.bound_ports

    async def stop(self, *, reconnect: bool = True) -> None:
        """Stop accepting, ask miners to reconnect (they come back when we are back), close."""
        self.accepting = False
        for server in self._servers:
            server.close()
        if self._tick_task is not None:
            self._tick_task.cancel()
        for session in list(self.sessions.values()):
            if reconnect:
                session.reconnect(wait=5)
            session.writer.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        log.info("stratum_stopped")

    # -- connections ------------------------------------------------------------------------------
    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: PortConfig
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peername = writer.get_extra_info("peername") or ("?", 0)
        ip = str(peername[0])
        limits = self.config.limits
        refusal = None
        if not self.accepting:
            refusal = "shutting down"
        elif ip in self.banned_ips:
            refusal = "banned IP"
        elif len(self.sessions) >= limits.max_connections:
            refusal = f"limits.max_connections ({limits.max_connections}) reached"
        elif self._per_ip.get(ip, 0) >= limits.max_connections_per_ip:
            refusal = f"limits.max_connections_per_ip ({limits.max_connections_per_ip}) reached"
        if refusal:
            log.warning("connection_refused", peer=ip, reason=refusal)
            writer.close()
            self._tasks.discard(task)
            return
        conn_id = next(self._conn_ids)
        session = Session(
            self,
            reader,
            writer,
            port=port,
            conn_id=conn_id,
            extranonce1=self._allocate_extranonce(),
            peer=f"{ip}:{peername[1]}",
        )
        self.sessions[conn_id] = session
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        session.log.info("connected")
        try:
            await session.run()
        finally:
            self.sessions.pop(conn_id, None)
            self._per_ip[ip] -= 1
            if not self._per_ip[ip]:
                del self._per_ip[ip]
            self._release_extranonce(session.extranonce1)
            for creds in session.workers.values():
                self.stats.worker(creds.name, creds.address).connections -= 1
            session.log.info("disconnected", reason=session.close_reason)
            self._tasks.discard(task)

    def _allocate_extranonce(self) -> bytes:
        size = self.config.pool.extranonce1_size
        for _ in range(1 << 16):
            self._en1_next = (self._en1_next + 1) % (1 << self._en1_bits)
            en1 = self._en1_next.to_bytes(size, "big")
            if en1 not in self._en1_live and en1 not in self._en1_released:
                self._en1_live.add(en1)
                return en1
        # Every nearby value is taken or parked for resumption: reuse the oldest parked one.
        en1, _ = self._en1_released.popitem(last=False)
        self._en1_live.add(en1)
        return en1

    def _release_extranonce(self, en1: bytes) -> None:
        self._en1_live.discard(en1)
        self._en1_released[en1] = None
        while len(self._en1_released) > RESUMABLE_SESSIONS:
            self._en1_released.popitem(last=False)

    def resume_extranonce(self, session: Session, session_id: str) -> bool:
        """Give a reconnecting miner its previous extranonce1 if it is free (session resume)."""
        try:
            wanted = bytes.fromhex(session_id)
        except ValueError:
            return False
        if len(wanted) != len(session.extranonce1) or wanted not in self._en1_released:
            return False
        del self._en1_released[wanted]
        self._en1_live.discard(session.extranonce1)
        self._en1_released[session.extranonce1] = None
        self._en1_live.add(wanted)
        session.extranonce1 = wanted
        return True

    def worker_connected(self, session: Session, creds: Credentials) -> None:
        now = time.time()
        stats = self.stats.worker(creds.name, creds.address)
        stats.connections += 1
        if self.hashrate.worker(creds.name) is None:
            self.hashrate.start_worker(creds.name, creds.address, now)

    # -- bans -------------------------------------------------------------------------------------
    def use_bans(self, path: Path, bans: Bans) -> None:
        """Enforce ``bans`` (as loaded from ``path``, see ``bans.load_bans``) and save every
        change there."""
        self.bans_path = path
        self.banned_ips, self.banned_workers = bans.ips, bans.workers
        log.info("bans_loaded", path=str(path), ips=len(bans.ips), workers=len(bans.workers))

    def bans_snapshot(self) -> Bans:
        """A copy of the bans, taken on the event loop's thread (the sets change there)."""
        return Bans(set(self.banned_ips), set(self.banned_workers))

    def worker_banned(self, creds: Credentials) -> bool:
        return creds.name in self.banned_workers or creds.address in self.banned_workers

    def drop_banned(self) -> int:
        """Close the live connections of banned IPs and banned workers; how many were closed."""
        dropped = 0
        for session in list(self.sessions.values()):
            ip = session.peer.rsplit(":", 1)[0]
            if ip in self.banned_ips:
                session.abort(f"IP {ip} banned")
            elif any(self.worker_banned(c) for c in session.workers.values()):
                session.abort("worker banned")
            else:
                continue
            dropped += 1
        return dropped

    # -- jobs -------------------------------------------------------------------------------------
    def publish(self, job: Job) -> None:
        """A new job: into the table (retiring old ones), then to every ready miner."""
        retired = self.jobs.add(job)
        self.duplicates.forget(j.job_id for j in retired)
        line = encode_notification(notify_event(job, job.job_id, job.clean))
        sent = 0
        for session in list(self.sessions.values()):
            if session.ready:
                session.send_job(job, notify_line=line)
                sent += 1
        log.info(
            "job_published",
            job_id=job.job_id,
            height=job.height,
            clean=job.clean,
            transactions=len(job.template.transactions),
            miners=sent,
        )

    # -- shares -----------------------------------------------------------------------------------
    async def on_share(
        self, session: Session, creds: Credentials | None, result: ShareResult, now: float
    ) -> None:
        name = creds.name if creds else None
        address = creds.address if creds else ""
        submission: BlockSubmission | None = None
        if result.accepted and result.block_candidate:
            submission = await self.submit_block(result)
            self.stats.record_block(
                FoundBlock(
                    height=submission.height,
                    hash=submission.block_hash,
                    worker=name or "",
                    status=submission.status.value,
                    reason=submission.reason,
                    time=now,
                )
            )
        # The ledger journals the share first: if it cannot, the share is not counted anywhere
        # and the miner is told so (the exception reaches the session).
        for listener in self.share_listeners:
            await listener(result, creds, now, submission)
        self.stats.record(name, address, result, now)
        if result.accepted and creds is not None:
            self.hashrate.add_share(
                worker=creds.name, address=creds.address, difficulty=result.difficulty, now=now
            )
        else:
            session.log.info(
                "share_rejected",
                worker=name or result.worker[:128],
                code=result.code,
                reason=result.message,
                job_id=result.job.job_id if result.job else None,
            )

    async def _tick_loop(self) -> None:
        last_prune = time.time()
        while True:
            await asyncio.sleep(TICK_SECONDS)
            now = time.time()
            for session in list(self.sessions.values()):
                session.tick(now)
            if now - last_prune >= PRUNE_SECONDS:
                last_prune = now
                self.hashrate.prune(now)  # meters idle longer than their largest window
