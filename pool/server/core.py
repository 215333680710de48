"""One miner connection, pure: bytes and ``now`` in, bytes and share events out.

:class:`PoolConnection` is the pool's whole per-connection state (aioquic's QuicConnection is
the model): the stratum :class:`~stratum.connection.ServerConnection` (every outgoing message
passes its state machine), the authorized workers, the jobs sent with the difficulty in force
for each, vardiff, the invalid-share counter and the deadlines. No asyncio, no sockets, no
clock: the asyncio session (:mod:`pool.server.session`) only moves bytes.

Usage::

    core = PoolConnection(context, settings, conn_id=1, extranonce1=en1, now=now)
    items, shares = core.receive_data(data, now)   # bytes answers, ShareEvent for accepted shares
    # journal every ShareEvent, then, in order, replace each by
    core.share_recorded(event, error, now)          # its answer (+ a new difficulty and job)
    core.on_job(job, now)                           # a new job: set_difficulty? + notify
    if now >= core.next_timer(): core.handle_timer(now)
    core.closing                                    # set when the connection must be closed

Accepted shares are not answered by the core: the answer waits until the ledger has the
share (a share is acknowledged only once it is durable). Rejected shares are answered at once
and counted (no log line, no object, no formatted message per rejected share).

Abuse (see also :mod:`pool.server.guard`): only useful requests (an accepted share, a valid
subscribe, authorize, configure, suggest_difficulty...) reset the idle timer; bytes, partial
lines, garbage and rejected shares do not. Rejected shares and bad requests raise a decaying
count (time constant ``invalid_share_window``); once it passes half of
``invalid_share_burst`` while bad ones are over ``invalid_share_ratio`` of all, the miner gets a
fresh clean job; at ``invalid_share_burst`` its IP gets a strike and the connection is closed
(after client.reconnect the first time; the guard bans an IP that keeps at it). Accepted
shares weigh against it, so one cheap valid share resets nothing. Log lines a client can
cause are rate-limited (``ctx.log_limiter``) and echo its input cut (``pool.logs.clip``).
"""

from __future__ import annotations

import math

import structlog

from pool.jobs import Job
from pool.logs import clip
from pool.server.auth import AuthError, Credentials, parse_credentials
from pool.server.context import PoolContext
from pool.server.core_types import CoreSettings, ShareEvent, notify_event
from pool.server.solo import solo_refusal
from pool.shares import Reject, judge_share
from pool.vardiff import Vardiff
from stratum.connection import ConnState, ServerConnection
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
    ShowMessage,
    Submit,
    Subscribe,
    SuggestDifficulty,
    UnknownMethod,
)
from stratum.notifications import encode_notification

__all__ = ["NOT_RECORDED", "CoreSettings", "PoolConnection", "ShareEvent", "notify_event"]

log = structlog.get_logger("pool.server.core")
_new_tuple = tuple.__new__

NOT_RECORDED = (int(ErrorCode.OTHER), "pool storage unavailable, share not recorded")
_NOT_SUBSCRIBED = (Reject.NOT_SUBSCRIBED.code, Reject.NOT_SUBSCRIBED.message)
_UNAUTHORIZED = (Reject.UNAUTHORIZED.code, Reject.UNAUTHORIZED.message)
_STALE = (Reject.STALE.code, Reject.STALE.message)


