"""One miner connection's socket: an asyncio Protocol around the pure PoolConnection.

It only moves bytes. Every read is handed whole to the core, which handles all its complete
lines in one pass; their answers leave in ONE write. When a read carried accepted shares, its
answers (and those of later reads, so the miner sees them in request order) wait until the
ledger has journaled the shares: a share is acknowledged only once it is durable.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, cast

from pool.server.core import CoreSettings, PoolConnection, ShareEvent

_Batch = list[bytes | ShareEvent]
CLOSE_GRACE_SECONDS = 5.0  # a closed connection's unsent data waits this long for the peer


class SessionHost(Protocol):
    """What a session needs from the listener that made it (the server; a structural type,
    so this module does not import the server)."""

    send_queue_bytes: int

    def admit(self, session: Session) -> None:
        """A new connection: give it its core, or close it."""

    def forget(self, session: Session) -> None:
        """The connection is gone."""

    def authorized(self, session: Session) -> None:
        """The connection's first worker is authorized (it no longer counts as half-open)."""

    def record_shares(
        self, session: Session, items: list[bytes | ShareEvent]
    ) -> asyncio.Future[list[bool]]:
        """Journal a read's accepted shares; per share, whether it was recorded."""


class Session(asyncio.Protocol):
    """The asyncio adapter of one connection (created by the server's listener)."""

    __slots__ = (
        "_queue",
        "authed",
        "closed",
        "conn_id",
        "core",
        "ip",
        "peer",
        "server",
        "settings",
        "transport",
    )

    def __init__(self, server: SessionHost, settings: CoreSettings) -> None:
        self.server = server
        self.settings = settings
        self.transport: asyncio.Transport | None = None
        self.core: PoolConnection | None = None
        self.conn_id = 0
        self.ip = "?"
        self.peer = "?"
        self.closed = False
        self.authed = False
        # Answers waiting for the journal: (batch, its shares' outcome or None), in read order
        # (a list: short-lived and short, where an empty deque alone is ~600 bytes).
        self._queue: list[tuple[_Batch, asyncio.Future[list[bool]] | None]] = []

    # -- asyncio.Protocol -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is not an asyncio.Transport subclass, same interface).
        self.transport = cast(asyncio.Transport, transport)
        peername = transport.get_extra_info("peername") or ("?", 0)
        self.ip = str(peername[0])
        self.peer = f"{self.ip}:{peername[1]}"
        self.server.admit(self)

    def data_received(self, data: bytes) -> None:
        core = self.core
        if core is None or self.closed:
            return
        items, shares = core.receive_data(data, time.time())
        if not self.authed and core.workers:
            self.authed = True
            self.server.authorized(self)
        if shares:
            self._queue.append((items, self.server.record_shares(self, items)))
        elif self._queue:
            self._queue.append((items, None))
        elif items:
            self.write(items[0] if len(items) == 1 else b"".join(items))  # type: ignore[arg-type]
        if core.closing and not self._queue:
            self.abort(core.close_reason)

    def eof_received(self) -> bool:
        self.data_received(b"")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.core is not None:
            if not self.core.closing:
                self.core.close(f"connection error: {exc}" if exc else "peer closed")
            self.core.finished()
        self.server.forget(self)

    # -- writing ----------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        transport = self.transport
        if self.closed or transport is None or not data:
            return
        transport.write(data)
        limit = self.server.send_queue_bytes
        if transport.get_write_buffer_size() > limit:
            buffered = transport.get_write_buffer_size()
            self.abort(f"send queue over limits.send_queue_bytes ({buffered} bytes): slow reader")

    def flush(self, _: object = None) -> None:
        """Write every batch at the head of the queue whose shares the ledger has settled."""
        queue = self._queue
        core = self.core
        if core is None:
            return
        chunks: list[bytes] = []
        now = time.time()
        while queue:
            items, outcome = queue[0]
            if outcome is not None:
                if not outcome.done():
                    break
                recorded = iter(outcome.result() if not outcome.cancelled() else ())
                for i, item in enumerate(items):
                    if type(item) is ShareEvent:
                        try:
                            items[i] = core.share_recorded(item, next(recorded, False), now)
                        except Exception as exc:  # never leave the queue stuck on one entry
                            items[i] = b""
                            core.close(f"internal error answering a share: {exc!r}")
            del queue[0]
            chunks.extend(items)  # type: ignore[arg-type]
        # A difficulty change made now goes after everything made before it (still queued or
        # just written), so the miner applies each difficulty to the jobs the pool judges at it.
        resend = b"" if core.closing else core.take_resend(now)
        if resend:
            if queue:
                queue.append(([resend], None))
            else:
                chunks.append(resend)
        if chunks:
            self.write(b"".join(chunks))
        if core.closing and not queue:
            self.abort(core.close_reason)

    def send(self, data: bytes) -> None:
        """Pool-initiated bytes (jobs, reconnect): after any answers still waiting."""
        if not data:
            return
        if self._queue:
            self._queue.append(([data], None))
        else:
            self.write(data)

    def abort(self, reason: str) -> None:
        """Close now: what was written is flushed by the transport if the peer reads it
        within CLOSE_GRACE_SECONDS, else the connection is reset."""
        if self.closed:
            return
        self.closed = True
        if self.core is not None:
            self.core.close(reason)
        transport = self.transport
        if transport is None:
            return
        buffered = transport.get_write_buffer_size()
        if buffered > self.server.send_queue_bytes:
            transport.abort()
            return
        transport.close()
        if buffered:  # a peer that stops reading must not keep its slot: reset it in a while
            asyncio.get_running_loop().call_later(CLOSE_GRACE_SECONDS, transport.abort)

    def close(self, reason: str = "closed by the pool") -> None:
        """Close once the answers still owed (shares waiting for the journal) are written."""
        if self.core is not None and self._queue:
            self.core.close(reason)  # flush closes the socket when the queue is empty
            return
        self.abort(reason)

    # -- what the server uses ------------------------------------------------------------------
    def reconnect(self, host: str | None = None, port: int | None = None, wait: int = 0) -> None:
        if self.core is not None:
            self.send(self.core.reconnect(host, port, wait))
