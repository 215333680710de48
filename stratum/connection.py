"""The pool's side of one Stratum v1 connection: a sans-IO state machine (h11 style).

Usage (the asyncio server owns the socket, this object owns the protocol)::

    conn = ServerConnection(max_line_bytes=16384)
    conn.receive_data(await reader.read(65536))     # b"" when the peer closed
    while not isinstance(ev := conn.next_event(), NeedData | ConnectionClosed):
        match ev:
            case Subscribe(): writer.write(conn.subscribe_ok(ev, extranonce1=..., ...))
            case Submit() if (err := conn.check_submit(ev)):
                writer.write(conn.reply_error(ev, *err))
            case InvalidRequest() | UnknownMethod(): writer.write(conn.reject(ev))
            ...

Rules:

* ``receive_data`` never raises. ``next_event`` raises only RemoteProtocolError (a line over
  the limit; the connection is then in ERROR and should be closed after, optionally, one last
  answer). Everything else the miner gets wrong arrives as an event and can be answered.
* Every answering method returns the bytes to write and updates the state; they raise
  LocalProtocolError when the state forbids the message (see :mod:`stratum.state`), including
  any send after the connection is CLOSED (after ``close()`` or after ConnectionClosed was
  returned), so answers that complete after the miner left raise: catch it or check ``state``.
* Unknown methods are answered by :meth:`reject` with error code 20 ("unknown method X"),
  not JSON-RPC's -32601: old miners (cgminer, cpuminer) display the message of a
  ``[code, message, null]`` error whatever its code, and code 20 is the "other" share error
  they all know. Requests are never dropped and the connection never closes on bad input.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._json import check_id, is_hex
from ._stream import StreamCore
from .codec import decode_request, encode_response, encode_result_true_or_error
from .errors import ErrorCode, LocalProtocolError
from .events import (
    Authorize,
    ClientRequest,
    Configure,
    ErrorTuple,
    ExtranonceSubscribe,
    InvalidRequest,
    Notify,
    PoolNotification,
    Reconnect,
    ServerEvent,
    SetDifficulty,
    SetExtranonce,
    SetVersionMask,
    ShowMessage,
    Submit,
    Subscribe,
    SuggestDifficulty,
    UnknownMethod,
)
from .framing import DEFAULT_MAX_LINE_BYTES
from .notifications import check_extranonce, encode_notification
from .state import ConnState, Outgoing, Trigger, check_send, next_state

__all__ = ["VERSION_ROLLING", "ConnState", "ServerConnection", "negotiate_version_rolling"]

VERSION_ROLLING = "version-rolling"
_KIND: dict[type[Any], Outgoing] = {
    SetDifficulty: Outgoing.SET_DIFFICULTY,
    Notify: Outgoing.NOTIFY,
    SetExtranonce: Outgoing.SET_EXTRANONCE,
    SetVersionMask: Outgoing.SET_VERSION_MASK,
    Reconnect: Outgoing.RECONNECT,
    ShowMessage: Outgoing.SHOW_MESSAGE,
}


def negotiate_version_rolling(params: Mapping[str, Any], pool_mask: int) -> int | None:
    """BIP 310 version rolling: the mask granted to the miner, or None if refused.

    The grant is ``pool_mask & miner_mask`` (the miner's ``version-rolling.mask``, default
    ``ffffffff``); it is refused when the miner's params are malformed, when the intersection
    is empty, or when it has fewer bits than ``version-rolling.min-bit-count`` (default 0).
    """
    raw_mask = params.get("version-rolling.mask", "ffffffff")
    min_bits = params.get("version-rolling.min-bit-count", 0)
    if not isinstance(raw_mask, str) or not is_hex(raw_mask.zfill(8), 8):
        return None
    if type(min_bits) is not int or not 0 <= min_bits <= 32:
        return None
    granted = pool_mask & int(raw_mask.zfill(8), 16)  # "" is 0 (int("", 16) raises)
    if granted == 0 or granted.bit_count() < min_bits:
        return None
    return granted


class ServerConnection:
    """Protocol state of one miner connection, seen from the pool."""

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self._core = StreamCore(max_line_bytes)
        self._subscribed = False
        self._authorized: set[str] = set()
        self._version_mask: int | None = None
        self._extranonce1: str | None = None
        self._extranonce2_size: int | None = None
        self._subscription_id: str | None = None
        self._user_agent: str | None = None
        self._extranonce_subscribed = False
        self._suggested_difficulty: float | None = None
        self._difficulty: float | None = None

    # -------------------------------------------------------------- read-only state

    @property
    def state(self) -> ConnState:
        return self._core.state

    @property
    def max_line_bytes(self) -> int:
        return self._core.max_line_bytes

    @property
    def subscribed(self) -> bool:
        """True once subscribe_ok() was sent (stays True after close)."""
        return self._subscribed

    @property
    def authorized_workers(self) -> frozenset[str]:
        return frozenset(self._authorized)

    @property
    def version_mask(self) -> int | None:
        """The version-rolling mask in force (configure_reply / set_version_mask), or None."""
        return self._version_mask

    @property
    def extranonce1(self) -> str | None:
        return self._extranonce1

    @property
    def extranonce2_size(self) -> int | None:
        return self._extranonce2_size

    @property
    def subscription_id(self) -> str | None:
        return self._subscription_id

    @property
    def user_agent(self) -> str | None:
        """The user agent of the last answered mining.subscribe."""
        return self._user_agent

    @property
    def extranonce_subscribed(self) -> bool:
        """True once mining.extranonce.subscribe was received: set_extranonce may be sent."""
        return self._extranonce_subscribed

    @property
    def suggested_difficulty(self) -> float | None:
        """The last mining.suggest_difficulty received (the pool clamps it), or None."""
        return self._suggested_difficulty

    @property
    def difficulty(self) -> float | None:
        """The last mining.set_difficulty sent, or None."""
        return self._difficulty

    # -------------------------------------------------------------------- receiving

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the socket; ``b""`` means the peer closed. Never raises."""
        self._core.receive_data(data)

    def next_event(self) -> ServerEvent:
        """The next request, NEED_DATA or CONNECTION_CLOSED. Raises only RemoteProtocolError."""
        line = self._core.next_line()
        if not isinstance(line, bytes):
            return line
        event = decode_request(line)
        if isinstance(event, SuggestDifficulty):
            self._suggested_difficulty = event.difficulty
        elif isinstance(event, ExtranonceSubscribe):
            self._extranonce_subscribed = True
        return event

    # -------------------------------------------------------------------- answering

    def subscribe_ok(
        self,
        req: Subscribe,
        *,
        extranonce1: str,
        extranonce2_size: int,
        subscription_id: str,
    ) -> bytes:
        """Accept a mining.subscribe: assigns extranonce1/size and moves to SUBSCRIBED."""
        new_state = next_state(self.state, Trigger.SUBSCRIBE)
        check_extranonce(extranonce1, extranonce2_size)
        if not isinstance(subscription_id, str):
            raise LocalProtocolError("subscription_id must be a str")
        subscriptions = [
            ["mining.set_difficulty", subscription_id],
            ["mining.notify", subscription_id],
        ]
        data = encode_response(req.id, [subscriptions, extranonce1, extranonce2_size])
        self._core.state = new_state
        self._subscribed = True
        self._extranonce1, self._extranonce2_size = extranonce1, extranonce2_size
        self._subscription_id = subscription_id
        self._user_agent = req.user_agent
        return data

    def authorize_ok(self, req: Authorize, worker: str | None = None) -> bytes:
        """Accept a mining.authorize: ``worker`` (default: the username) may now submit.

        ``worker`` must be the string the miner puts first in its submits (normally the
        username it authorized with), as that is what :meth:`check_submit` compares.
        """
        name = req.username if worker is None else worker
        if not isinstance(name, str):
            raise LocalProtocolError("worker must be a str")
        data = self._answer(req, True, None)
        self._authorized.add(name)
        return data

    def configure_reply(self, req: Configure, *, pool_version_mask: int) -> bytes:
        """Answer a mining.configure (BIP 310); every extension but version-rolling is false.

        version-rolling is granted with ``pool_version_mask & miner_mask`` when that has at
        least the miner's min-bit-count bits (see :func:`negotiate_version_rolling`); the
        granted mask becomes :attr:`version_mask` (None when refused).
        """
        if type(pool_version_mask) is not int or not 0 <= pool_version_mask <= 0xFFFFFFFF:
            raise LocalProtocolError(f"pool_version_mask must be a uint32: {pool_version_mask!r}")
        new_state = next_state(self.state, Trigger.CONFIGURE)
        result: dict[str, Any] = {}
        granted: int | None = None
        for extension in req.extensions:
            if extension in result:
                continue
            if extension == VERSION_ROLLING:
                granted = negotiate_version_rolling(req.params, pool_version_mask)
                result[VERSION_ROLLING] = granted is not None
                if granted is not None:
                    result["version-rolling.mask"] = f"{granted:08x}"
            else:
                result[extension] = False
        data = self._answer(req, result, None)
        self._core.state = new_state
        if VERSION_ROLLING in req.extensions:
            self._version_mask = granted
        return data

    def reply(self, req: ClientRequest, result: Any) -> bytes:
        """A successful answer. Subscribe, Configure and Authorize-true have their own helpers
        (they change state), so passing them here is a LocalProtocolError."""
        if isinstance(req, Subscribe):
            raise LocalProtocolError("answer mining.subscribe with subscribe_ok()")
        if isinstance(req, Configure):
            raise LocalProtocolError("answer mining.configure with configure_reply()")
        if isinstance(req, Authorize) and result is True:
            raise LocalProtocolError("accept mining.authorize with authorize_ok()")
        if isinstance(req, InvalidRequest):
            raise LocalProtocolError("answer an InvalidRequest with reject() or reply_error()")
        return self._answer(req, result, None)

    def reply_error(self, req: ClientRequest, code: int, message: str) -> bytes:
        """An error answer ``[code, message, null]`` (any request may be refused)."""
        return self._answer(req, None, (code, message))

    def reject(self, req: InvalidRequest | UnknownMethod) -> bytes:
        """The standard answer to a request this package could not parse or does not know."""
        if isinstance(req, UnknownMethod):
            return self.reply_error(req, ErrorCode.OTHER, f"unknown method {req.method[:64]}")
        return self.reply_error(req, req.code, req.message)

    def answer_submit(self, req: Submit, error: ErrorTuple | None) -> bytes:
        """The answer to a mining.submit: ``true`` (error None) or ``[code, message, null]``.
        The same bytes as ``reply(req, True)`` / ``reply_error(req, *error)``, faster."""
        check_send(self.state, Outgoing.RESPONSE)
        return encode_result_true_or_error(check_id(req.id), error)

    def check_submit(self, req: Submit) -> ErrorTuple | None:
        """The connection-level verdict on a submit: (25, ...), (24, ...) or None if fine."""
        if not self._subscribed:
            return int(ErrorCode.NOT_SUBSCRIBED), "not subscribed"
        if req.worker not in self._authorized:
            return int(ErrorCode.UNAUTHORIZED), f"unauthorized worker {req.worker[:64]}"
        return None

    def notify(self, event: PoolNotification, *, encoded: bytes | None = None) -> bytes:
        """Encode a notification, check it is allowed now, and record what it changes.

        ``encoded``: the event's line, already made by :func:`encode_notification` (a job
        broadcast to many connections is encoded once); it is returned as it is."""
        kind = _KIND.get(type(event))
        if kind is None:
            raise LocalProtocolError(f"not a notification: {type(event).__name__}")
        check_send(self.state, kind)
        if isinstance(event, SetExtranonce) and not self._extranonce_subscribed:
            raise LocalProtocolError("set_extranonce needs mining.extranonce.subscribe first")
        if isinstance(event, SetVersionMask) and self._version_mask is None:
            raise LocalProtocolError("set_version_mask needs negotiated version rolling")
        data = encode_notification(event) if encoded is None else encoded
        if isinstance(event, SetDifficulty):
            self._difficulty = float(event.difficulty)
        elif isinstance(event, SetExtranonce):
            self._extranonce1 = event.extranonce1
            self._extranonce2_size = event.extranonce2_size
        elif isinstance(event, SetVersionMask):
            self._version_mask = int(event.mask, 16)
        return data

    def notify_job(self, event: Notify, encoded: bytes) -> bytes:
        """``notify(event, encoded=encoded)`` for a mining.notify (a job broadcast to every
        connection: the same checks, none of the generic dispatch)."""
        check_send(self.state, Outgoing.NOTIFY)
        return encoded

    def close(self) -> None:
        """Local close: nothing more is received or sent. Idempotent."""
        self._core.fire(Trigger.LOCAL_CLOSE)

    # -------------------------------------------------------------------- internals

    def _answer(self, req: ClientRequest, result: Any, error: ErrorTuple | None) -> bytes:
        check_send(self.state, Outgoing.RESPONSE)
        return encode_response(check_id(req.id), result, error)
