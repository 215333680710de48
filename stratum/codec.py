"""Stratum v1's JSON-RPC dialect: lines of bytes <-> events. Pure functions, no state.

Decoding never raises: a line that is not a valid message becomes an
:class:`~stratum.events.InvalidRequest` (pool side) or
:class:`~stratum.events.InvalidMessage` (miner side) saying what was wrong.
Encoding raises :class:`~stratum.errors.LocalProtocolError` for values that cannot be sent.

Wire conventions: errors are ``[code, message, null]``; notifications carry ``"id": null``;
``client.reconnect`` sends its port as a string (cgminer only reads a string there, cpuminer
reads both); difficulties keep their fractions and integral values print as integers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ._json import (
    check_id,
    dumps_line,
    format_difficulty,
    json_type,
    load_object,
    parse_difficulty,
    read_id,
)
from .errors import ErrorCode, LocalProtocolError
from .events import (
    Authorize,
    ClientRequest,
    Configure,
    ErrorTuple,
    ExtranonceSubscribe,
    GetTransactions,
    InvalidRequest,
    RequestId,
    Submit,
    Subscribe,
    SuggestDifficulty,
    UnknownMethod,
)

# The pool-side notification encoder and the miner-side decoder live in stratum.notifications
# (to keep modules small); they are re-exported here as part of the codec.
from .notifications import decode_server_message, encode_notification

__all__ = [
    "AUTHORIZE",
    "CONFIGURE",
    "EXTRANONCE_SUBSCRIBE",
    "GET_TRANSACTIONS",
    "SUBMIT",
    "SUBSCRIBE",
    "SUGGEST_DIFFICULTY",
    "decode_request",
    "decode_server_message",
    "encode_client_request",
    "encode_notification",
    "encode_request",
    "encode_response",
    "format_difficulty",
    "parse_difficulty",
]

SUBSCRIBE = "mining.subscribe"
AUTHORIZE = "mining.authorize"
CONFIGURE = "mining.configure"
SUBMIT = "mining.submit"
SUGGEST_DIFFICULTY = "mining.suggest_difficulty"
EXTRANONCE_SUBSCRIBE = "mining.extranonce.subscribe"
GET_TRANSACTIONS = "mining.get_transactions"


class _BadParams(Exception):
    """Raised by a params parser; its message says what was wrong."""


# ------------------------------------------------------------------------ encoding


def encode_response(id: RequestId, result: Any = None, error: ErrorTuple | None = None) -> bytes:
    """``{"id": id, "result": result, "error": null | [code, message, null]}`` as a line."""
    wire_error: list[Any] | None = None
    if error is not None:
        code, message = error
        if not isinstance(code, int) or isinstance(code, bool):
            raise LocalProtocolError(f"error code must be an int, not {code!r}")
        if not isinstance(message, str):
            raise LocalProtocolError(f"error message must be a str, not {message!r}")
        wire_error = [int(code), message, None]
    return dumps_line({"id": check_id(id), "result": result, "error": wire_error})


_RESULT_TRUE = b',"result":true,"error":null}\n'
_error_tails: dict[ErrorTuple, bytes] = {}


def encode_result_true_or_error(id: RequestId, error: ErrorTuple | None) -> bytes:
    """The answer to a submit, byte for byte what :func:`encode_response` gives for
    ``result`` true or ``(None, error)``, built from cached pieces: error tails are cached
    per (code, message), so answering costs one small join whatever the verdict."""
    if type(id) is int:
        head = b'{"id":' + str(id).encode()
    else:
        head = b'{"id":' + dumps_line(check_id(id))[:-1]
    if error is None:
        return head + _RESULT_TRUE
    tail = _error_tails.get(error)
    if tail is None:
        body = encode_response(0, None, error)
        tail = body[body.index(b',"result"') :]
        if len(_error_tails) < 1024:
            _error_tails[error] = tail
    return head + tail


def encode_request(id: RequestId, method: str, params: Sequence[Any] = ()) -> bytes:
    """``{"id": id, "method": method, "params": [...]}`` as a line."""
    if not isinstance(method, str) or not method:
        raise LocalProtocolError(f"method must be a non-empty str, not {method!r}")
    if isinstance(params, str | bytes) or not isinstance(params, Sequence):
        raise LocalProtocolError("params must be a sequence")
    return dumps_line({"id": check_id(id), "method": method, "params": list(params)})


def encode_client_request(event: ClientRequest) -> bytes:
    """Serialize a request event, the inverse of :func:`decode_request` for valid requests."""
    match event:
        case Subscribe(id=id, user_agent=ua, session_id=sid):
            params: list[Any] = [] if ua is None and sid is None else [ua]
            if sid is not None:
                params.append(sid)
            return encode_request(id, SUBSCRIBE, params)
        case Authorize(id=id, username=username, password=password):
            return encode_request(id, AUTHORIZE, [username, password])
        case Configure(id=id, extensions=extensions, params=ext_params):
            return encode_request(id, CONFIGURE, [list(extensions), ext_params])
        case Submit():
            fields = [event.worker, event.job_id, event.extranonce2, event.ntime, event.nonce]
            if event.version_bits is not None:
                fields.append(event.version_bits)
            return encode_request(event.id, SUBMIT, fields)
        case SuggestDifficulty(id=id, difficulty=difficulty):
            return encode_request(id, SUGGEST_DIFFICULTY, [format_difficulty(difficulty)])
        case ExtranonceSubscribe(id=id):
            return encode_request(id, EXTRANONCE_SUBSCRIBE, [])
        case GetTransactions(id=id, job_id=job_id):
            return encode_request(id, GET_TRANSACTIONS, [] if job_id is None else [job_id])
        case UnknownMethod(id=id, method=method, params=params):
            if not isinstance(params, list | tuple):
                raise LocalProtocolError("UnknownMethod.params must be a list to be sent")
            return encode_request(id, method, params)
    raise LocalProtocolError(f"cannot encode {type(event).__name__} as a request")


# ------------------------------------------------------------------------ decoding


def decode_request(line: bytes) -> ClientRequest:
    """Decode one line from a miner. Never raises: anything wrong is an InvalidRequest."""
    obj = load_object(line)
    if type(obj) is dict and obj.get("method") == SUBMIT:  # the hot path: 5 or 6 strings
        id = obj.get("id")
        p = obj.get("params")
        if (type(id) is int or type(id) is str or id is None) and type(p) is list:
            n = len(p)
            if n == 5 or n == 6:
                w, j, e, t, nonce = p[0], p[1], p[2], p[3], p[4]
                v = p[5] if n == 6 else None
                if (
                    type(w) is str
                    and type(j) is str
                    and type(e) is str
                    and type(t) is str
                    and type(nonce) is str
                    and (v is None or type(v) is str)
                ):
                    return Submit(id, w, j, e, t, nonce, v)
    if isinstance(obj, tuple):
        return InvalidRequest(None, obj[0], obj[1])
    id, id_problem = read_id(obj)
    if id_problem is not None:
        return InvalidRequest(None, ErrorCode.INVALID_REQUEST, id_problem)
    method = obj.get("method")
    if method is None:
        return InvalidRequest(id, ErrorCode.INVALID_REQUEST, "missing method")
    if not isinstance(method, str):
        return InvalidRequest(
            id, ErrorCode.INVALID_REQUEST, f"method must be a string, not {json_type(method)}"
        )
    params = obj.get("params")
    if params is None:  # absent or null: no params
        params = []
    if not isinstance(params, list):
        return InvalidRequest(
            id, ErrorCode.INVALID_REQUEST, f"params must be an array, not {json_type(params)}"
        )
    parser = _PARSERS.get(method)
    if parser is None:
        return UnknownMethod(id, method, params)
    try:
        return parser(id, params)
    except _BadParams as exc:
        return InvalidRequest(id, ErrorCode.INVALID_PARAMS, f"{method}: {exc}")


def _count(params: list[Any], low: int, high: int | None, usage: str) -> None:
    if len(params) < low or (high is not None and len(params) > high):
        raise _BadParams(f"expected params {usage}, got {len(params)} params")


def _str(params: list[Any], index: int, name: str) -> str:
    value = params[index]
    if not isinstance(value, str):
        raise _BadParams(f"{name} must be a string, not {json_type(value)}")
    return value


def _opt_str(params: list[Any], index: int, name: str) -> str | None:
    if index >= len(params) or params[index] is None:
        return None
    return _str(params, index, name)


def _parse_subscribe(id: RequestId, params: list[Any]) -> Subscribe:
    # Extra params are ignored: some firmwares append the pool's host and port.
    return Subscribe(id, _opt_str(params, 0, "user_agent"), _opt_str(params, 1, "session_id"))


def _parse_authorize(id: RequestId, params: list[Any]) -> Authorize:
    _count(params, 1, 2, "[username, password?]")
    password = _opt_str(params, 1, "password")
    return Authorize(id, _str(params, 0, "username"), "" if password is None else password)


def _parse_configure(id: RequestId, params: list[Any]) -> Configure:
    _count(params, 1, 2, "[[extension...], {params}]")
    extensions = params[0]
    if not isinstance(extensions, list) or not all(isinstance(e, str) for e in extensions):
        raise _BadParams("extensions must be an array of strings")
    ext_params = params[1] if len(params) > 1 and params[1] is not None else {}
    if not isinstance(ext_params, dict):
        raise _BadParams(f"extension params must be an object, not {json_type(ext_params)}")
    return Configure(id, tuple(extensions), ext_params)


def _parse_submit(id: RequestId, params: list[Any]) -> Submit:
    _count(params, 5, 6, "[worker, job_id, extranonce2, ntime, nonce, version_bits?]")
    worker, job_id, extranonce2, ntime, nonce = (
        _str(params, i, name) for i, name in enumerate(_SUBMIT_FIELDS)
    )
    version_bits = _opt_str(params, 5, "version_bits")
    return Submit(id, worker, job_id, extranonce2, ntime, nonce, version_bits)


_SUBMIT_FIELDS = ("worker", "job_id", "extranonce2", "ntime", "nonce")


def _parse_suggest_difficulty(id: RequestId, params: list[Any]) -> SuggestDifficulty:
    _count(params, 1, 1, "[difficulty]")
    difficulty = parse_difficulty(params[0])
    if difficulty is None:
        raise _BadParams(f"difficulty must be a finite number > 0, not {params[0]!r:.40}")
    return SuggestDifficulty(id, difficulty)


def _parse_extranonce_subscribe(id: RequestId, params: list[Any]) -> ExtranonceSubscribe:
    return ExtranonceSubscribe(id)  # params carry nothing; ignore whatever was sent


def _parse_get_transactions(id: RequestId, params: list[Any]) -> GetTransactions:
    _count(params, 0, 1, "[job_id?]")
    return GetTransactions(id, _opt_str(params, 0, "job_id"))


_PARSERS: dict[str, Callable[[RequestId, list[Any]], ClientRequest]] = {
    SUBSCRIBE: _parse_subscribe,
    AUTHORIZE: _parse_authorize,
    CONFIGURE: _parse_configure,
    SUBMIT: _parse_submit,
    SUGGEST_DIFFICULTY: _parse_suggest_difficulty,
    EXTRANONCE_SUBSCRIBE: _parse_extranonce_subscribe,
    GET_TRANSACTIONS: _parse_get_transactions,
}
