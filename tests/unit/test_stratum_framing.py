"""LineBuffer: reassembly, terminators, blank lines, the size limit, chunking invariance."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stratum.errors import LineTooLong, RemoteProtocolError
from stratum.framing import DEFAULT_MAX_LINE_BYTES, LineBuffer


def drain(buf: LineBuffer) -> list[bytes | str]:
    """All lines, with the string "TOO LONG" where the buffer raised (then stop)."""
    out: list[bytes | str] = []
    while True:
        try:
            line = buf.next_line()
        except LineTooLong:
            out.append("TOO LONG")
            return out
        if line is None:
            return out
        out.append(line)


def feed_chunks(data: bytes, sizes: list[int], max_line_bytes: int) -> list[bytes | str]:
    """Feed ``data`` in chunks of the given sizes (cycled), draining after every feed."""
    buf = LineBuffer(max_line_bytes)
    out: list[bytes | str] = []
    pos, i = 0, 0
    while pos < len(data) and "TOO LONG" not in out:
        size = max(1, sizes[i % len(sizes)]) if sizes else len(data)
        buf.feed(data[pos : pos + size])
        pos += size
        i += 1
        out += drain(buf)
    buf.close()
    if "TOO LONG" not in out:
        out += drain(buf)
    return out


def reference(data: bytes, max_line_bytes: int) -> list[bytes | str]:
    """A plain model of the framing rules, with EOF at the end of ``data``."""
    out: list[bytes | str] = []
    for raw in data.split(b"\n"):
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if len(line) > max_line_bytes:
            out.append("TOO LONG")
            return out
        if line.strip():
            out.append(line)
    return out


def test_single_line() -> None:
    buf = LineBuffer()
    buf.feed(b'{"id":1}\n')
    assert buf.next_line() == b'{"id":1}'
    assert buf.next_line() is None


def test_crlf_and_several_lines_per_feed() -> None:
    buf = LineBuffer()
    buf.feed(b"a\r\nb\nc\r\n")
    assert drain(buf) == [b"a", b"b", b"c"]


def test_line_split_across_feeds() -> None:
    buf = LineBuffer()
    buf.feed(b'{"id":')
    assert buf.next_line() is None
    buf.feed(b"1}\r")
    assert buf.next_line() is None
    buf.feed(b"\nnext")
    assert drain(buf) == [b'{"id":1}']
    buf.feed(b"\n")
    assert drain(buf) == [b"next"]


def test_blank_and_whitespace_lines_are_skipped() -> None:
    buf = LineBuffer()
    buf.feed(b"\n\r\n   \n\t\r\nx\n\n")
    assert drain(buf) == [b"x"]


def test_only_one_carriage_return_is_stripped() -> None:
    buf = LineBuffer()
    buf.feed(b"x\r\r\n")
    assert drain(buf) == [b"x\r"]


def test_feed_empty_bytes_is_not_eof() -> None:
    buf = LineBuffer()
    buf.feed(b"abc")
    buf.feed(b"")
    assert not buf.closed
    assert buf.next_line() is None


def test_close_returns_unterminated_tail() -> None:
    buf = LineBuffer()
    buf.feed(b"one\ntwo")
    buf.close()
    assert buf.closed
    assert drain(buf) == [b"one", b"two"]
    buf.close()  # idempotent
    with pytest.raises(RuntimeError):
        buf.feed(b"more")


def test_close_with_blank_tail() -> None:
    buf = LineBuffer()
    buf.feed(b"one\n \r")
    buf.close()
    assert drain(buf) == [b"one"]


def test_default_limit() -> None:
    assert LineBuffer().max_line_bytes == DEFAULT_MAX_LINE_BYTES == 16384
    with pytest.raises(ValueError):
        LineBuffer(0)


@pytest.mark.parametrize("terminator", [b"\n", b"\r\n"])
@pytest.mark.parametrize("chunk", [1, 3, 10_000])
def test_line_of_exactly_the_limit_is_accepted(terminator: bytes, chunk: int) -> None:
    data = b"x" * 100 + terminator
    assert feed_chunks(data, [chunk], 100) == [b"x" * 100]


@pytest.mark.parametrize("terminator", [b"\n", b"\r\n", b""])
@pytest.mark.parametrize("chunk", [1, 7, 10_000])
def test_line_over_the_limit_raises_after_earlier_lines(terminator: bytes, chunk: int) -> None:
    data = b"ok\n" + b"y" * 101 + terminator + b"never\n"
    assert feed_chunks(data, [chunk], 100) == [b"ok", "TOO LONG"]


def test_error_is_sticky_and_later_data_discarded() -> None:
    buf = LineBuffer(10)
    buf.feed(b"a" * 11)
    with pytest.raises(LineTooLong) as info:
        buf.next_line()
    assert isinstance(info.value, RemoteProtocolError)
    assert info.value.limit == 10
    buf.feed(b"fine\n")
    with pytest.raises(LineTooLong):
        buf.next_line()
    assert buf.buffered_bytes == 0


def test_never_holds_more_than_the_limit_of_an_unterminated_line() -> None:
    buf = LineBuffer(64)
    for _ in range(64):
        buf.feed(b"z")
        assert buf.buffered_bytes <= 64
    buf.feed(b"\r")  # may still be the start of "\r\n"
    assert buf.buffered_bytes <= 65
    buf.feed(b"z")
    assert buf.buffered_bytes == 0
    with pytest.raises(LineTooLong):
        buf.next_line()


def test_big_chunk_with_overlong_tail_is_dropped_at_once() -> None:
    buf = LineBuffer(64)
    buf.feed(b"short\n" + b"q" * 10_000)
    assert buf.buffered_bytes == len(b"short")
    assert drain(buf) == [b"short", "TOO LONG"]


SAMPLE = (
    b'{"id": 1, "method": "mining.subscribe", "params": ["cpuminer/2.5.1"]}\n'
    b'{"id":2,"method":"mining.authorize","params":["w","x"]}\r\n'
    b"\r\n\n"
    b'{"id":4,"method":"mining.submit","params":["w","1","00","5f5e1000","00000001"]}\n'
    b"garbage\xff\xfe\r\n"
    b"tail-without-newline"
)


@pytest.mark.parametrize("chunk", [1, 2, 5, 13, 64, len(SAMPLE)])
def test_byte_at_a_time_equals_whole(chunk: int) -> None:
    whole = feed_chunks(SAMPLE, [len(SAMPLE)], 1000)
    assert whole == reference(SAMPLE, 1000)
    assert feed_chunks(SAMPLE, [chunk], 1000) == whole
    assert len(whole) == 5


line_bytes = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b""))


@given(
    lines=st.lists(st.tuples(line_bytes, st.sampled_from([b"\n", b"\r\n"])), max_size=12),
    tail=line_bytes,
    sizes=st.lists(st.integers(1, 50), min_size=1, max_size=8),
    limit=st.integers(1, 48),
)
def test_any_chunking_matches_the_model(
    lines: list[tuple[bytes, bytes]], tail: bytes, sizes: list[int], limit: int
) -> None:
    data = b"".join(body + end for body, end in lines) + tail
    expected = reference(data, limit)
    assert feed_chunks(data, sizes, limit) == expected
    assert feed_chunks(data, [1], limit) == expected


@given(data=st.binary(max_size=300), sizes=st.lists(st.integers(1, 40), min_size=1))
def test_arbitrary_bytes_only_raise_line_too_long(data: bytes, sizes: list[int]) -> None:
    assert feed_chunks(data, sizes, 32) == reference(data, 32)
