"""A connection whose every read carries the kernel's receive time.

Fan-out is timed at 10 000 miners: thousands of notifies land within milliseconds, and a
Python generator reading them one socket after the other would add its own queueing to the
figure. With ``SO_TIMESTAMPNS`` the kernel stamps each packet when it is received (on the
loopback: when the pool sent it), and ``recvmsg`` hands that stamp over with the bytes, so the
time is right however late the generator gets round to the socket.

``StampedConnection`` drives an ordinary ``asyncio.Protocol`` (connection_made /
data_received / connection_lost) from a non-blocking socket; before each ``data_received`` it
sets ``protocol.stamp`` (wall-clock seconds, ``time.time()``'s clock, or None).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Protocol

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux's (asm-generic) value
TIMESPEC = struct.Struct("@ll")
READ_SIZE = 1 << 16


class StampedProtocol(Protocol):
    stamp: float | None

    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...
    def data_received(self, data: bytes) -> None: ...
    def connection_lost(self, exc: Exception | None) -> None: ...


class StampedConnection(asyncio.Transport):
    """The part of a Transport the miners use (write, close, is_closing, get_extra_info)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: StampedProtocol) -> None:
        super().__init__()
        self.loop = loop
        self.protocol = protocol
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.fd = self.sock.fileno()
        self.pending = b""
        self.closed = False

    async def open(self, host: str, port: int) -> None:
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            await self.loop.sock_connect(self.sock, (host, port))
        except BaseException:
            self.sock.close()
            self.closed = True
            raise
        self.protocol.connection_made(self)
        if not self.closed:
            self.loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            data, ancillary, _flags, _addr = self.sock.recvmsg(READ_SIZE, 256)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        if not data:
            self._lost(None)
            return
        stamp = None
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = TIMESPEC.unpack_from(payload)
                stamp = sec + nsec / 1e9
        self.protocol.stamp = stamp
        self.protocol.data_received(data)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed:
            return
        if self.pending:
            self.pending += bytes(data)
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._lost(exc)
            return
        if sent < len(data):
            self.pending = bytes(data[sent:])
            self.loop.add_writer(self.fd, self._writable)

    def _writable(self) -> None:
        try:
            sent = self.sock.send(self.pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        self.pending = self.pending[sent:]
        if not self.pending:
            self.loop.remove_writer(self.fd)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self._lost(None)

    def abort(self) -> None:
        self._lost(None)

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.sock if name == "socket" else default

    def _lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.fd)
        if self.pending:
            self.loop.remove_writer(self.fd)
        with contextlib.suppress(OSError):
            self.sock.close()
        self.loop.call_soon(self.protocol.connection_lost, exc)
