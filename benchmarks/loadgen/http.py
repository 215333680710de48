"""A minimal HTTP/1.1 keep-alive poller (asyncio Protocol) for hammering the pool's API."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from benchmarks.loadgen.common import now

if TYPE_CHECKING:
    from benchmarks.loadgen.generator import Generator


class HttpPoller(asyncio.BufferedProtocol):
    """An HTTP/1.1 keep-alive client that requests ``paths`` in turn as fast as they are
    answered. Bodies are counted, not kept (Content-Length or chunked): reads land in one
    reused buffer and a Content-Length body is only counted, never copied into bytes."""

    READ_BUFFER = 1 << 18

    def __init__(self, gen: Generator, host: str, paths: list[str]) -> None:
        self.gen = gen
        self.requests = [
            f"GET {p} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n\r\n".encode() for p in paths
        ]
        self.paths = paths
        self.turn = 0
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.buffer = bytearray(self.READ_BUFFER)
        self._reset()

    def _reset(self) -> None:
        self.head = b""
        self.status = 0
        self.remaining = -1  # body bytes still due; -1: headers not read yet
        self.chunked = False
        self.chunk_buf = b""
        self.close_after = False
        self.body_bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        self.t_sent = now()
        self.transport.write(self.requests[self.turn % len(self.requests)])

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        data = memoryview(self.buffer)[:nbytes]
        while data:
            if self.remaining < 0:
                head = self.head + bytes(data)
                end = head.find(b"\r\n\r\n")
                if end < 0:
                    self.head = head
                    return
                self._headers(head[:end])
                data = memoryview(head)[end + 4 :]
                self.head = b""
                if self.remaining == 0 and not self.chunked:
                    self._complete()
                    continue
            if self.chunked:
                data = memoryview(self._chunked(bytes(data)))
                continue
            take = min(len(data), self.remaining)
            self.remaining -= take
            self.body_bytes += take
            data = data[take:]
            if self.remaining == 0:
                self._complete()

    def _headers(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        self.status = int(lines[0].split()[1])
        self.remaining = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                self.remaining = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value:
                self.chunked = True
            elif name == b"connection" and value == b"close":
                self.close_after = True

    def _chunked(self, data: bytes) -> bytes:
        """Consume chunked body bytes; returns the bytes after the body's end (if reached)."""
        buf = self.chunk_buf + data
        while True:
            if self.remaining > 0:
                take = min(len(buf), self.remaining)
                self.body_bytes += take
                self.remaining -= take
                buf = buf[take:]
                if self.remaining > 0:
                    self.chunk_buf = b""
                    return b""
            end = buf.find(b"\r\n")
            if end < 0:
                self.chunk_buf = buf
                return b""
            size_text = buf[:end].split(b";")[0].strip()
            if not size_text:  # the CRLF after a chunk's data
                buf = buf[end + 2 :]
                continue
            size = int(size_text, 16)
            buf = buf[end + 2 :]
            if size == 0:
                trailer_end = buf.find(b"\r\n")
                if trailer_end < 0:
                    self.chunk_buf = buf
                    return b""
                rest = buf[trailer_end + 2 :]
                self.chunk_buf = b""
                self._complete()
                return rest
            self.remaining = size

    def _complete(self) -> None:
        path = self.paths[self.turn % len(self.paths)]
        self.gen.http_done(path, self.status, now() - self.t_sent, self.body_bytes)
        self.turn += 1
        close = self.close_after
        self._reset()
        if close or not self.gen.polling:
            if self.transport is not None:
                self.transport.close()
            return
        self._send()
