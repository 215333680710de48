"""The Stratum listeners: ports, admission, job broadcast, share recording, block submission.

Data flows one way: the app hands finished jobs to ``publish``; sessions move miners' bytes
through their pure PoolConnection; accepted shares come back here to be journaled (the
``share_recorder``: the ledger) before their answers go out; a block candidate is
submitted in the background at once, so no miner's answer ever waits for bitcoind, and the
outcome goes to the ``block_listeners``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import itertools
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

from pool.bitcoin import Network
from pool.config import Config, PortConfig
from pool.hashrate import HashrateBook
from pool.jobs import Job, JobTable
from pool.logs import LogLimiter, clip
from pool.node.submit import BlockSubmission
from pool.server import tls
from pool.server.auth import Credentials
from pool.server.bans import Bans
from pool.server.context import PoolContext, WorkerLimits
from pool.server.core import CoreSettings, PoolConnection, ShareEvent, notify_event
from pool.server.guard import GuardSettings, TempBan
from pool.server.session import Session
from pool.server.solo import SoloJobs
from pool.shares import ShareResult
from pool.stats import FoundBlock, PoolStats
from pool.vardiff import VardiffConfig
from stratum.events import Notify
from stratum.notifications import encode_notification

log = structlog.get_logger("pool.server")

BlockSubmitter = Callable[[ShareResult], Awaitable[BlockSubmission]]
# (the accepted shares of one read, now, the connection's port scheme) -> a future done when
# they are durable (the ledger's journal), given BEFORE their miner is answered. Failed (or
# raising): none is recorded, the miner is told so instead of "accepted", they count nowhere.
ShareRecorder = Callable[[list[tuple[ShareResult, Credentials]], float, str], "asyncio.Future[Any]"]
# Called once a block candidate's submission is settled (after its share was recorded).
BlockListener = Callable[[ShareResult, Credentials | None, float, BlockSubmission], Awaitable[None]]

TICK_SECONDS = 1.0  # connection deadlines are checked this often
PRUNE_SECONDS = 300.0
GUARD_PRUNE_SECONDS = 30.0  # idle workers evicted and spent per-IP records forgotten this often
REJECT_SUMMARY_SECONDS = 60.0  # rejected shares are logged as one summary this often
NOT_RECORDED_LOG_SECONDS = 1.0  # shares the ledger refused: at most one error line this often


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
        limits = config.limits
        self.ctx = PoolContext(
            network=network,
            jobs=self.jobs,
            extranonce1_size=config.pool.extranonce1_size,
            now=time.time(),
            guard=GuardSettings(
                connect_rate_per_ip=limits.connect_rate_per_ip,
                connect_burst_per_ip=limits.connect_burst_per_ip,
                ban_strikes=limits.ban_strikes,
                strike_decay_seconds=limits.strike_decay_seconds,
                ban_seconds=limits.ban_seconds,
                ban_max_seconds=limits.ban_max_seconds,
                ban_forgive_seconds=limits.ban_forgive_seconds,
                max_tracked_ips=limits.max_tracked_ips,
            ),
            workers=WorkerLimits(
                per_address=limits.max_workers_per_address,
                per_ip=limits.max_workers_per_ip,
                idle_seconds=limits.worker_idle_seconds,
            ),
            log_limiter=LogLimiter(limits.log_lines_per_second, limits.log_burst),
        )
        self.submit_block = submit_block
        self.share_recorder: ShareRecorder | None = None
        self.block_listeners: list[BlockListener] = []
        self.sessions: dict[int, Session] = {}
        self._servers: list[asyncio.AbstractServer] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._tick_task: asyncio.Task[None] | None = None
        self._conn_ids = itertools.count(1)
        self._per_ip: dict[str, int] = {}
        # Connections not yet authorized, per IP, oldest first (over the cap the oldest goes).
        self._unauthorized: dict[str, dict[int, Session]] = {}
        self.bound_ports: list[int] = []
        self.port_list: list[dict[str, Any]] = []  # per port: its number, name, whether TLS
        self.accepting = True
        self.send_queue_bytes = config.limits.send_queue_bytes
        self._not_recorded = 0  # shares the ledger refused since the last log line about it
        self._not_recorded_logged = 0.0
        # Bans (the admin API edits them; saved to ``bans_path`` when set, see bans.py): IPs
        # refused at accept; worker names or bare addresses (all of that address's workers)
        # refused at authorize.
        self.banned_ips: set[str] = set()
        self.bans_path: Path | None = None
        self.bans_lock = asyncio.Lock()  # one save of the bans file at a time

    # -- shared state (read by the API and the tests) ---------------------------------------------
    @property
    def stats(self) -> PoolStats:
        return self.ctx.stats

    @property
    def hashrate(self) -> HashrateBook:
        return self.ctx.hashrate

    @property
    def banned_workers(self) -> set[str]:
        return self.ctx.banned_workers

    @banned_workers.setter
    def banned_workers(self, value: set[str]) -> None:
        self.ctx.banned_workers = value

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

    def core_settings(self, port: PortConfig) -> CoreSettings:
        cfg = self.config
        limits = cfg.limits
        return CoreSettings(
            extranonce2_size=cfg.pool.extranonce2_size,
            version_rolling_mask=int(cfg.stratum.version_rolling_mask, 16),
            vardiff=self.vardiff_config(port),
            start_difficulty=port.start_difficulty,
            max_line_bytes=limits.max_line_bytes,
            handshake_timeout=limits.handshake_timeout_seconds,
            idle_timeout=limits.idle_timeout_seconds,
            max_workers=limits.max_workers_per_connection,
            max_invalid_in_row=limits.max_invalid_shares_in_row,
            max_ntime_ahead=cfg.stratum.max_ntime_ahead_seconds,
            max_sent_jobs=2 * self.jobs.max_jobs,
            invalid_share_burst=limits.invalid_share_burst,
            invalid_share_ratio=limits.invalid_share_ratio,
            invalid_share_window=limits.invalid_share_window_seconds,
            scheme=port.scheme,
            solo=SoloJobs(self.jobs, port.solo_fee_bps) if port.scheme == "solo" else None,
        )

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> list[int]:
        host = self.config.stratum.host
        loop = asyncio.get_running_loop()
        for index, port in enumerate(self.config.stratum.ports):
            settings = self.core_settings(port)
            # None: a plain port (a TLS one's files were checked by the preflight already)
            secure = tls.listener(index, port, self.config.pool.data_dir, host)
            plain = functools.partial(self._new_session, settings)
            timeout = self.config.limits.handshake_timeout_seconds
            factory: Callable[[], asyncio.Protocol] = (
                plain if secure is None else tls.gate_factory(plain, secure, timeout)
            )
            server = await loop.create_server(
                factory,
                host=host,
                port=port.port,
                reuse_address=True,
                reuse_port=self.config.server.processes > 1,  # worker processes share a port
                backlog=self.config.limits.listen_backlog,
            )
            self._servers.append(server)
            bound = server.sockets[0].getsockname()[1]
            self.bound_ports.append(bound)
            tls_fields = tls.describe(secure)
            scheme = port.scheme or self.config.ledger.scheme  # the port's payout scheme
            self.port_list.append(
                {"port": bound, "name": port.name, "scheme": scheme, **tls_fields}
            )
            log.info(
                "stratum_listening",
                host=host,
                port=bound,
                **tls_fields,
                **({"cert": str(secure.cert)} if secure is not None else {}),
                start_difficulty=port.start_difficulty,
                min_difficulty=port.min_difficulty,
                max_difficulty=port.max_difficulty,
                scheme=port.scheme or None,  # (solo_fee_bps: in the start-up "limits" line)
                backlog=self.config.limits.listen_backlog,
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
            session.close("pool stopping")
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)
        tasks = list(self._tasks)
        if tasks:  # block submissions in flight: let them finish (each has its own timeout)
            await asyncio.wait(tasks, timeout=30)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._log_reject_summary()
        log.info("stratum_stopped")

    # -- connections ------------------------------------------------------------------------------
    def _new_session(self, settings: CoreSettings) -> Session:
        return Session(self, settings)

    def admit(self, session: Session) -> None:
        """A new TCP connection: refuse it (closed at once, logged at a bounded rate) or give
        it its core. Half-open connections never lock an IP out: over
        ``max_unauthorized_per_ip`` (or at ``max_connections_per_ip``) the IP's oldest
        connection not yet authorized is dropped to make room."""
        settings = session.settings
        transport = session.transport
        assert transport is not None
        ip = session.ip
        limits = self.config.limits
        now = time.time()
        refusal = None
        if not self.accepting:
            refusal = "shutting down"
        elif ip in self.banned_ips:
            refusal = "banned IP"
        elif (why := self.ctx.guard.admit(ip, now)) is not None:
            refusal = why
        elif len(self.sessions) >= limits.max_connections:
            refusal = f"limits.max_connections ({limits.max_connections}) reached"
        elif self._per_ip.get(ip, 0) >= limits.max_connections_per_ip and not self._evict_half_open(
            ip, f"limits.max_connections_per_ip ({limits.max_connections_per_ip}) reached"
        ):
            refusal = f"limits.max_connections_per_ip ({limits.max_connections_per_ip}) reached"
        if refusal:
            self._log_limited("connection_refused", now, peer=ip, reason=refusal)
            session.closed = True
            transport.close()
            return
        half_open = self._unauthorized.get(ip)
        cap = min(limits.max_unauthorized_per_ip, limits.max_connections_per_ip)
        if half_open is not None and len(half_open) >= cap:
            self._evict_half_open(ip, f"limits.max_unauthorized_per_ip ({cap}) reached")
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn_id = next(self._conn_ids)
        session.conn_id = conn_id
        session.core = PoolConnection(
            self.ctx,
            settings,
            conn_id=conn_id,
            extranonce1=self.ctx.extranonces.allocate(),
            now=now,
            peer=session.peer,
            ip=ip,
        )
        self.sessions[conn_id] = session
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        self._unauthorized.setdefault(ip, {})[conn_id] = session
        session.core.note("connected", now)

    def _evict_half_open(self, ip: str, why: str) -> bool:
        """Drop ``ip``'s oldest connection that is not authorized yet; False if it has none."""
        half_open = self._unauthorized.get(ip)
        if not half_open:
            return False
        conn_id = next(iter(half_open))
        victim = half_open.pop(conn_id)
        if not half_open:
            del self._unauthorized[ip]
        victim.abort(f"dropped, still not authorized, for a newer connection: {why}")
        return True

    def authorized(self, session: Session) -> None:
        half_open = self._unauthorized.get(session.ip)
        if half_open is not None:
            half_open.pop(session.conn_id, None)
            if not half_open:
                del self._unauthorized[session.ip]

    def forget(self, session: Session) -> None:
        """The connection is gone: free its slot, extranonce1 and worker counts."""
        core = session.core
        if core is None or self.sessions.pop(session.conn_id, None) is None:
            return
        ip = session.ip
        self._per_ip[ip] -= 1
        if not self._per_ip[ip]:
            del self._per_ip[ip]
        self.authorized(session)  # off the half-open list, if still on it
        self.ctx.extranonces.release(core.extranonce1)
        now = time.time()
        for creds in core.workers.values():
            self.ctx.worker_disconnected(creds, now, ip)
        core.note("disconnected", now, reason=core.close_reason)

    def _log_limited(self, event: str, now: float, **fields: object) -> None:
        suppressed = self.ctx.log_limiter.allow(event, now)
        if suppressed >= 0:
            log.warning(event, suppressed=suppressed, **fields)

    # -- temporary IP bans (the guard's; in memory) -----------------------------------------------
    def temp_bans(self) -> list[TempBan]:
        """The temporary IP bans in force (soonest to end first)."""
        return self.ctx.guard.bans(time.time())

    def lift_temp_ban(self, ip: str) -> bool:
        """End ``ip``'s temporary ban now (an operator's unban); False if it had none."""
        lifted = self.ctx.guard.unban(ip)
        if lifted:
            log.warning("ip_temp_ban_lifted", ip=ip)
        return lifted

    def _enforce_new_bans(self, now: float) -> None:
        """Log the guard's new bans and drop every live connection of those IPs."""
        bans = self.ctx.guard.take_new_bans()
        if not bans:
            return
        for ban in bans:
            self._log_limited(
                "ip_temp_banned",
                now,
                ip=ban.ip,
                seconds=ban.seconds,
                bans=ban.bans,
                reason=ban.reason,
            )
        for session in list(self.sessions.values()):
            if self.ctx.guard.banned(session.ip, now) is not None:
                session.abort("IP temporarily banned")

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
        return self.ctx.worker_banned(creds)

    def drop_banned(self) -> int:
        """Close the live connections of banned IPs and banned workers; how many were closed."""
        dropped = 0
        for session in list(self.sessions.values()):
            core = session.core
            if session.ip in self.banned_ips:
                session.abort(f"IP {session.ip} banned")
            elif core is not None and any(self.worker_banned(c) for c in core.workers.values()):
                session.abort("worker banned")
            else:
                continue
            dropped += 1
        return dropped

    def reconnect_all(self, wait: int = 0) -> int:
        """client.reconnect to every miner, then close (miners that ignore it reconnect too)."""
        sessions = list(self.sessions.values())
        for session in sessions:
            session.reconnect(wait=wait)
            session.close("asked to reconnect")
        return len(sessions)

    def show_message(self, text: str, worker: str | None = None) -> int:
        """client.show_message to every subscribed miner, or only to the connections of
        ``worker`` (a worker name, or a bare address: all its workers); how many got it."""
        sent = 0
        for session in list(self.sessions.values()):
            core = session.core
            if core is None or session.closed:
                continue
            if worker is not None and not any(
                c.name == worker or c.address == worker for c in core.workers.values()
            ):
                continue
            data = core.show_message(text)
            if data:
                session.send(data)
                sent += 1
        return sent

    # -- jobs -------------------------------------------------------------------------------------
    def publish(self, job: Job) -> None:
        """A new job: into the table (retiring old ones), then to every ready miner."""
        retired = self.jobs.add(job)
        self.ctx.duplicates.forget(j.job_id for j in retired)
        event = notify_event(job, job.job_id, job.clean)
        notify = (event, encode_notification(event))
        now = time.time()
        # No garbage-collector pass mid-fan-out (a full one walks every connection's objects)
        gc_was_enabled = gc.isenabled()
        gc.disable()
        started = time.perf_counter()
        try:
            sent = self._fan_out(job, notify, now)
        finally:
            if gc_was_enabled:
                gc.enable()
        log.info(
            "job_published",
            job_id=job.job_id,
            height=job.height,
            clean=job.clean,
            transactions=len(job.template.transactions),
            miners=sent,
            fanout_ms=round((time.perf_counter() - started) * 1000, 2),  # every send included
        )

    def _fan_out(self, job: Job, notify: tuple[Notify, bytes], now: float) -> int:
        sent = 0
        for session in list(self.sessions.values()):
            core = session.core
            if core is None:
                continue
            try:
                data = core.broadcast_job(job, notify, now)
            except Exception as exc:  # one connection's fault: drop it, the others get the job
                log.exception("job_not_sent", conn_id=session.conn_id, error=repr(exc))
                session.abort(f"internal error sending a job: {exc!r}")
                continue
            if data:
                session.send(data)
                sent += 1
        return sent

    # -- shares -----------------------------------------------------------------------------------
    def record_shares(
        self, session: Session, items: list[bytes | ShareEvent]
    ) -> asyncio.Future[list[bool]]:
        """Journal the accepted shares of one read; the future says, per share in order,
        whether it was recorded (the session answers then). No task per read: futures and
        callbacks only. Block candidates are submitted at once, in the background."""
        now = time.time()
        events = [item for item in items if type(item) is ShareEvent]
        shares = [(e.result, e.creds) for e in events]
        outcome: asyncio.Future[list[bool]] = asyncio.get_running_loop().create_future()
        outcome.add_done_callback(session.flush)
        recorder = self.share_recorder
        if recorder is None:  # no ledger: nothing to wait for
            self._recorded(outcome, shares, now, None)
        else:
            try:
                durable = recorder(shares, now, session.settings.scheme)
            except Exception as exc:
                self._recorded(outcome, shares, now, exc)
            else:
                durable.add_done_callback(
                    lambda f: self._recorded(
                        outcome, shares, now, f.exception() if not f.cancelled() else f
                    )
                )
        for event in events:
            if event.result.block_candidate:
                self._spawn(self._submit_block(event, now, outcome))
        return outcome

    def _recorded(
        self,
        outcome: asyncio.Future[list[bool]],
        shares: list[tuple[ShareResult, Credentials]],
        now: float,
        failure: object,
    ) -> None:
        if failure is not None:  # not recorded (e.g. the ledger's disk): never "accepted"
            self._not_recorded += len(shares)
            if now - self._not_recorded_logged >= NOT_RECORDED_LOG_SECONDS:
                log.error(
                    "shares_not_recorded",
                    shares=self._not_recorded,
                    seconds=NOT_RECORDED_LOG_SECONDS,
                    error=repr(failure),
                )
                self._not_recorded, self._not_recorded_logged = 0, now
            outcome.set_result([False] * len(shares))
            return
        try:
            self.ctx.count_accepted(shares, now)
        except Exception as exc:  # the shares are durable: counting must not hold the answers
            log.exception("shares_not_counted", shares=len(shares), error=repr(exc))
        finally:
            outcome.set_result([True] * len(shares))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _submit_block(
        self, event: ShareEvent, now: float, recorded: asyncio.Future[list[bool]]
    ) -> None:
        result, creds = event.result, event.creds
        try:
            submission = await self.submit_block(result)
        except Exception as exc:
            log.exception("block_submission_crashed", hash=result.hash_hex, error=repr(exc))
            return
        self.stats.record_block(
            FoundBlock(
                height=submission.height,
                hash=submission.block_hash,
                worker=creds.name,
                status=submission.status.value,
                reason=submission.reason,
                time=now,
            )
        )
        with contextlib.suppress(Exception):
            await asyncio.shield(recorded)  # the share's journal record comes first
        for listener in self.block_listeners:
            try:
                await listener(result, creds, now, submission)
            except Exception as exc:
                log.exception("block_listener_failed", hash=result.hash_hex, error=repr(exc))

    # -- time -------------------------------------------------------------------------------------
    async def _tick_loop(self) -> None:
        last_prune = last_summary = last_guard = time.time()
        while True:
            await asyncio.sleep(TICK_SECONDS)
            now = time.time()
            for session in list(self.sessions.values()):
                core = session.core
                if core is None or now < core.next_timer():
                    continue
                try:
                    session.send(core.handle_timer(now))
                except Exception as exc:  # that connection's fault: the loop goes on
                    log.exception("timer_failed", conn_id=session.conn_id, error=repr(exc))
                    core.close(f"internal error: {exc!r}")
                if core.closing:
                    session.close(core.close_reason)
            try:  # the pool-wide upkeep: a fault in it must not stop the timers above
                self._enforce_new_bans(now)
                if now - last_guard >= GUARD_PRUNE_SECONDS:
                    last_guard = now
                    self.ctx.guard.prune(now)
                    evicted = self.ctx.evict_idle(now)
                    if evicted:
                        log.info("idle_workers_evicted", workers=evicted)
                if now - last_summary >= REJECT_SUMMARY_SECONDS:
                    last_summary = now
                    self._log_reject_summary()
                if now - last_prune >= PRUNE_SECONDS:
                    last_prune = now
                    self.hashrate.prune(now)  # meters idle longer than their largest window
            except Exception as exc:
                log.exception("tick_upkeep_failed", error=repr(exc))

    def _log_reject_summary(self) -> None:
        summary = self.ctx.take_reject_summary()
        if summary is not None:
            log.info(
                "shares_rejected",
                total=summary.total,
                by_reason=summary.by_reason,
                top_workers=[
                    {"worker": clip(w or "(not authorized)", 160), "reason": r, "count": c}
                    for w, r, c in summary.by_worker
                ],
            )