class PoolConnection:
    __slots__ = (
        "_close_reason",
        "_next_tick",
        "_resend_due",
        "_stale",
        "bad",
        "bad_at",
        "closing",
        "conn",
        "conn_id",
        "connected_at",
        "ctx",
        "difficulty_sent",
        "escalate_at",
        "extranonce1",
        "good",
        "invalid_in_row",
        "ip",
        "last_request",
        "payee",
        "peer",
        "retired",
        "sent",
        "sent_difficulty",
        "settings",
        "user_agent",
        "vardiff",
        "workers",
    )

    def __init__(
        self,
        ctx: PoolContext,
        settings: CoreSettings,
        *,
        conn_id: int,
        extranonce1: bytes,
        now: float,
        peer: str = "",
        ip: str = "",
    ) -> None:
        self.ctx = ctx
        self.settings = settings
        self.conn_id = conn_id
        self.extranonce1 = extranonce1
        self.conn = ServerConnection(max_line_bytes=settings.max_line_bytes)
        self.vardiff = Vardiff(settings.vardiff, settings.start_difficulty, now)
        # The jobs sent (id -> job, oldest first) and the difficulty in force for each: two
        # plain dicts, so a job sent to every miner allocates no new object per miner (fewer
        # objects for the garbage collector to walk; an OrderedDict is also ~3x the size).
        self.sent: dict[str, Job] = {}
        self.retired: dict[str, Job] = {}  # the jobs sent before the last clean one
        self.sent_difficulty: dict[str, float] = {}
        self.workers: dict[str, Credentials] = {}
        self.payee: Credentials | None = None  # SOLO port: whose address the jobs pay
        self.difficulty_sent: float | None = None
        self.invalid_in_row = 0
        self.connected_at = now
        self.last_request = now
        self._next_tick = now + settings.tick_seconds
        self._resend_due = False
        self.closing = False
        self._close_reason = ""
        self.user_agent: str | None = None
        self.peer = peer
        self.ip = ip or peer.rpartition(":")[0]
        # Bad requests and rejected shares vs accepted shares, decaying (see the module doc).
        self.bad = 0.0
        self.good = 0.0
        self.bad_at = now
        self._stale = False  # the last rejected share was stale (normal at a block change)
        self.escalate_at = settings.invalid_share_burst / 2

    def info(self, event: str, **fields: object) -> None:
        """Log an event of this connection (its id and peer added; no bound logger is kept
        per connection: ~1 KiB less each, and fewer objects for the garbage collector)."""
        log.info(event, conn_id=self.conn_id, peer=self.peer, **fields)

    def note(self, event: str, now: float, **fields: object) -> None:
        """``info`` for a line the client can cause again and again: rate-limited per event
        (the next line let through counts the ones suppressed)."""
        suppressed = self.ctx.log_limiter.allow(event, now)
        if suppressed < 0:
            return
        if suppressed:
            fields["suppressed"] = suppressed
        log.info(event, conn_id=self.conn_id, peer=self.peer, **fields)

    # -- state ------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Subscribed and at least one worker authorized: jobs go out."""
        return self.conn.subscribed and bool(self.workers) and not self.closing

    @property
    def close_reason(self) -> str:
        return self._close_reason

    def close(self, reason: str) -> None:
        """Nothing more is read and no new job goes out; answers still owed (accepted shares
        waiting for the ledger) may still be made, then the adapter closes the socket and
        calls ``finished``."""
        if not self.closing:
            self.closing = True
            self._close_reason = reason

    def finished(self) -> None:
        """The socket is closed: the protocol state machine is closed too."""
        self.conn.close()

    # -- receiving --------------------------------------------------------------------------------
    def receive_data(self, data: bytes, now: float) -> tuple[list[bytes | ShareEvent], int]:
        """Handle every complete line in ``data`` (``b""``: the peer closed). Returns the
        answers in request order (bytes, or a ShareEvent for an accepted share whose answer
        waits for the ledger) and how many ShareEvents there are."""
        out: list[bytes | ShareEvent] = []
        if self.closing:
            return out, 0
        conn = self.conn
        conn.receive_data(data)
        shares = 0
        while True:
            try:
                event = conn.next_event()
            except RemoteProtocolError as exc:
                self.note("protocol_error", now, error=clip(exc.message))
                self.close(f"protocol error: {clip(exc.message)}")
                self.ctx.guard.strike(self.ip, now, "protocol error")
                break
            kind = type(event)
            if kind is Submit:
                answer = self._submit(event, now)  # type: ignore[arg-type]
                out.append(answer)
                if type(answer) is ShareEvent:
                    shares += 1
                    continue
                if self._stale:  # work on the previous block: normal, not abuse
                    continue
                if self.bad_at == now:  # the common case in a flood: no decay, no call
                    self.bad += 1.0
                else:
                    self._bad(now)
                if self.bad >= self.escalate_at:
                    self._escalate(now, out)
                    if self.closing:
                        break
                if self.invalid_in_row >= self.settings.max_invalid_in_row:
                    limit = self.settings.max_invalid_in_row
                    self.close(
                        f"{limit} invalid shares in a row (limits.max_invalid_shares_in_row)"
                    )
                    break
                continue
            if kind is NeedData:
                break
            if kind is ConnectionClosed:
                self.close("peer closed")
                break
            if kind is InvalidRequest or kind is UnknownMethod:
                out.append(conn.reject(event))  # type: ignore[arg-type]
                self._bad(now)
                if self.bad >= self.escalate_at:
                    self._escalate(now, out)
                    if self.closing:
                        break
                continue
            useful_before = self.last_request
            try:
                self._request(event, now, out)  # type: ignore[arg-type]
            except LocalProtocolError as exc:
                self.last_request = useful_before  # refused: not a useful request
                # A request the state machine will not let us answer normally (e.g. a second
                # mining.subscribe): answer with an error instead of dropping the miner.
                self.note("request_refused", now, error=exc.message, request=kind.__name__)
                self._bad(now)
                out.append(
                    conn.reply_error(
                        event,  # type: ignore[arg-type]
                        ErrorCode.OTHER,
                        exc.message,
                    )
                )
            if self.bad >= self.escalate_at:  # refused logins and requests count too
                self._escalate(now, out)
            if self.closing:
                break
        return out, shares

    def _submit(self, req: Submit, now: float) -> bytes | ShareEvent:
        conn = self.conn
        if not conn.subscribed:
            return self._rejected(req, None, Reject.NOT_SUBSCRIBED, _NOT_SUBSCRIBED)
        creds = self.workers.get(req.worker)
        if creds is None:
            return self._rejected(req, None, Reject.UNAUTHORIZED, _UNAUTHORIZED)
        job = self.sent.get(req.job_id)
        # live: the table holds it (or, for a SOLO job, the pool job it was made from)
        if job is None or (
            (live := self.ctx.jobs.get(job.job_id)) is not job
            and (live is None or live is not job.base)
        ):
            answer = self._rejected(req, creds, Reject.STALE, _STALE)
            # a job this connection was sent, since replaced: normal at a block change, not
            # abuse (an id it was never sent is a bad share like any other)
            self._stale = job is not None or req.job_id in self.retired
            return answer
        difficulty = self.sent_difficulty[req.job_id]
        verdict = judge_share(
            job,
            req.worker,
            req.job_id,
            req.extranonce2,
            req.ntime,
            req.nonce,
            req.version_bits,
            extranonce1=self.extranonce1,
            extranonce2_size=self.settings.extranonce2_size,
            version_mask=conn.version_mask or 0,
            duplicates=self.ctx.duplicates,
            difficulty=difficulty,
            now=now,
            max_ntime_ahead=self.settings.max_ntime_ahead,
        )
        if type(verdict) is tuple:
            reject, message = verdict
            return self._rejected(req, creds, reject, (reject.code, message))
        self.invalid_in_row = 0  # a valid share ends the run (whatever the ledger says later)
        self.good += 1.0
        self.last_request = now
        # tuple.__new__ directly: a NamedTuple's own __new__ is a Python-level lambda
        return _new_tuple(ShareEvent, (req, verdict, creds))

    def _rejected(
        self, req: Submit, creds: Credentials | None, reject: Reject, error: tuple[int, str]
    ) -> bytes:
        self.invalid_in_row += 1
        self._stale = False
        self.ctx.count_rejected(creds, reject)
        return self.conn.answer_submit(req, error)

    def _bad(self, now: float) -> None:
        """One more rejected share or bad request; both counts decay first. The good count
        decays from its own last share (``last_request``), not from the last bad one: after a
        long clean run, the shares just accepted still weigh against a burst of bad ones."""
        elapsed = now - self.bad_at
        if elapsed > 0:
            window = self.settings.invalid_share_window
            self.bad *= math.exp(-elapsed / window)
            good_elapsed = now - max(self.bad_at, self.last_request)
            self.good *= math.exp(-max(0.0, good_elapsed) / window)
            self.bad_at = now
        self.bad += 1.0

    def _escalate(self, now: float, out: list[bytes | ShareEvent]) -> None:
        """Too many bad ones: a fresh job first, then a strike for the IP and a close (with
        client.reconnect the first time). Nothing while they are a small part of the work."""
        settings = self.settings
        if self.bad <= settings.invalid_share_ratio * (self.bad + self.good):
            return  # checked again at the next bad one
        if self.escalate_at < settings.invalid_share_burst:
            self.escalate_at = float(settings.invalid_share_burst)
            self.note("abuse_fresh_job", now, bad=round(self.bad), good=round(self.good))
            job = self.ctx.jobs.current
            if job is not None and self.ready:
                out.append(self.on_job(job, now, clean=True, job_id=self.ctx.jobs.next_id()))
            return
        guard = self.ctx.guard
        earlier = guard.strikes(self.ip, now)
        ban = guard.strike(self.ip, now, "invalid shares or bad requests")
        if ban is None and earlier < 1.0:
            out.append(self.reconnect())
        self.note(
            "abuse_dropped",
            now,
            bad=round(self.bad),
            good=round(self.good),
            strikes=round(earlier + 1, 2),
            banned_seconds=ban.seconds if ban else None,
        )
        self.close(
            f"too many invalid shares or bad requests ({round(self.bad)} of "
            f"{round(self.bad + self.good)} recently; limits.invalid_share_burst)"
        )

    def share_recorded(self, event: ShareEvent, recorded: bool, now: float) -> bytes:
        """The ledger has the share (``recorded``) or could not record it: its answer (also
        when the pool is closing the connection; not once the miner's side is gone). A vardiff
        change it causes is only noted: ``take_resend`` makes the new difficulty and job,
        which the adapter must send after everything already queued (the difficulty in force
        for each job id is the one the miner saw last before that job's notify)."""
        if self.conn.state is ConnState.CLOSED:
            return b""
        # Valid work counts for vardiff even when storage refused it: the miner's hashrate is
        # what it is, and a difficulty falling to the minimum during a storage fault would
        # only multiply the refused shares.
        if self.vardiff.on_share(event.result.difficulty, now) is not None:
            self._resend_due = True
        return self.conn.answer_submit(event.request, None if recorded else NOT_RECORDED)

    def take_resend(self, now: float) -> bytes:
        """The current job with the new difficulty, if share_recorded saw vardiff move."""
        if not self._resend_due:
            return b""
        self._resend_due = False
        return self.resend_current(now)

    def _request(self, event: ClientRequest, now: float, out: list[bytes | ShareEvent]) -> None:
        conn = self.conn
        if isinstance(event, Authorize):
            self._authorize(event, now, out)  # only an accepted login counts as useful
            return
        self.last_request = now  # a valid request: the miner is alive
        if isinstance(event, Subscribe):
            self._subscribe(event, now, out)
        elif isinstance(event, Configure):
            out.append(
                conn.configure_reply(event, pool_version_mask=self.settings.version_rolling_mask)
            )
        elif isinstance(event, SuggestDifficulty):
            before = self.vardiff.difficulty
            applied = self.vardiff.suggest(event.difficulty, now)
            out.append(conn.reply(event, True))
            self.note("difficulty_suggested", now, suggested=event.difficulty, applied=applied)
            if self.ready and applied != before:
                out.append(self.resend_current(now))
        elif isinstance(event, ExtranonceSubscribe):
            out.append(conn.reply(event, True))
        elif isinstance(event, GetTransactions):
            sent_job = self.sent.get(event.job_id or "")
            txs = [tx.data.hex() for tx in sent_job.template.transactions] if sent_job else []
            out.append(conn.reply(event, txs))

    def _subscribe(self, req: Subscribe, now: float, out: list[bytes | ShareEvent]) -> None:
        self.user_agent = req.user_agent
        if req.session_id:
            resumed = self.ctx.extranonces.resume(self.extranonce1, req.session_id)
            if resumed is not None:
                self.extranonce1 = resumed
                self.note("session_resumed", now, session_id=req.session_id)
        sid = self.extranonce1.hex()
        out.append(
            self.conn.subscribe_ok(
                req,
                extranonce1=sid,
                extranonce2_size=self.settings.extranonce2_size,
                subscription_id=sid,
            )
        )
        ua = None if req.user_agent is None else clip(req.user_agent)
        self.note("subscribed", now, user_agent=ua, extranonce1=sid)
        out.append(self._first_job(now))

    def _authorize(self, req: Authorize, now: float, out: list[bytes | ShareEvent]) -> None:
        conn = self.conn
        limit = self.settings.max_workers
        if req.username not in self.workers and len(self.workers) >= limit:
            message = (
                f"too many workers on one connection (limits.max_workers_per_connection = {limit})"
            )
            out.append(conn.reply_error(req, ErrorCode.UNAUTHORIZED, message))
            self._bad(now)
            return
        try:
            creds = parse_credentials(req.username, req.password, self.ctx.network)
        except AuthError as exc:
            self.note("authorize_refused", now, username=clip(req.username), reason=str(exc))
            out.append(conn.reply_error(req, ErrorCode.UNAUTHORIZED, str(exc)))
            self._bad(now)
            return
        if self.ctx.worker_banned(creds):
            self.note("authorize_refused", now, username=creds.name, reason="banned")
            message = f"worker {creds.name} is banned from this pool"
            out.append(conn.reply_error(req, ErrorCode.UNAUTHORIZED, message))
            return
        known = creds.username in self.workers
        refused = solo_refusal(self.settings.solo, self.payee, creds) or (
            None if known else self.ctx.worker_refused(creds, self.ip)
        )
        if refused is not None:
            self.note("authorize_refused", now, username=creds.name, reason=refused)
            out.append(conn.reply_error(req, ErrorCode.UNAUTHORIZED, refused))
            self._bad(now)
            return
        if self.settings.solo is not None and self.payee is None:
            self.payee = creds
        first = not self.workers
        if not known:
            self.ctx.worker_connected(creds, now, self.ip)
        self.workers[creds.username] = creds
        if creds.fixed_difficulty is not None:
            self.vardiff.fix(creds.fixed_difficulty)
        out.append(conn.authorize_ok(req, creds.username))
        self.last_request = now
        self.note("authorized", now, worker=creds.name, fixed_difficulty=creds.fixed_difficulty)
        if first:
            out.append(self._first_job(now))

    def _first_job(self, now: float) -> bytes:
        job = self.ctx.jobs.current
        if self.ready and not self.sent and job is not None:
            return self.on_job(job, now, clean=True)
        return b""

    # -- sending ----------------------------------------------------------------------------------
    def on_job(
        self,
        job: Job,
        now: float,
        *,
        clean: bool | None = None,
        job_id: str | None = None,
        notify: tuple[Notify, bytes] | None = None,
    ) -> bytes:
        """A job for this miner: set_difficulty (when it changed) then mining.notify; the
        difficulty in force is remembered with the job id. ``notify``: the job's event and
        line, made once for all connections by the server. Nothing before subscribe+authorize.
        """
        if not self.ready:
            return b""
        solo, payee = self.settings.solo, self.payee
        if solo is not None and payee is not None and job.base is None:
            job, notify = solo.get(job, payee.payout_script)
        conn = self.conn
        difficulty = self.vardiff.difficulty
        data = b""
        if difficulty != self.difficulty_sent:
            data = conn.notify(SetDifficulty(difficulty))
            self.difficulty_sent = difficulty
            for creds in self.workers.values():
                self.ctx.stats.worker(creds.name, creds.address).difficulty = difficulty
        clean = job.clean if clean is None else clean
        jid = job_id or job.job_id
        if notify is None or job_id is not None or notify[0].clean_jobs != clean:
            event = notify_event(job, jid, clean)
            line = encode_notification(event)
        else:
            event, line = notify
        self._remember(jid, job, difficulty, clean)
        return data + conn.notify(event, encoded=line)

    def _remember(self, job_id: str, job: Job, difficulty: float, clean: bool) -> None:
        if clean:  # sent jobs retire (stale, not bad); dicts reused: no garbage per block
            self.retired, self.sent = self.sent, self.retired
            self.sent.clear()
            self.sent_difficulty.clear()
        sent, difficulties = self.sent, self.sent_difficulty
        sent[job_id] = job
        difficulties[job_id] = difficulty
        while len(sent) > self.settings.max_sent_jobs:
            oldest = next(iter(sent))
            del sent[oldest], difficulties[oldest]

    def broadcast_job(self, job: Job, notify: tuple[Notify, bytes], now: float) -> bytes:
        """``on_job(job, now, notify=notify)`` for a job going to every connection: the common
        case (no new difficulty to send first) without the general path's work."""
        if self.closing or not self.workers or not self.conn.subscribed:
            return b""
        payee = self.payee
        if payee is not None and self.settings.solo is not None:
            job, solo_notify = self.settings.solo.get(job, payee.payout_script)
            if solo_notify is None:  # (not the newest job: its notify is made afresh)
                return self.on_job(job, now)
            notify = solo_notify
        event, line = notify
        difficulty = self.difficulty_sent
        if (
            difficulty is None
            or difficulty != self.vardiff.difficulty
            or event.job_id != job.job_id
        ):
            return self.on_job(job, now, notify=notify)
        self._remember(job.job_id, job, difficulty, event.clean_jobs)
        return self.conn.notify_job(event, line)

    def resend_current(self, now: float) -> bytes:
        """After a difficulty change: the current job again under a new id, not clean, so the
        new difficulty governs it at once (miners apply set_difficulty at the next notify)."""
        job = self.ctx.jobs.current
        if job is None or not self.ready:
            return b""
        return self.on_job(job, now, clean=False, job_id=self.ctx.jobs.next_id())

    def reconnect(self, host: str | None = None, port: int | None = None, wait: int = 0) -> bytes:
        """client.reconnect (only to a subscribed miner: others would not understand it)."""
        if not self.conn.subscribed or self.closing:
            return b""
        return self.conn.notify(Reconnect(host, port, wait))

    def show_message(self, text: str) -> bytes:
        if not self.conn.subscribed or self.closing:
            return b""
        return self.conn.notify(ShowMessage(text))

    # -- time -------------------------------------------------------------------------------------
    def next_timer(self) -> float:
        """When ``handle_timer`` has something to do (inf once closing)."""
        if self.closing:
            return math.inf
        if not self.ready:
            return self.connected_at + self.settings.handshake_timeout
        return min(self.last_request + self.settings.idle_timeout, self._next_tick)

    def handle_timer(self, now: float) -> bytes:
        """Deadlines: handshake and idle timeouts close; vardiff's tick may send a job."""
        if self.closing:
            return b""
        settings = self.settings
        if not self.ready:
            if now >= self.connected_at + settings.handshake_timeout:
                self.close("no subscribe/authorize in time")
            return b""
        if now >= self.last_request + settings.idle_timeout:
            self.close("idle timeout")
            return b""
        if now >= self._next_tick:
            self._next_tick = now + settings.tick_seconds
            if self.vardiff.on_tick(now) is not None:
                return self.resend_current(now)
        return b""
