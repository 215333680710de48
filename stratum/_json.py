"""JSON helpers shared by the codec modules (internal).

Output is compact ASCII JSON (non-ASCII escaped, so any old miner's parser copes), one object
per line, ``\\n``-terminated. Input parsing never raises: every failure is returned as a
``(code, message)`` pair for the caller to turn into an event.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

from .errors import ErrorCode, LocalProtocolError
from .events import ErrorTuple, RequestId

_fast_loads: Callable[[bytes], Any] | None
try:  # optional (the ``fast`` extra): several times faster than json.loads on every line
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - exercised by the stdlib-only test
    _fast_loads = None

__all__ = [
    "dumps_line",
    "format_difficulty",
    "is_hex",
    "load_object",
    "parse_difficulty",
    "parse_error_field",
    "read_id",
]

_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_HEX = frozenset("0123456789abcdefABCDEF")
_MAX_EXACT_INT = 2**53


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def load_object(line: bytes) -> dict[str, Any] | ErrorTuple:
    """Decode one line as a JSON object, or return ``(code, message)`` saying what was wrong.

    With orjson installed a line is tried with it first, and its result is used only for
    ``mining.submit`` (the hot path) with a non-float id: orjson turns integers beyond 64 bits
    into floats where the standard library keeps them exact, which cannot matter for a
    submit (its params must be strings) but could for other messages. Everything else goes
    through the standard library, so results and error messages are always its own."""
    if _fast_loads is not None:
        try:
            value = _fast_loads(line)
        except ValueError:
            pass
        else:
            if (
                type(value) is dict
                and value.get("method") == "mining.submit"
                and type(value.get("id")) is not float
            ):
                return value
    return _load_object_stdlib(line)


def _load_object_stdlib(line: bytes) -> dict[str, Any] | ErrorTuple:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return ErrorCode.PARSE_ERROR, f"invalid UTF-8 at byte {exc.start}"
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        return ErrorCode.PARSE_ERROR, "invalid JSON: nested too deeply"
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, too many integer digits
        return ErrorCode.PARSE_ERROR, f"invalid JSON: {str(exc)[:100]}"
    if not isinstance(value, dict):
        return ErrorCode.INVALID_REQUEST, f"expected a JSON object, got {json_type(value)}"
    return value


def json_type(value: Any) -> str:
    """The JSON type name of a decoded value, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def is_valid_id(value: Any) -> bool:
    return value is None or isinstance(value, str) or type(value) is int


def read_id(obj: dict[str, Any]) -> tuple[RequestId, str | None]:
    """The message's id (None if absent) and, if it has an invalid type, why."""
    raw = obj.get("id")
    if is_valid_id(raw):
        return raw, None
    return None, f"id must be an integer, a string or null, not {json_type(raw)}"


def dumps_line(obj: Any) -> bytes:
    """Serialize one message as a ``\\n``-terminated line; LocalProtocolError if impossible."""
    try:
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise LocalProtocolError(f"cannot encode message as JSON: {exc}") from None
    return text.encode("ascii") + b"\n"


def check_id(id: Any) -> RequestId:
    if not is_valid_id(id):
        raise LocalProtocolError(f"invalid request id {id!r}: must be int, str or None")
    result: RequestId = id
    return result


def parse_difficulty(value: Any) -> float | None:
    """A difficulty from the wire: int, float or numeric string; None unless finite and > 0."""
    number: float
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            return None
    elif isinstance(value, str) and len(value) <= 64 and _NUMBER.fullmatch(value.strip()):
        number = float(value.strip())
    else:
        return None
    if not math.isfinite(number) or number <= 0:
        return None
    return number


def format_difficulty(value: Any) -> int | float:
    """A difficulty for the wire: integral values compactly (``1``), fractions kept (0.001)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LocalProtocolError(f"difficulty must be a number, not {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise LocalProtocolError(f"difficulty must be > 0, not {value!r}")
        return value
    if not math.isfinite(value) or value <= 0:
        raise LocalProtocolError(f"difficulty must be finite and > 0, not {value!r}")
    if value.is_integer() and value < _MAX_EXACT_INT:
        return int(value)
    return value


def is_hex(value: Any, length: int | None = None) -> bool:
    """True for a string of hex digits of even length (of exactly ``length`` chars if given)."""
    if not isinstance(value, str) or len(value) % 2:
        return False
    if length is not None and len(value) != length:
        return False
    return _HEX.issuperset(value)


def parse_error_field(value: Any) -> ErrorTuple | None:
    """Normalise a response's ``error`` member; lenient, never fails.

    Accepts Stratum's ``[code, message, data]``, JSON-RPC 2.0's ``{"code", "message"}``, a bare
    string, and ``null``/``false`` for "no error".
    """
    if value is None or value is False:
        return None
    code: Any = ErrorCode.OTHER
    message: Any = ""
    if isinstance(value, list):
        if value:
            code = value[0]
        if len(value) > 1:
            message = value[1]
    elif isinstance(value, dict):
        code = value.get("code", ErrorCode.OTHER)
        message = value.get("message", "")
    elif isinstance(value, str):
        message = value
    else:
        message = repr(value)
    if type(code) is not int:
        code = ErrorCode.OTHER
    if not isinstance(message, str):
        message = repr(message)
    return int(code), message
