"""Events: the typed vocabulary of Stratum v1 (frozen dataclasses, no behaviour).

Client -> pool requests all carry ``id`` first; ids are echoed back unchanged (``int``, ``str``
or ``None``; ``bool`` and ``float`` ids are rejected as :class:`InvalidRequest`).

Pool -> client notifications carry no id on the wire (``"id": null``).

``NeedData`` and ``ConnectionClosed`` are sentinel events returned by ``next_event()``; they
are field-less frozen dataclasses, so ``isinstance(ev, NeedData)``, ``ev == NeedData()`` and
``ev is NEED_DATA`` all work (the connections always return the module singletons).

Events holding a ``dict`` or ``Any`` field (``Configure``, ``UnknownMethod``, ``Response``...)
compare by value but are not hashable when that field is not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

__all__ = [
    "CONNECTION_CLOSED",
    "NEED_DATA",
    "Authorize",
    "AuthorizeResult",
    "ClientEvent",
    "ClientRequest",
    "Configure",
    "ConfigureResult",
    "ConnectionClosed",
    "ErrorTuple",
    "ExtranonceSubscribe",
    "GetTransactions",
    "InvalidMessage",
    "InvalidRequest",
    "NeedData",
    "Notify",
    "PoolNotification",
    "Reconnect",
    "RequestFailed",
    "RequestId",
    "Response",
    "ServerEvent",
    "ServerMessage",
    "SetDifficulty",
    "SetExtranonce",
    "SetVersionMask",
    "ShowMessage",
    "Submit",
    "SubmitResult",
    "Subscribe",
    "SubscribeResult",
    "SuggestDifficulty",
    "UnknownMethod",
    "UnknownNotification",
]

RequestId: TypeAlias = int | str | None
"""A JSON-RPC id as Stratum uses it: echoed back unchanged."""

ErrorTuple: TypeAlias = tuple[int, str]

# --------------------------------------------------------------------------- sentinels


@dataclass(frozen=True, slots=True)
class NeedData:
    """No complete event is buffered: feed more bytes with ``receive_data``."""


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The stream ended (peer EOF or local ``close()``); returned again on every call."""


NEED_DATA = NeedData()
CONNECTION_CLOSED = ConnectionClosed()

# ------------------------------------------------------------------ client -> pool


@dataclass(frozen=True, slots=True)
class Subscribe:
    """``mining.subscribe [user_agent?, session_id?]`` (extra params are ignored)."""

    id: RequestId
    user_agent: str | None = None
    session_id: str | None = None


@dataclass(frozen=True, slots=True)
class Authorize:
    """``mining.authorize [username, password?]``; a missing or null password is ``""``."""

    id: RequestId
    username: str
    password: str = ""


@dataclass(frozen=True, slots=True)
class Configure:
    """``mining.configure [[extension...], {params}]`` (BIP 310)."""

    id: RequestId
    extensions: tuple[str, ...]
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Submit:
    """``mining.submit`` with 5 or 6 params, kept as the raw strings the miner sent."""

    id: RequestId
    worker: str
    job_id: str
    extranonce2: str
    ntime: str
    nonce: str
    version_bits: str | None = None


@dataclass(frozen=True, slots=True)
class SuggestDifficulty:
    """``mining.suggest_difficulty [diff]``; always a finite float > 0."""

    id: RequestId
    difficulty: float


@dataclass(frozen=True, slots=True)
class ExtranonceSubscribe:
    """``mining.extranonce.subscribe []``."""

    id: RequestId


@dataclass(frozen=True, slots=True)
class GetTransactions:
    """``mining.get_transactions [job_id?]``."""

    id: RequestId
    job_id: str | None = None


@dataclass(frozen=True, slots=True)
class UnknownMethod:
    """A well-formed request for a method this package does not know."""

    id: RequestId
    method: str
    params: Any


@dataclass(frozen=True, slots=True)
class InvalidRequest:
    """A line that is not a valid request; ``message`` says what was wrong.

    ``id`` is the request's id when one could be read, else ``None``.
    ``code`` is one of PARSE_ERROR, INVALID_REQUEST or INVALID_PARAMS.
    """

    id: RequestId
    code: int
    message: str


