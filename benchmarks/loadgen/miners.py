"""Stratum miners as asyncio Protocols: the handshake, then one of three behaviours."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import TYPE_CHECKING, Any

from benchmarks.loadgen.common import FIRST_AUTHORIZE_ID, SUBSCRIBE_ID, TRUE_MARKS, now

if TYPE_CHECKING:
    from benchmarks.loadgen.generator import Generator


class Miner(asyncio.Protocol):
    """One Stratum connection: subscribe and authorize (pre-encoded, one write), then wait for
    every authorize to be true and a mining.notify. After that ``ready`` is true and the bytes
    go to ``on_data`` of the subclass."""

    def __init__(self, gen: Generator, index: int, users: list[str]) -> None:
        self.gen = gen
        self.index = index
        self.user = users[0]
        lines = [_request(SUBSCRIBE_ID, "mining.subscribe", ["bench/1.0"])]
        lines += [
            _request(FIRST_AUTHORIZE_ID + i, "mining.authorize", [u, "x"])
            for i, u in enumerate(users)
        ]
        self.hello = b"".join(lines)
        self.auth_pending = len(users)
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.stamp: float | None = None  # kernel receive time of this read (StampedConnection)
        self.ready = False
        self.lost = False
        self.failure: str | None = None
        self.t_start = now()
        self.t_ready: float | None = None
        self.extranonce1 = ""
        self.extranonce2_size = 4
        self.job_id = ""
        self.ntime = ""
        self.prevhash = ""

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.hello)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.failure is None and not self.gen.closing:
            self.failure = f"closed by the pool ({exc!r})" if exc else "closed by the pool"
        self.gen.on_lost(self)
        if not self.ready:
            self.gen.failed += 1

    def data_received(self, data: bytes) -> None:
        if self.ready:
            self.on_data(data)
            return
        t = now()
        buf = self.buf + data
        cut = buf.rfind(b"\n")
        if cut < 0:
            self.buf = buf
            return
        self.buf = buf[cut + 1 :]
        lines = buf[:cut].split(b"\n")
        for i, line in enumerate(lines):
            if line.strip():
                self._handshake_line(line)
            if self.failure is not None:
                self.close()
                return
            if self.auth_pending == 0 and self.job_id:
                self.ready = True
                self.t_ready = t
                rest = b"\n".join(lines[i + 1 :])
                leftover = (rest + b"\n" if rest else b"") + self.buf
                self.buf = b""
                self.gen.on_ready(self)
                if leftover:
                    self.on_data(leftover)
                return

    def _handshake_line(self, line: bytes) -> None:
        msg = json.loads(line)
        method = msg.get("method")
        if method == "mining.notify":
            self.set_job(msg["params"])
        elif method is None:
            mid = msg.get("id")
            if mid == SUBSCRIBE_ID:
                if msg.get("error") or not isinstance(msg.get("result"), list):
                    self.failure = f"subscribe refused: {line[:200]!r}"
                else:
                    self.extranonce1 = str(msg["result"][1])
                    self.extranonce2_size = int(msg["result"][2])
            elif isinstance(mid, int) and mid >= FIRST_AUTHORIZE_ID:
                if msg.get("result") is True:
                    self.auth_pending -= 1
                else:
                    self.failure = f"authorize refused: {line[:200]!r}"

    def set_job(self, params: list[Any]) -> None:
        self.job_id, self.prevhash, self.ntime = str(params[0]), str(params[1]), str(params[7])

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def on_data(self, data: bytes) -> None:
        """Bytes after the handshake (subclasses)."""


def _request(rid: int, method: str, params: list[Any]) -> bytes:
    return json.dumps({"id": rid, "method": method, "params": params}).encode() + b"\n"


def _submit_template(miner: Miner) -> bytes:
    """``bytes % (id, nonce)`` gives one mining.submit line for the miner's current job."""

    def esc(s: str) -> bytes:
        return s.encode().replace(b"%", b"%%")

    en2 = "00" * miner.extranonce2_size
    return (
        b'{"id":%d,"method":"mining.submit","params":["'
        + esc(miner.user)
        + b'","'
        + esc(miner.job_id)
        + b'","'
        + esc(en2)
        + b'","'
        + esc(miner.ntime)
        + b'","%08x"]}\n'
    )


