"""structlog set-up: readable lines on a TTY, JSON lines otherwise; buffered output.

Lines are not written one by one: debug/info lines collect in a buffer that a background
thread writes out every ``FLUSH_SECONDS`` (or sooner once it holds ``FLUSH_BYTES``); a warning
or worse is written at once, together with everything before it, so the order is kept and
nothing important waits. The buffer is written at exit too.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
from typing import Any, TextIO

import structlog

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
FLUSH_SECONDS = 0.2
FLUSH_BYTES = 64 * 1024


class BufferedLogger:
    """A structlog logger writing whole lines to ``stream`` in batches (thread-safe)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lines: list[str] = []
        self._size = 0
        self._lock = threading.Lock()  # the buffer (held for an append or a swap only)
        self._write_lock = threading.Lock()  # one writer at a time, so batches keep their order

    def _buffer(self, message: str) -> None:
        with self._lock:
            self._lines.append(message)
            self._size += len(message) + 1
            full = self._size >= FLUSH_BYTES
        if full:
            self.flush()

    def _urgent(self, message: str) -> None:
        self._buffer(message)
        self.flush()

    def flush(self) -> None:
        with self._write_lock:
            with self._lock:  # a slow stream never holds up the event loop's info() calls
                if not self._lines:
                    return
                lines, self._lines, self._size = self._lines, [], 0
            try:
                self.stream.write("\n".join(lines) + "\n")
                self.stream.flush()
            except (OSError, ValueError):  # a closed stream at exit: nothing to write to
                pass

    debug = info = msg = log = _buffer
    warning = warn = error = critical = exception = fatal = failure = _urgent


_current: BufferedLogger | None = None
_flusher: threading.Thread | None = None
_wake = threading.Event()


def _flush_loop() -> None:
    while True:
        _wake.wait(FLUSH_SECONDS)
        logger = _current
        if logger is not None:
            logger.flush()


def flush() -> None:
    """Write out whatever is buffered now."""
    if _current is not None:
        _current.flush()


def configure(level: str = "info", fmt: str = "auto", stream: object = None) -> None:
    global _current, _flusher
    out: Any = stream if stream is not None else sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not getattr(out, "isatty", lambda: False)())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    flush()
    logger = BufferedLogger(out)
    _current = logger
    if _flusher is None:
        _flusher = threading.Thread(target=_flush_loop, name="log-flush", daemon=True)
        _flusher.start()
        atexit.register(flush)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=lambda *args: logger,
        cache_logger_on_first_use=False,
    )


CLIP_CHARS = 64  # echoed client input (worker names, job ids, methods, params) is cut here


def clip(value: object, limit: int = CLIP_CHARS) -> str:
    """Client input fit to echo in a log line or an error message: at most ``limit``
    characters, then ``…(N bytes)`` giving the whole size."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…({len(text.encode('utf-8', 'replace'))} bytes)"


class LogLimiter:
    """Rate limit for log lines a client can cause again and again (pure: the clock is
    passed in). Per event name (a fixed, small set: never client input), a token bucket of
    ``burst`` lines refilled at ``per_second``; lines over it are counted, and the next line
    let through says how many were suppressed."""

    __slots__ = ("_buckets", "burst", "per_second")

    def __init__(self, per_second: float = 5.0, burst: int = 50) -> None:
        self.per_second = per_second
        self.burst = float(burst)
        self._buckets: dict[str, list[float]] = {}  # event -> [tokens, stamp, suppressed]

    def allow(self, event: str, now: float) -> int:
        """-1: drop this line; else log it, with the count suppressed before it (0: none)."""
        bucket = self._buckets.get(event)
        if bucket is None:
            bucket = self._buckets[event] = [self.burst, now, 0.0]
        tokens = min(self.burst, bucket[0] + max(0.0, now - bucket[1]) * self.per_second)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            bucket[2] += 1
            return -1
        bucket[0] = tokens - 1.0
        suppressed = int(bucket[2])
        bucket[2] = 0.0
        return suppressed

    def suppressed(self) -> dict[str, int]:
        """Lines suppressed and not yet reported, per event."""
        return {event: int(b[2]) for event, b in self._buckets.items() if b[2]}
