"""The miner's side of one Stratum v1 connection (sans-IO), for the bundled miner and tests.

Request methods return the bytes to write; :meth:`ClientConnection.next_event` returns the
pool's notifications and the answers to our requests as typed results (SubscribeResult,
AuthorizeResult, ConfigureResult, SubmitResult, RequestFailed), matched by id; answers to
other requests and to ids we never used come back as plain Response events.

With ``fixed_submit_id`` every submit carries that same id (cpuminer uses 4) and answers
carrying it are matched to outstanding submits in FIFO order; the automatic ids of the other
requests skip that number.

The client validates little on purpose: it is also used to send the pool bad shares. Like
the server side, ``receive_data`` never raises and ``next_event`` raises only
RemoteProtocolError (a line over the limit); garbage from the pool is an InvalidMessage event.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._json import is_hex
from ._stream import StreamCore
from .codec import (
    AUTHORIZE,
    CONFIGURE,
    EXTRANONCE_SUBSCRIBE,
    GET_TRANSACTIONS,
    SUBMIT,
    SUBSCRIBE,
    SUGGEST_DIFFICULTY,
    decode_server_message,
    encode_client_request,
    encode_request,
    encode_response,
)
from .errors import ErrorCode
from .events import (
    Authorize,
    AuthorizeResult,
    ClientEvent,
    ClientRequest,
    Configure,
    ConfigureResult,
    ErrorTuple,
    ExtranonceSubscribe,
    GetTransactions,
    RequestFailed,
    RequestId,
    Response,
    SetDifficulty,
    SetExtranonce,
    SetVersionMask,
    Submit,
    SubmitResult,
    Subscribe,
    SubscribeResult,
    SuggestDifficulty,
)
from .framing import DEFAULT_MAX_LINE_BYTES
from .notifications import MAX_EXTRANONCE2_SIZE
from .state import ConnState, Outgoing, Trigger, check_send

__all__ = ["ClientConnection"]


@dataclass(frozen=True, slots=True)
class _Pending:
    method: str
    username: str = ""


_SUBMIT = _Pending(SUBMIT)


class ClientConnection:
    """Protocol state of one connection to a pool, seen from the miner."""

    def __init__(
        self,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        *,
        fixed_submit_id: int | None = None,
    ) -> None:
        if fixed_submit_id is not None and type(fixed_submit_id) is not int:
            raise TypeError("fixed_submit_id must be an int or None")
        self._core = StreamCore(max_line_bytes)
        self._fixed_submit_id = fixed_submit_id
        self._next_id = 1
        self._last_id: int | None = None
        self._pending: dict[int, _Pending] = {}
        self._fixed_submits = 0  # outstanding submits sent with the fixed id
        self._subscribed = False
        self._extranonce1: str | None = None
        self._extranonce2_size: int | None = None
        self._session_id: str | None = None
        self._difficulty = 1.0
        self._version_mask: int | None = None
        self._authorized: set[str] = set()

    # -------------------------------------------------------------- read-only state

    @property
    def state(self) -> ConnState:
        return self._core.state

    @property
    def subscribed(self) -> bool:
        return self._subscribed

    @property
    def extranonce1(self) -> str | None:
        """From the subscribe result, then from mining.set_extranonce."""
        return self._extranonce1

    @property
    def extranonce2_size(self) -> int | None:
        return self._extranonce2_size

    @property
    def session_id(self) -> str | None:
        """The mining.notify subscription id, to resume the session on reconnect."""
        return self._session_id

    @property
    def difficulty(self) -> float:
        """The last mining.set_difficulty received; 1.0 (the Stratum default) before any.

        Miners apply it to the NEXT job; keeping the difficulty per job is the miner's part.
        """
        return self._difficulty

    @property
    def version_mask(self) -> int | None:
        """Granted by mining.configure, then changed by mining.set_version_mask; or None."""
        return self._version_mask

    @property
    def authorized_workers(self) -> frozenset[str]:
        return frozenset(self._authorized)

    @property
    def last_request_id(self) -> int | None:
        """The id of the last request built (to match results to what was sent)."""
        return self._last_id

    @property
    def pending_requests(self) -> int:
        """Requests sent and not answered yet."""
        return len(self._pending) + self._fixed_submits

    # --------------------------------------------------------------------- requests

    def subscribe(self, user_agent: str | None = None, session_id: str | None = None) -> bytes:
        return self._send(_Pending(SUBSCRIBE), lambda i: Subscribe(i, user_agent, session_id))

    def authorize(self, username: str, password: str = "") -> bytes:
        return self._send(_Pending(AUTHORIZE, username), lambda i: Authorize(i, username, password))

    def configure(self, extensions: Sequence[str], params: Mapping[str, Any]) -> bytes:
        exts, ext_params = tuple(extensions), dict(params)
        return self._send(_Pending(CONFIGURE), lambda i: Configure(i, exts, ext_params))

    def suggest_difficulty(self, difficulty: float) -> bytes:
        pending = _Pending(SUGGEST_DIFFICULTY)
        return self._send(pending, lambda i: SuggestDifficulty(i, difficulty))

    def extranonce_subscribe(self) -> bytes:
        return self._send(_Pending(EXTRANONCE_SUBSCRIBE), ExtranonceSubscribe)

    def get_transactions(self, job_id: str | None = None) -> bytes:
        return self._send(_Pending(GET_TRANSACTIONS), lambda i: GetTransactions(i, job_id))

    def submit(
        self,
        worker: str,
        job_id: str,
        extranonce2: str,
        ntime: str,
        nonce: str,
        version_bits: str | None = None,
    ) -> bytes:
        """mining.submit with 5 params, or 6 when ``version_bits`` is given (sent as is)."""
        fields = (worker, job_id, extranonce2, ntime, nonce, version_bits)
        if self._fixed_submit_id is None:
            return self._send(_SUBMIT, lambda i: Submit(i, *fields))
        check_send(self.state, Outgoing.REQUEST)
        data = encode_client_request(Submit(self._fixed_submit_id, *fields))
        self._fixed_submits += 1
        self._last_id = self._fixed_submit_id
        return data

    def request(self, method: str, params: Sequence[Any] = ()) -> bytes:
        """Any other request; its answer comes back as a plain Response."""
        check_send(self.state, Outgoing.REQUEST)
        request_id = self._peek_id()
        data = encode_request(request_id, method, params)
        self._commit(request_id, _Pending(method))
        return data

    def respond(self, id: RequestId, result: Any = None, error: ErrorTuple | None = None) -> bytes:
        """Answer a request from the pool (an UnknownNotification with an id)."""
        check_send(self.state, Outgoing.RESPONSE)
        return encode_response(id, result, error)

    # -------------------------------------------------------------------- receiving

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the socket; ``b""`` means the pool closed. Never raises."""
        self._core.receive_data(data)

    def next_event(self) -> ClientEvent:
        """The next event, NEED_DATA or CONNECTION_CLOSED. Raises only RemoteProtocolError."""
        line = self._core.next_line()
        if not isinstance(line, bytes):
            return line
        message = decode_server_message(line)
        match message:
            case Response():
                return self._match(message)
            case SetDifficulty(difficulty=difficulty):
                self._difficulty = difficulty
            case SetExtranonce(extranonce1=extranonce1, extranonce2_size=size):
                self._extranonce1, self._extranonce2_size = extranonce1, size
            case SetVersionMask(mask=mask):
                self._version_mask = int(mask.zfill(8), 16)
        return message

    def close(self) -> None:
        """Local close: nothing more is received or sent. Idempotent."""
        self._core.fire(Trigger.LOCAL_CLOSE)

    # -------------------------------------------------------------------- internals

    def _peek_id(self) -> int:
        request_id = self._next_id
        if request_id == self._fixed_submit_id:
            request_id += 1
        return request_id

    def _commit(self, request_id: int, pending: _Pending) -> None:
        self._next_id = request_id + 1
        self._last_id = request_id
        self._pending[request_id] = pending

    def _send(self, pending: _Pending, build: Callable[[int], ClientRequest]) -> bytes:
        check_send(self.state, Outgoing.REQUEST)
        request_id = self._peek_id()
        event: ClientRequest = build(request_id)
        data = encode_client_request(event)
        self._commit(request_id, pending)
        return data

    def _match(self, response: Response) -> ClientEvent:
        rid, result, error = response.id, response.result, response.error
        pending: _Pending | None = None
        if rid == self._fixed_submit_id and rid is not None and self._fixed_submits:
            self._fixed_submits -= 1
            pending = _SUBMIT
        elif type(rid) is int:
            pending = self._pending.pop(rid, None)
        if pending is None:
            return response
        ok = error is None and result is True
        if pending.method == SUBMIT:
            return SubmitResult(rid, ok, error)
        if pending.method == AUTHORIZE:
            if ok:
                self._authorized.add(pending.username)
            return AuthorizeResult(rid, pending.username, ok, error)
        if pending.method == SUBSCRIBE:
            return self._subscribed_event(rid, result, error)
        if pending.method == CONFIGURE:
            return self._configured_event(rid, result, error)
        return response

    def _subscribed_event(
        self, rid: RequestId, result: Any, error: ErrorTuple | None
    ) -> SubscribeResult | RequestFailed:
        if error is not None:
            return RequestFailed(rid, SUBSCRIBE, error)
        if not isinstance(result, list) or len(result) < 3:
            return _malformed(rid, SUBSCRIBE, "expected [subscriptions, extranonce1, size]")
        extranonce1, size = result[1], result[2]
        if not is_hex(extranonce1):
            return _malformed(rid, SUBSCRIBE, "extranonce1 must be hex")
        if type(size) is not int or not 1 <= size <= MAX_EXTRANONCE2_SIZE:
            return _malformed(rid, SUBSCRIBE, f"extranonce2_size must be 1..{MAX_EXTRANONCE2_SIZE}")
        session_id = _notify_subscription(result[0])
        self._core.fire(Trigger.SUBSCRIBE)
        self._subscribed = True
        self._extranonce1, self._extranonce2_size = extranonce1, size
        self._session_id = session_id
        return SubscribeResult(rid, extranonce1, size, session_id)

    def _configured_event(
        self, rid: RequestId, result: Any, error: ErrorTuple | None
    ) -> ConfigureResult | RequestFailed:
        if error is not None:
            return RequestFailed(rid, CONFIGURE, error)
        if not isinstance(result, dict):
            return _malformed(rid, CONFIGURE, "expected an object")
        mask = result.get("version-rolling.mask")
        granted = result.get("version-rolling") is True
        if granted and isinstance(mask, str) and is_hex(mask.zfill(8), 8):
            self._version_mask = int(mask.zfill(8), 16)
        else:
            self._version_mask = None
        self._core.fire(Trigger.CONFIGURE)
        return ConfigureResult(rid, result)


def _malformed(rid: RequestId, method: str, why: str) -> RequestFailed:
    return RequestFailed(rid, method, (int(ErrorCode.OTHER), f"malformed {method} result: {why}"))


def _notify_subscription(subscriptions: Any) -> str | None:
    """The mining.notify subscription id from ``[["mining.notify", id], ...]`` (or a flat pair)."""
    if not isinstance(subscriptions, list):
        return None
    entries = subscriptions if all(isinstance(e, list) for e in subscriptions) else [subscriptions]
    for entry in entries:
        if len(entry) >= 2 and entry[0] == "mining.notify" and isinstance(entry[1], str):
            value: str = entry[1]
            return value
    return None
