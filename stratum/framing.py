"""Line framing: bytes in, complete lines out, with a hard limit on line size.

Stratum v1 sends one JSON object per line terminated by ``\\n`` (``\\r\\n`` is accepted too).
A read may carry half a line or many lines; :class:`LineBuffer` reassembles them.

Guarantees:

* feeding the same stream in any chunking (one byte at a time or all at once) yields the
  same sequence of lines and, if the limit is exceeded, :class:`LineTooLong` at the same
  place in that sequence;
* the buffer never holds more than ``max_line_bytes`` (+1 for a pending ``\\r``) of an
  unterminated line: the excess is detected while feeding, dropped at once, and reported by
  :meth:`LineBuffer.next_line` after the complete lines that preceded it;
* :meth:`LineBuffer.feed` never raises; :meth:`LineBuffer.next_line` raises only
  :class:`LineTooLong`, and keeps raising it (the stream cannot be resynchronised).
"""

from __future__ import annotations

from .errors import LineTooLong

__all__ = ["DEFAULT_MAX_LINE_BYTES", "LineBuffer"]

DEFAULT_MAX_LINE_BYTES = 16384


class LineBuffer:
    """Reassembles ``\\n``-terminated lines; skips blank lines; enforces a maximum size.

    The size limit counts the line's content, without its ``\\n`` or ``\\r\\n`` terminator.
    End of stream is signalled with :meth:`close` (``feed(b"")`` is not special): a final
    non-blank line without terminator is then returned as a last line.
    """

    __slots__ = ("_closed", "_dead", "_error", "_head", "_lines", "_max", "_partial")

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be at least 1")
        self._max = max_line_bytes
        self._partial = bytearray()
        # Complete lines not yet returned (from ``_head`` on; a list, not a deque: an idle
        # connection's buffer stays small); an error instance marks where the stream broke.
        self._lines: list[bytes | LineTooLong] = []
        self._head = 0
        self._dead = False  # an error is queued: everything after it is discarded
        self._error: LineTooLong | None = None  # raised already: sticky
        self._closed = False

    @property
    def max_line_bytes(self) -> int:
        return self._max

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called (end of stream)."""
        return self._closed

    @property
    def buffered_bytes(self) -> int:
        """Bytes held: complete lines waiting to be read plus the unterminated tail."""
        held = sum(len(x) for x in self._lines[self._head :] if isinstance(x, bytes))
        return held + len(self._partial)

    def feed(self, data: bytes) -> None:
        """Append received bytes. Never raises; an over-long line is reported by next_line."""
        if self._closed:
            raise RuntimeError("LineBuffer.feed() after close()")
        if self._dead or not data:
            return
        pieces = bytes(data).split(b"\n")
        # Every piece but the last is terminated by a newline.
        for piece in pieces[:-1]:
            if self._partial:
                self._partial += piece
                line = bytes(self._partial)
                self._partial.clear()
            else:
                line = piece
            if not self._push(line):
                return
        self._partial += pieces[-1]
        if self._partial_too_long():
            self._partial.clear()
            self._fail()

    def close(self) -> None:
        """Mark the end of the stream; an unterminated non-blank tail becomes a last line."""
        if self._closed:
            return
        self._closed = True
        if not self._dead and self._partial:
            line = bytes(self._partial)
            self._partial.clear()
            self._push(line)

    def next_line(self) -> bytes | None:
        """The next complete line without its terminator, or None if none is buffered.

        Raises :class:`LineTooLong` once all lines before the over-long one were returned,
        and on every call after that.
        """
        if self._error is not None:
            raise self._error
        lines = self._lines
        if self._head >= len(lines):
            if lines:
                lines.clear()
                self._head = 0
            return None
        item = lines[self._head]
        self._head += 1
        if isinstance(item, LineTooLong):
            self._error = item
            raise item
        return item

    # -- internals ---------------------------------------------------------------------

    def _push(self, line: bytes) -> bool:
        """Queue one complete line (terminator removed); False if it broke the stream."""
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self._max:
            self._fail()
            return False
        if line.strip():
            self._lines.append(line)
        return True

    def _partial_too_long(self) -> bool:
        size = len(self._partial)
        if size and self._partial[-1] == 0x0D:  # a "\r" that may be the start of "\r\n"
            size -= 1
        return size > self._max

    def _fail(self) -> None:
        self._dead = True
        self._partial.clear()
        self._lines.append(LineTooLong(self._max))
