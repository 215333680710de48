"""Pure (sans-IO) Stratum v1: bytes <-> events, no asyncio, no sockets, no clock.

* :mod:`stratum.framing` - line reassembly with a size limit
* :mod:`stratum.codec` - JSON-RPC dialect (with :mod:`stratum.notifications`)
* :mod:`stratum.events` - the frozen event dataclasses
* :mod:`stratum.errors` - error codes and the two exception kinds
* :mod:`stratum.state` - the connection state machine (one table)
* :mod:`stratum.connection` - :class:`ServerConnection`, the pool's side
* :mod:`stratum.client` - :class:`ClientConnection`, the miner's side
"""

from .client import ClientConnection
from .connection import ServerConnection
from .errors import ErrorCode, LineTooLong, LocalProtocolError, ProtocolError, RemoteProtocolError
from .events import CONNECTION_CLOSED, NEED_DATA, ConnectionClosed, NeedData
from .framing import LineBuffer
from .state import ConnState

__all__ = [
    "CONNECTION_CLOSED",
    "NEED_DATA",
    "ClientConnection",
    "ConnState",
    "ConnectionClosed",
    "ErrorCode",
    "LineBuffer",
    "LineTooLong",
    "LocalProtocolError",
    "NeedData",
    "ProtocolError",
    "RemoteProtocolError",
    "ServerConnection",
]
