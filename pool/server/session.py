"""One miner connection: the asyncio adapter around ``stratum.ServerConnection``.

It reads bytes, turns them into events with the pure protocol core, answers every request, and
writes jobs. The difficulty in force for each job sent is remembered, so a share is judged at
the difficulty its job was sent with even after vardiff changed it.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

import structlog

from pool.config import PortConfig
from pool.jobs import Job
from pool.server.auth import AuthError, Credentials, parse_credentials
from pool.shares import ConnectionView, ShareSubmit, validate_share
from pool.vardiff import Vardiff
from stratum.codec import encode_notification, encode_response
from stratum.connection import ServerConnection
from stratum.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from stratum.events import (
    Authorize,
    ClientRequest,
    Configure,
    ConnectionClosed,
    ExtranonceSubscribe,
    GetTransactions,
    InvalidRequest,
    NeedData,
    Notify,
    Reconnect,
    SetDifficulty,
    Submit,
    Subscribe,
    SuggestDifficulty,
    UnknownMethod,
)

if TYPE_CHECKING:
    from pool.server.server import StratumServer

log = structlog.get_logger("pool.server.session")


class SessionClosed(Exception):
    """Raised inside a session to end it with a logged reason."""


def notify_event(job: Job, job_id: str, clean: bool) -> Notify:
    params = job.notify_params()
    return Notify(
        job_id=job_id,
        prevhash=params[1],
        coinb1=params[2],
        coinb2=params[3],
        merkle_branch=tuple(params[4]),
        version=params[5],
        nbits=params[6],
        ntime=params[7],
        clean_jobs=clean,
    )


class Session:
    def __init__(
        self,
        server: StratumServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        port: PortConfig,
        conn_id: int,
        extranonce1: bytes,
        peer: str,
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.port = port
        self.conn_id = conn_id
        self.extranonce1 = extranonce1
        self.peer = peer
        limits = server.config.limits
        self.conn = ServerConnection(max_line_bytes=limits.max_line_bytes)
        self.log = log.bind(conn_id=conn_id, peer=peer, port=port.port)
        now = time.time()
        self.connected_at = now
        self.vardiff = Vardiff(server.vardiff_config(port), port.start_difficulty, now)
        self.sent: OrderedDict[str, tuple[Job, float]] = OrderedDict()
        self.workers: dict[str, Credentials] = {}
        self.difficulty_sent: float | None = None
        self.invalid_in_row = 0
        self.closed = False
        self.close_reason = ""
        self.user_agent: str | None = None

    # -- writing ----------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.closed:
            return
        self.writer.write(data)
        buffered = self.writer.transport.get_write_buffer_size()
        if buffered > self.server.config.limits.send_queue_bytes:
            self.abort(f"send queue over limits.send_queue_bytes ({buffered} bytes): slow reader")

    def abort(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self.log.info("connection_dropped", reason=reason)
        self.writer.transport.abort()

    @property
    def ready(self) -> bool:
        """Subscribed and at least one worker authorized: jobs go out."""
        return self.conn.subscribed and bool(self.workers) and not self.closed

    def send_job(
        self,
        job: Job,
        *,
        clean: bool | None = None,
        job_id: str | None = None,
        notify_line: bytes | None = None,
    ) -> None:
        """set_difficulty (when it changed) then mining.notify; remember the difficulty."""
        difficulty = self.vardiff.difficulty
        if difficulty != self.difficulty_sent:
            self.write(encode_notification(SetDifficulty(difficulty)))
            self.difficulty_sent = difficulty
        clean = job.clean if clean is None else clean
        jid = job_id or job.job_id
        if clean:
            self.sent.clear()
        self.sent[jid] = (job, difficulty)
        while len(self.sent) > 2 * self.server.jobs.max_jobs:
            self.sent.popitem(last=False)
        if notify_line is None or job_id is not None:
            notify_line = encode_notification(notify_event(job, jid, clean))
        self.write(notify_line)
        for creds in self.workers.values():
            self.server.stats.worker(creds.name, creds.address).difficulty = difficulty

    def resend_current(self) -> None:
        """After a difficulty change: the current job again under a new id, not clean, so the
        new difficulty governs it at once (miners apply set_difficulty at the next notify)."""
        job = self.server.jobs.current
        if job is not None and self.ready:
            self.send_job(job, clean=False, job_id=self.server.jobs.next_id())

    def reconnect(self, host: str | None = None, port: int | None = None, wait: int = 0) -> None:
        if self.conn.subscribed:
            self.write(encode_notification(Reconnect(host, port, wait)))

    # -- reading ----------------------------------------------------------------------------------
    async def run(self) -> None:
        limits = self.server.config.limits
        try:
            while not self.closed:
                timeout = limits.idle_timeout_seconds
                if not self.ready:
                    timeout = max(
                        0.0, self.connected_at + limits.handshake_timeout_seconds - time.time()
                    )
                try:
                    data = await asyncio.wait_for(self.reader.read(65536), timeout=timeout)
                except TimeoutError:
                    why = "idle timeout" if self.ready else "no subscribe/authorize in time"
                    raise SessionClosed(why) from None
                self.conn.receive_data(data)
                await self._drain_events()
                if not data:
                    raise SessionClosed("peer closed")
        except SessionClosed as exc:
            self.close_reason = self.close_reason or str(exc)
        except RemoteProtocolError as exc:
            self.close_reason = f"protocol error: {exc.message}"
            self.log.info("protocol_error", error=exc.message)
        except (ConnectionError, OSError) as exc:
            self.close_reason = f"connection error: {exc}"
        finally:
            self.closed = True
            self.writer.close()

    async def _drain_events(self) -> None:
        while True:
            event = self.conn.next_event()
            if isinstance(event, NeedData | ConnectionClosed):
                return
            try:
                await self.handle(event)
            except LocalProtocolError as exc:
                # A request the state machine will not let us answer normally (e.g. a second
                # mining.subscribe): answer with an error instead of dropping the miner.
                self.log.info("request_refused", error=exc.message, request=type(event).__name__)
                self.write(
                    encode_response(
                        getattr(event, "id", None), None, (ErrorCode.OTHER, exc.message)
                    )
                )
            if self.closed:
                return

    async def handle(self, event: ClientRequest) -> None:
        if isinstance(event, Submit):
            await self.on_submit(event)
        elif isinstance(event, Subscribe):
            self.on_subscribe(event)
        elif isinstance(event, Authorize):
            self.on_authorize(event)
        elif isinstance(event, Configure):
            mask = int(self.server.config.stratum.version_rolling_mask, 16)
            self.write(self.conn.configure_reply(event, pool_version_mask=mask))
        elif isinstance(event, SuggestDifficulty):
            self.on_suggest(event)
        elif isinstance(event, ExtranonceSubscribe):
            self.write(self.conn.reply(event, True))
        elif isinstance(event, GetTransactions):
            entry = self.sent.get(event.job_id or "")
            txs = [tx.data.hex() for tx in entry[0].template.transactions] if entry else []
            self.write(self.conn.reply(event, txs))
        elif isinstance(event, UnknownMethod | InvalidRequest):
            self.write(self.conn.reject(event))

    def on_subscribe(self, req: Subscribe) -> None:
        self.user_agent = req.user_agent
        if req.session_id:
            resumed = self.server.resume_extranonce(self, req.session_id)
            if resumed:
                self.log.info("session_resumed", session_id=req.session_id)
        sid = self.extranonce1.hex()
        self.write(
            self.conn.subscribe_ok(
                req,
                extranonce1=sid,
                extranonce2_size=self.server.config.pool.extranonce2_size,
                subscription_id=sid,
            )
        )
        self.log.info("subscribed", user_agent=req.user_agent, extranonce1=sid)
        self._maybe_first_job()

    def on_authorize(self, req: Authorize) -> None:
        limits = self.server.config.limits
        if (
            req.username not in self.workers
            and len(self.workers) >= limits.max_workers_per_connection
        ):
            self.write(
                self.conn.reply_error(
                    req,
                    ErrorCode.UNAUTHORIZED,
                    f"too many workers on one connection (limits.max_workers_per_connection = "
                    f"{limits.max_workers_per_connection})",
                )
            )
            return
        try:
            creds = parse_credentials(req.username, req.password, self.server.network)
        except AuthError as exc:
            self.log.info("authorize_refused", username=req.username[:100], reason=str(exc))
            self.write(self.conn.reply_error(req, ErrorCode.UNAUTHORIZED, str(exc)))
            return
        if self.server.worker_banned(creds):
            self.log.info("authorize_refused", username=creds.name, reason="banned")
            message = f"worker {creds.name} is banned from this pool"
            self.write(self.conn.reply_error(req, ErrorCode.UNAUTHORIZED, message))
            return
        first = not self.workers
        self.workers[creds.username] = creds
        if creds.fixed_difficulty is not None:
            self.vardiff.fix(creds.fixed_difficulty)
        self.server.worker_connected(self, creds)
        self.write(self.conn.authorize_ok(req, creds.username))
        self.log.info("authorized", worker=creds.name, fixed_difficulty=creds.fixed_difficulty)
        if first:
            self._maybe_first_job()

    def _maybe_first_job(self) -> None:
        job = self.server.jobs.current
        if self.ready and not self.sent and job is not None:
            self.send_job(job, clean=True)

    def on_suggest(self, req: SuggestDifficulty) -> None:
        before = self.vardiff.difficulty
        applied = self.vardiff.suggest(req.difficulty, time.time())
        self.write(self.conn.reply(req, True))
        self.log.info("difficulty_suggested", suggested=req.difficulty, applied=applied)
        if self.ready and applied != before:
            self.resend_current()

    async def on_submit(self, req: Submit) -> None:
        now = time.time()
        entry = self.sent.get(req.job_id)
        job: Job | None = None
        difficulty = self.vardiff.difficulty
        if entry is not None:
            job, difficulty = entry
            if self.server.jobs.get(job.job_id) is not job:
                job = None  # retired: a newer block made it stale
        conn = ConnectionView(
            subscribed=self.conn.subscribed,
            authorized=frozenset(self.workers),
            extranonce1=self.extranonce1,
            extranonce2_size=self.server.config.pool.extranonce2_size,
            version_mask=self.conn.version_mask or 0,
        )
        submit = ShareSubmit(
            req.worker, req.job_id, req.extranonce2, req.ntime, req.nonce, req.version_bits
        )
        result = validate_share(
            submit,
            conn,
            job,
            self.server.duplicates,
            difficulty=difficulty,
            now=now,
            max_ntime_ahead=self.server.config.stratum.max_ntime_ahead_seconds,
        )
        creds = self.workers.get(req.worker)
        try:
            await self.server.on_share(self, creds, result, now)
        except Exception as exc:  # not recorded (e.g. the ledger's disk): never say "accepted"
            self.log.error("share_not_recorded", error=repr(exc))
            self.write(
                self.conn.reply_error(req, ErrorCode.OTHER, "the pool could not record the share")
            )
            return
        if result.accepted:
            self.invalid_in_row = 0
            self.write(self.conn.reply(req, True))
            if self.vardiff.on_share(result.difficulty, now) is not None:
                self.resend_current()
        else:
            assert result.reject is not None
            self.invalid_in_row += 1
            self.write(self.conn.reply_error(req, result.reject.code, result.message))
            limit = self.server.config.limits.max_invalid_shares_in_row
            if self.invalid_in_row >= limit:
                self.abort(f"{limit} invalid shares in a row (limits.max_invalid_shares_in_row)")

    def tick(self, now: float) -> None:
        """Periodic: vardiff idle decay."""
        if self.ready and self.vardiff.on_tick(now) is not None:
            self.resend_current()