class FloodMiner(Miner):
    """Keeps ``in_flight`` mining.submit outstanding: each batch of answers read is refilled by
    one write. Nonces random (``unique=False``) or counting up (unique per connection)."""

    def __init__(
        self, gen: Generator, index: int, users: list[str], in_flight: int, unique: bool
    ) -> None:
        super().__init__(gen, index, users)
        self.window = in_flight
        self.unique = unique
        self.outstanding = 0
        self.next_id = 100
        self.nonce = 0
        self.template = b""
        self.sample_left = 0
        self.rand = random.Random(index).getrandbits

    def set_job(self, params: list[Any]) -> None:
        super().set_job(params)
        self.template = _submit_template(self)

    def fill(self) -> None:
        n = self.window - self.outstanding
        if n <= 0 or self.transport is None or self.lost:
            return
        template, first = self.template, self.next_id
        if self.unique:
            nonce = self.nonce
            data = b"".join([template % (first + i, nonce + i) for i in range(n)])
            self.nonce = nonce + n
        else:
            rand = self.rand
            data = b"".join([template % (first + i, rand(32)) for i in range(n)])
        self.next_id = first + n
        self.outstanding += n
        self.gen.sent += n
        self.transport.write(data)

    def on_data(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        cut = buf.rfind(b"\n") + 1
        if not cut:
            self.buf = buf
            return
        done = buf[:cut]
        self.buf = buf[cut:]
        lines = done.count(b"\n")
        notes = done.count(b'"method"')
        if notes:
            self._notifications(done)
        answers = lines - notes
        gen = self.gen
        gen.answers += answers
        gen.trues += done.count(TRUE_MARKS[0]) + done.count(TRUE_MARKS[1])
        self.outstanding -= answers
        if self.sample_left > 0:
            self._sample(done)
        if gen.sending:
            self.fill()

    def _notifications(self, done: bytes) -> None:
        for line in done.split(b"\n"):
            if b'"method"' in line:
                msg = json.loads(line)
                if msg.get("method") == "mining.notify":
                    self.set_job(msg["params"])

    def _sample(self, done: bytes) -> None:
        """Parse a few answers in full: what the pool said (true / error code)."""
        for line in done.split(b"\n"):
            if self.sample_left <= 0 or not line or b'"method"' in line:
                continue
            msg = json.loads(line)
            error = msg.get("error")
            key = "true" if msg.get("result") is True else f"error {error[0] if error else None}"
            self.gen.sample[key] = self.gen.sample.get(key, 0) + 1
            if key != "true" and key not in self.gen.sample_text:
                self.gen.sample_text[key] = str(error)[:200]
            self.sample_left -= 1


class IdleMiner(Miner):
    """Handshake, then idle: every later mining.notify line is kept with its arrival times
    (monotonic when this process read it; the kernel's receive stamp when connected through
    ``StampedConnection``)."""

    def __init__(self, gen: Generator, index: int, users: list[str]) -> None:
        super().__init__(gen, index, users)
        self.notifies: list[tuple[float, float | None, bytes]] = []

    def on_data(self, data: bytes) -> None:
        t = now()
        buf = self.buf + data if self.buf else data
        cut = buf.rfind(b"\n")
        if cut < 0:
            self.buf = buf
            return
        self.buf = buf[cut + 1 :]
        done = buf[:cut]
        if b"mining.notify" in done:
            stamp = self.stamp
            self.notifies.extend((t, stamp, x) for x in done.split(b"\n") if b"notify" in x)


class PacedMiner(Miner):
    """Sends unique-nonce submits when the generator's ticker says they are due and times each
    answer from its send (wall clock taken just before the write) to its arrival: the kernel's
    receive stamp when connected through ``StampedConnection`` (so the generator's own delays
    in reading do not count), else when this process read it. Both are kept."""

    def __init__(self, gen: Generator, index: int, users: list[str]) -> None:
        super().__init__(gen, index, users)
        self.template = b""
        self.next_id = 100
        self.nonce = 0
        self.count = 0
        self.pending: dict[int, tuple[float, float]] = {}  # id -> (monotonic, wall) sent

    def set_job(self, params: list[Any]) -> None:
        super().set_job(params)
        self.template = _submit_template(self)

    def send(self, n: int) -> None:
        if n <= 0 or self.transport is None or self.lost:
            return
        first, nonce, template = self.next_id, self.nonce, self.template
        data = b"".join([template % (first + i, nonce + i) for i in range(n)])
        sent = (now(), time.time())
        for i in range(n):
            self.pending[first + i] = sent
        self.next_id, self.nonce, self.count = first + n, nonce + n, self.count + n
        self.gen.sent += n
        self.transport.write(data)

    def on_data(self, data: bytes) -> None:
        read = time.time()
        arrived = self.stamp if self.stamp is not None else read
        buf = self.buf + data if self.buf else data
        cut = buf.rfind(b"\n")
        if cut < 0:
            self.buf = buf
            return
        self.buf = buf[cut + 1 :]
        for line in buf[:cut].split(b"\n"):
            if not line:
                continue
            msg = json.loads(line)
            if "method" in msg:
                if msg["method"] == "mining.notify":
                    self.set_job(msg["params"])
                continue
            sent = self.pending.pop(msg.get("id"), None)
            if sent is None:
                continue
            self.gen.answers += 1
            ok = msg.get("result") is True
            self.gen.trues += ok
            self.gen.timed.append((sent[0], arrived - sent[1], read - sent[1], ok))
