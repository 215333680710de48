"""The receiving half shared by both connection roles (internal): bytes -> lines + state."""

from __future__ import annotations

from .errors import LineTooLong, RemoteProtocolError
from .events import CONNECTION_CLOSED, NEED_DATA, ConnectionClosed, NeedData
from .framing import LineBuffer
from .state import ConnState, Trigger, next_state


class StreamCore:
    """Owns the line buffer, the end-of-stream flag, the sticky error and the state."""

    __slots__ = ("_buffer", "_eof", "_error", "state")

    def __init__(self, max_line_bytes: int) -> None:
        self._buffer = LineBuffer(max_line_bytes)
        self._eof = False
        self._error: RemoteProtocolError | None = None
        self.state = ConnState.CONNECTED

    @property
    def max_line_bytes(self) -> int:
        return self._buffer.max_line_bytes

    def fire(self, trigger: Trigger) -> None:
        self.state = next_state(self.state, trigger)

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes; ``b""`` means the peer closed. Never raises.

        Data after end of stream, after close() or after a framing error is discarded.
        """
        if self._eof or self.state is ConnState.CLOSED:
            return
        if not data:
            self._eof = True
            self._buffer.close()
            return
        self._buffer.feed(data)

    def next_line(self) -> bytes | NeedData | ConnectionClosed:
        """The next line, NEED_DATA or CONNECTION_CLOSED; raises only RemoteProtocolError."""
        if self._error is not None and self.state is ConnState.ERROR:
            raise self._error
        if self.state is ConnState.CLOSED:
            return CONNECTION_CLOSED
        try:
            line = self._buffer.next_line()
        except LineTooLong as exc:
            self._error = exc
            self.fire(Trigger.PROTOCOL_ERROR)
            raise
        if line is not None:
            return line
        if self._eof:
            self.fire(Trigger.PEER_CLOSED)
            return CONNECTION_CLOSED
        return NEED_DATA
