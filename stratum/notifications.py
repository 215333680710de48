"""Pool -> miner messages: notification encoding (pool side) and decoding (miner side).

Part of the codec (re-exported by :mod:`stratum.codec`). Encoding validates what it can
check without context (hex field lengths, ranges) and raises LocalProtocolError, so a pool
bug is caught before a miner sees it. Decoding never raises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._json import (
    dumps_line,
    format_difficulty,
    is_hex,
    json_type,
    load_object,
    parse_difficulty,
    parse_error_field,
    read_id,
)
from .errors import ErrorCode, LocalProtocolError
from .events import (
    InvalidMessage,
    Notify,
    PoolNotification,
    Reconnect,
    Response,
    ServerMessage,
    SetDifficulty,
    SetExtranonce,
    SetVersionMask,
    ShowMessage,
    UnknownNotification,
)

__all__ = [
    "MAX_EXTRANONCE2_SIZE",
    "NOTIFY",
    "RECONNECT",
    "SET_DIFFICULTY",
    "SET_EXTRANONCE",
    "SET_VERSION_MASK",
    "SHOW_MESSAGE",
    "decode_server_message",
    "encode_notification",
]

SET_DIFFICULTY = "mining.set_difficulty"
NOTIFY = "mining.notify"
SET_EXTRANONCE = "mining.set_extranonce"
SET_VERSION_MASK = "mining.set_version_mask"
RECONNECT = "client.reconnect"
SHOW_MESSAGE = "client.show_message"

MAX_EXTRANONCE2_SIZE = 100  # cpuminer's bound; a coinbase scriptSig is at most 100 bytes


class _Bad(Exception):
    """Raised by a notification params parser; its message says what was wrong."""


# ------------------------------------------------------------------------ encoding


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise LocalProtocolError(message)


def check_extranonce(extranonce1: Any, extranonce2_size: Any) -> None:
    """LocalProtocolError unless extranonce1 is hex and 1 <= extranonce2_size <= 100."""
    _require(is_hex(extranonce1), f"extranonce1 must be hex of even length: {extranonce1!r}")
    _require(
        type(extranonce2_size) is int and 1 <= extranonce2_size <= MAX_EXTRANONCE2_SIZE,
        f"extranonce2_size must be an int in 1..{MAX_EXTRANONCE2_SIZE}: {extranonce2_size!r}",
    )


def _notify_params(ev: Notify) -> list[Any]:
    _require(isinstance(ev.job_id, str) and ev.job_id != "", "job_id must be a non-empty str")
    _require(is_hex(ev.prevhash, 64), f"prevhash must be 64 hex chars: {ev.prevhash!r}")
    _require(is_hex(ev.coinb1) and is_hex(ev.coinb2), "coinb1/coinb2 must be hex")
    branch = list(ev.merkle_branch)
    _require(all(is_hex(h, 64) for h in branch), "merkle_branch must be 64-hex-char hashes")
    for name in ("version", "nbits", "ntime"):
        value = getattr(ev, name)
        _require(is_hex(value, 8), f"{name} must be 8 hex chars: {value!r}")
    _require(isinstance(ev.clean_jobs, bool), "clean_jobs must be a bool")
    head = [ev.job_id, ev.prevhash, ev.coinb1, ev.coinb2, branch]
    return [*head, ev.version, ev.nbits, ev.ntime, ev.clean_jobs]


def _reconnect_params(ev: Reconnect) -> list[Any]:
    _require(ev.host is None or isinstance(ev.host, str), "host must be a str or None")
    _require(
        ev.port is None or (type(ev.port) is int and 0 < ev.port < 65536),
        f"port must be an int in 1..65535: {ev.port!r}",
    )
    _require(
        ev.wait_seconds is None or (type(ev.wait_seconds) is int and ev.wait_seconds >= 0),
        f"wait_seconds must be an int >= 0: {ev.wait_seconds!r}",
    )
    params: list[Any] = [ev.host, None if ev.port is None else str(ev.port), ev.wait_seconds]
    while params and params[-1] is None:
        params.pop()
    return params


def notification_params(event: PoolNotification) -> tuple[str, list[Any]]:
    """The method name and validated params of a notification event."""
    match event:
        case SetDifficulty(difficulty=difficulty):
            return SET_DIFFICULTY, [format_difficulty(difficulty)]
        case Notify():
            return NOTIFY, _notify_params(event)
        case SetExtranonce(extranonce1=extranonce1, extranonce2_size=size):
            check_extranonce(extranonce1, size)
            return SET_EXTRANONCE, [extranonce1, size]
        case SetVersionMask(mask=mask):
            _require(is_hex(mask, 8), f"version mask must be 8 hex chars: {mask!r}")
            return SET_VERSION_MASK, [mask]
        case Reconnect():
            return RECONNECT, _reconnect_params(event)
        case ShowMessage(text=text):
            _require(isinstance(text, str), "show_message text must be a str")
            return SHOW_MESSAGE, [text]
    raise LocalProtocolError(f"not a notification: {type(event).__name__}")


def encode_notification(event: PoolNotification) -> bytes:
    """``{"id": null, "method": ..., "params": [...]}`` as a line."""
    method, params = notification_params(event)
    return dumps_line({"id": None, "method": method, "params": params})


# ------------------------------------------------------------------------ decoding


def decode_server_message(line: bytes) -> ServerMessage:
    """Decode one line from the pool. Never raises: anything wrong is an InvalidMessage."""
    obj = load_object(line)
    if isinstance(obj, tuple):
        return InvalidMessage(obj[0], obj[1])
    id, id_problem = read_id(obj)
    if id_problem is not None:
        return InvalidMessage(ErrorCode.INVALID_REQUEST, id_problem)
    method = obj.get("method")
    if method is None:
        if "result" not in obj and "error" not in obj:
            return InvalidMessage(ErrorCode.INVALID_REQUEST, "neither a method nor a result")
        return Response(id, obj.get("result"), parse_error_field(obj.get("error")))
    if not isinstance(method, str):
        return InvalidMessage(
            ErrorCode.INVALID_REQUEST, f"method must be a string, not {json_type(method)}"
        )
    params = obj.get("params")
    parser = _PARSERS.get(method)
    if parser is None:
        return UnknownNotification(method, params, id)
    if params is None:
        params = []
    if not isinstance(params, list):
        return InvalidMessage(
            ErrorCode.INVALID_PARAMS, f"{method}: params must be an array, not {json_type(params)}"
        )
    try:
        return parser(params)
    except _Bad as exc:
        return InvalidMessage(ErrorCode.INVALID_PARAMS, f"{method}: {exc}")


def _str_at(params: list[Any], index: int, name: str) -> str:
    if index >= len(params) or not isinstance(params[index], str):
        raise _Bad(f"param {index} ({name}) must be a string")
    value: str = params[index]
    return value


def _int_like(value: Any, name: str) -> int | None:
    """None, an int, or a decimal string (how cgminer-era pools send ports)."""
    if value is None:
        return None
    if type(value) is int:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 10:
        return int(value)
    raise _Bad(f"{name} must be an integer, not {value!r:.40}")


def _parse_set_difficulty(params: list[Any]) -> SetDifficulty:
    difficulty = parse_difficulty(params[0]) if params else None
    if difficulty is None:
        raise _Bad("difficulty must be a finite number > 0")
    return SetDifficulty(difficulty)


def _parse_notify(params: list[Any]) -> Notify:
    if len(params) < 9:
        raise _Bad(f"expected 9 params, got {len(params)}")
    names = ("job_id", "prevhash", "coinb1", "coinb2")
    job_id, prevhash, coinb1, coinb2 = (_str_at(params, i, n) for i, n in enumerate(names))
    branch = params[4]
    if not isinstance(branch, list) or not all(isinstance(h, str) for h in branch):
        raise _Bad("merkle_branch must be an array of strings")
    version, nbits, ntime = (_str_at(params, i, n) for i, n in _NOTIFY_TAIL)
    clean_jobs = params[8]
    if not isinstance(clean_jobs, bool):
        raise _Bad("clean_jobs must be a boolean")
    return Notify(
        job_id, prevhash, coinb1, coinb2, tuple(branch), version, nbits, ntime, clean_jobs
    )


_NOTIFY_TAIL = ((5, "version"), (6, "nbits"), (7, "ntime"))


def _parse_set_extranonce(params: list[Any]) -> SetExtranonce:
    extranonce1 = _str_at(params, 0, "extranonce1")
    size = params[1] if len(params) > 1 else None
    if type(size) is not int or size < 0:
        raise _Bad("extranonce2_size must be an integer >= 0")
    return SetExtranonce(extranonce1, size)


def _parse_set_version_mask(params: list[Any]) -> SetVersionMask:
    mask = _str_at(params, 0, "mask")
    if not is_hex(mask.zfill(8), 8):
        raise _Bad(f"mask must be up to 8 hex chars, not {mask!r:.40}")
    return SetVersionMask(mask.zfill(8))


def _parse_reconnect(params: list[Any]) -> Reconnect:
    host = params[0] if params else None
    if host is not None and not isinstance(host, str):
        raise _Bad("host must be a string")
    port = _int_like(params[1] if len(params) > 1 else None, "port")
    wait = _int_like(params[2] if len(params) > 2 else None, "wait_seconds")
    return Reconnect(host or None, port, wait)


def _parse_show_message(params: list[Any]) -> ShowMessage:
    return ShowMessage(_str_at(params, 0, "text"))


_PARSERS: dict[str, Callable[[list[Any]], ServerMessage]] = {
    SET_DIFFICULTY: _parse_set_difficulty,
    NOTIFY: _parse_notify,
    SET_EXTRANONCE: _parse_set_extranonce,
    SET_VERSION_MASK: _parse_set_version_mask,
    RECONNECT: _parse_reconnect,
    SHOW_MESSAGE: _parse_show_message,
}
