"""Error codes and exceptions of the Stratum v1 protocol layer.

Two kinds of failure, named by whose fault they are (as h11 does):

* :class:`RemoteProtocolError`: the peer sent something we cannot go on with. In this
  package that only happens for fatal framing problems (a line longer than the limit);
  every other kind of bad input (bad JSON, invalid UTF-8, unknown methods, wrong params)
  becomes an *event* instead, so that the pool can answer it and keep the miner connected.
  It is the ONLY exception that feeding bytes into a connection can ever raise.
* :class:`LocalProtocolError`: our own code tried to send something invalid (a
  ``mining.notify`` before the miner subscribed, a NaN difficulty, anything after close...).
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "ErrorCode",
    "LineTooLong",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
]


class ErrorCode(IntEnum):
    """Stratum share error codes (cgminer/cpuminer/ckpool convention) and JSON-RPC codes."""

    OTHER = 20
    JOB_NOT_FOUND = 21
    DUPLICATE_SHARE = 22
    LOW_DIFFICULTY = 23
    UNAUTHORIZED = 24
    NOT_SUBSCRIBED = 25
    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602


class ProtocolError(Exception):
    """Base class; never raised itself, only through its two subclasses."""

    code: int
    message: str

    def __init__(self, message: str, code: int = ErrorCode.OTHER) -> None:
        if type(self) is ProtocolError:
            raise TypeError("raise RemoteProtocolError or LocalProtocolError, not ProtocolError")
        super().__init__(message)
        self.message = message
        self.code = int(code)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code})"


class RemoteProtocolError(ProtocolError):
    """The peer violated the protocol in a way the connection cannot recover from."""


class LocalProtocolError(ProtocolError):
    """Our side tried to send something the protocol (or the connection's state) forbids."""


class LineTooLong(RemoteProtocolError):
    """A line (complete or still unterminated) is longer than the configured limit."""

    limit: int

    def __init__(self, limit: int) -> None:
        super().__init__(f"line longer than {limit} bytes", ErrorCode.INVALID_REQUEST)
        self.limit = limit