ClientRequest: TypeAlias = (
    Subscribe
    | Authorize
    | Configure
    | Submit
    | SuggestDifficulty
    | ExtranonceSubscribe
    | GetTransactions
    | UnknownMethod
    | InvalidRequest
)
"""Everything :func:`stratum.codec.decode_request` can return."""

ServerEvent: TypeAlias = ClientRequest | NeedData | ConnectionClosed
"""Everything ``ServerConnection.next_event()`` can return."""

# ------------------------------------------------------------------ pool -> client


@dataclass(frozen=True, slots=True)
class Response:
    """A JSON-RPC response: ``error`` is ``(code, message)`` or None."""

    id: RequestId
    result: Any
    error: ErrorTuple | None = None


@dataclass(frozen=True, slots=True)
class SetDifficulty:
    """``mining.set_difficulty [diff]``: may be fractional (0.001 is valid)."""

    difficulty: float


@dataclass(frozen=True, slots=True)
class Notify:
    """``mining.notify``: a job (see the protocol notes for the byte orders)."""

    job_id: str
    prevhash: str
    coinb1: str
    coinb2: str
    merkle_branch: tuple[str, ...]
    version: str
    nbits: str
    ntime: str
    clean_jobs: bool


@dataclass(frozen=True, slots=True)
class SetExtranonce:
    """``mining.set_extranonce [extranonce1_hex, extranonce2_size]``."""

    extranonce1: str
    extranonce2_size: int


@dataclass(frozen=True, slots=True)
class SetVersionMask:
    """``mining.set_version_mask [mask_hex]`` (BIP 310)."""

    mask: str


@dataclass(frozen=True, slots=True)
class Reconnect:
    """``client.reconnect [host?, port?, wait_seconds?]``."""

    host: str | None = None
    port: int | None = None
    wait_seconds: int | None = None


@dataclass(frozen=True, slots=True)
class ShowMessage:
    """``client.show_message [text]``."""

    text: str


PoolNotification: TypeAlias = (
    SetDifficulty | Notify | SetExtranonce | SetVersionMask | Reconnect | ShowMessage
)


@dataclass(frozen=True, slots=True)
class UnknownNotification:
    """A pool message with a method this package does not know.

    ``id`` is not None when the pool expects an answer (e.g. ``client.get_version``).
    """

    method: str
    params: Any
    id: RequestId = None


@dataclass(frozen=True, slots=True)
class InvalidMessage:
    """A line from the pool that could not be understood (client side's InvalidRequest)."""

    code: int
    message: str


ServerMessage: TypeAlias = Response | PoolNotification | UnknownNotification | InvalidMessage
"""Everything :func:`stratum.codec.decode_server_message` can return."""

# ---------------------------------------------------- client-side typed results


@dataclass(frozen=True, slots=True)
class SubscribeResult:
    """A successful answer to our ``mining.subscribe``.

    ``session_id`` is the id of the ``mining.notify`` subscription (what cpuminer sends back
    as its second subscribe param to resume a session), None if the pool gave none.
    """

    id: RequestId
    extranonce1: str
    extranonce2_size: int
    session_id: str | None = None


@dataclass(frozen=True, slots=True)
class AuthorizeResult:
    """The answer to our ``mining.authorize`` for ``username``."""

    id: RequestId
    username: str
    ok: bool
    error: ErrorTuple | None = None


@dataclass(frozen=True, slots=True)
class ConfigureResult:
    """A successful answer to our ``mining.configure`` (the result object)."""

    id: RequestId
    result: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """The answer to one of our ``mining.submit``."""

    id: RequestId
    accepted: bool
    error: ErrorTuple | None = None


@dataclass(frozen=True, slots=True)
class RequestFailed:
    """Our ``mining.subscribe`` or ``mining.configure`` got an error or a malformed result."""

    id: RequestId
    method: str
    error: ErrorTuple


ClientEvent: TypeAlias = (
    Response
    | PoolNotification
    | UnknownNotification
    | InvalidMessage
    | SubscribeResult
    | AuthorizeResult
    | ConfigureResult
    | SubmitResult
    | RequestFailed
    | NeedData
    | ConnectionClosed
)
"""Everything ``ClientConnection.next_event()`` can return."""
