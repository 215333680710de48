"""bitcoind's ZMQ ``hashblock`` feed: the fastest word of a new block.

bitcoind (``-zmqpubhashblock=tcp://HOST:PORT``) publishes three frames per block connected to
its tip: the topic ``hashblock``, the 32-byte block hash (in the usual display order) and a
little-endian uint32 sequence number, counted per topic from 0 when bitcoind starts.

The feed is a hint, never the source of truth: the template watcher fetches the template over
RPC when it hears of a block, and its getblocktemplate long-poll and best-block poll keep
running beside it (a ZMQ message can be lost: a SUB socket drops what is published while it is
disconnected). ZMQ reconnects by itself when bitcoind restarts or comes back; the socket's
monitor events say when it is connected, and sequence numbers show messages missed (a gap) or
a bitcoind that started again (the count went back).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable
from dataclasses import dataclass

import structlog
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

log = structlog.get_logger("pool.node.zmq")

TOPIC = b"hashblock"
RECONNECT_MS = 100  # first reconnect attempt after a lost connection...
RECONNECT_MAX_MS = 5000  # ...then doubled up to this
HEARTBEAT_MISSES = 3  # unanswered heartbeat intervals before the connection is dropped
# Messages the socket queues before it drops new ones (a ZMQ SUB never blocks its publisher).
# Not a pool limit: the feed reads them at once, and 1000 hashblock messages are ~50 kB.
RCVHWM = 1000

OnBlock = Callable[[str], None]


class ZmqMessageError(ValueError):
    """A message on the feed is not a well-formed hashblock notification."""


@dataclass(frozen=True)
class HashBlock:
    block_hash: str  # hex, display order (as getbestblockhash answers)
    sequence: int


def parse_hashblock(frames: list[bytes]) -> HashBlock:
    """The three frames of a ``hashblock`` message, checked."""
    if len(frames) != 3:
        raise ZmqMessageError(f"expected 3 frames (topic, hash, sequence), got {len(frames)}")
    topic, body, seq = frames
    if topic != TOPIC:
        raise ZmqMessageError(f"unexpected topic {topic[:32]!r}")
    if len(body) != 32:
        raise ZmqMessageError(f"block hash of {len(body)} bytes, expected 32")
    if len(seq) != 4:
        raise ZmqMessageError(f"sequence of {len(seq)} bytes, expected 4")
    return HashBlock(body.hex(), struct.unpack("<I", seq)[0])


class SequenceTracker:
    """Follows the feed's sequence numbers. ``observe`` returns what the new one means:
    ``"first"``, ``"next"`` (as expected), ``"gap"`` (``missed`` messages were lost) or
    ``"reset"`` (it went back: bitcoind started again and counts from 0)."""

    def __init__(self) -> None:
        self.last: int | None = None
        self.missed = 0  # messages lost, all told
        self.gaps = 0
        self.resets = 0

    def observe(self, sequence: int) -> tuple[str, int]:
        last, self.last = self.last, sequence
        if last is None:
            return "first", 0
        expected = (last + 1) & 0xFFFFFFFF
        if sequence == expected:
            return "next", 0
        if sequence < expected and not (last == 0xFFFFFFFF and sequence == 0):
            self.resets += 1
            return "reset", 0
        missed = (sequence - expected) & 0xFFFFFFFF
        self.gaps += 1
        self.missed += missed
        return "gap", missed


class HashBlockFeed:
    """A SUB socket on bitcoind's hashblock endpoint; ``on_block(hash)`` for each block heard.

    ``run`` never returns by itself: a bitcoind that is away is waited for (ZMQ reconnects in
    the background), a malformed message is logged and skipped. Cancelling it closes the
    socket. ``on_block`` must not block (it only wakes the template watcher)."""

    def __init__(self, endpoint: str, on_block: OnBlock, heartbeat_seconds: float = 10.0) -> None:
        self.endpoint = endpoint
        # a ZMTP ping on a quiet connection this often: bitcoind's host gone without a word
        # (no TCP reset) is noticed after HEARTBEAT_MISSES of them, and ZMQ reconnects
        self.heartbeat_ms = max(1, round(heartbeat_seconds * 1000))
        self.on_block = on_block
        self.sequence = SequenceTracker()
        self.messages = 0  # well-formed hashblock messages received
        self.bad_messages = 0
        self.connected = False  # connected and past the ZMTP handshake
        self.connects = 0  # connections made (the first and every reconnection)
        self.disconnects = 0

    async def run(self) -> None:
        ctx = zmq.asyncio.Context()
        sock = ctx.socket(zmq.SUB)
        monitor: zmq.asyncio.Socket | None = None
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, RCVHWM)
            sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_MS)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_MAX_MS)
            sock.setsockopt(zmq.HEARTBEAT_IVL, self.heartbeat_ms)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, self.heartbeat_ms * HEARTBEAT_MISSES)
            sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
            sock.setsockopt(zmq.SUBSCRIBE, TOPIC)
            monitor = sock.get_monitor_socket(
                zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
            )
            sock.connect(self.endpoint)
            log.info("zmq_subscribing", endpoint=self.endpoint, topic=TOPIC.decode())
            watch = asyncio.create_task(self._watch(monitor), name="zmq-monitor")
            try:
                await self._receive(sock)
            finally:
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch
        finally:
            self.connected = False
            if monitor is not None:
                with contextlib.suppress(zmq.ZMQError):
                    sock.disable_monitor()
                monitor.close(linger=0)
            sock.close(linger=0)
            ctx.term()

    async def _receive(self, sock: zmq.asyncio.Socket) -> None:
        while True:
            frames = await sock.recv_multipart()
            try:
                msg = parse_hashblock(frames)
            except ZmqMessageError as exc:
                self.bad_messages += 1
                log.warning("zmq_bad_message", endpoint=self.endpoint, error=str(exc))
                continue
            self.messages += 1
            log.debug("zmq_hashblock", block_hash=msg.block_hash, sequence=msg.sequence)
            kind, missed = self.sequence.observe(msg.sequence)
            if kind == "gap":
                log.warning(
                    "zmq_sequence_gap",
                    endpoint=self.endpoint,
                    missed=missed,
                    sequence=msg.sequence,
                    note="messages lost; the long-poll and poll cover them",
                )
            elif kind == "reset":
                log.info(
                    "zmq_sequence_reset",
                    endpoint=self.endpoint,
                    sequence=msg.sequence,
                    note="bitcoind started again",
                )
            self.on_block(msg.block_hash)

    async def _watch(self, monitor: zmq.asyncio.Socket) -> None:
        while True:
            event = parse_monitor_message(await monitor.recv_multipart())
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:  # connected, ZMTP greeted
                self.connected = True
                self.connects += 1
                log.info("zmq_connected", endpoint=self.endpoint, connects=self.connects)
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                self.connected = False
                self.disconnects += 1
                log.warning(
                    "zmq_disconnected",
                    endpoint=self.endpoint,
                    note="reconnecting by itself; the long-poll and poll carry on",
                )


def endpoint_from_notifications(notifications: object, rpc_host: str) -> str:
    """The hashblock address an external bitcoind reports (``getzmqnotifications``), as one to
    connect to: a wildcard bind address (``0.0.0.0``, ``*``, ``::``) is replaced by the host the
    pool reaches its RPC on. "" when it publishes no hashblock feed."""
    if not isinstance(notifications, list):
        return ""
    for entry in notifications:
        if not isinstance(entry, dict) or entry.get("type") != "pubhashblock":
            continue
        address = entry.get("address")
        if not isinstance(address, str) or not address.startswith("tcp://"):
            continue
        host, sep, port = address[len("tcp://") :].rpartition(":")
        if not sep or not port.isdigit():
            continue
        if host in ("*", "0.0.0.0", "[::]", "::", ""):
            host = f"[{rpc_host}]" if ":" in rpc_host else rpc_host
        return f"tcp://{host}:{port}"
    return ""
