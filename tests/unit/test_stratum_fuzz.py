"""Property tests: whatever a peer sends, only RemoteProtocolError escapes, chunking does not
matter, and every request the pool decodes can be answered with a well-formed response."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from stratum.client import ClientConnection
from stratum.codec import decode_server_message
from stratum.connection import ServerConnection
from stratum.errors import RemoteProtocolError
from stratum.events import (
    Authorize,
    ClientRequest,
    Configure,
    ConnectionClosed,
    ExtranonceSubscribe,
    GetTransactions,
    InvalidRequest,
    NeedData,
    Response,
    Submit,
    Subscribe,
    SuggestDifficulty,
    UnknownMethod,
)
from stratum.state import ConnState

LIMIT = 512
METHODS = [
    "mining.subscribe",
    "mining.authorize",
    "mining.configure",
    "mining.submit",
    "mining.suggest_difficulty",
    "mining.extranonce.subscribe",
    "mining.get_transactions",
    "mining.set_difficulty",
    "mining.notify",
    "mining.set_extranonce",
    "mining.set_version_mask",
    "client.reconnect",
    "client.show_message",
    "client.get_version",
    "mining.ping",
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["0.5", "1fffe000", "version-rolling", "ffffffff", "00" * 32]),
    lambda children: st.lists(children, max_size=10) | st.dictionaries(st.text(), children),
    max_leaves=25,
)
ids = st.none() | st.integers() | st.text(max_size=8) | st.booleans() | st.floats()
messages = st.fixed_dictionaries(
    {},
    optional={
        "id": ids,
        "method": st.sampled_from(METHODS) | json_values,
        "params": json_values | st.lists(json_values, max_size=10),
        "result": json_values,
        "error": json_values,
    },
)


def to_line(obj: Any) -> bytes:
    # allow_nan: hypothesis may nest floats that json writes as NaN/Infinity literals
    return json.dumps(obj).encode() + b"\n"


lines = st.one_of(
    messages.map(to_line),
    json_values.map(to_line),
    st.binary(max_size=80),
    st.binary(max_size=40).map(lambda b: b + b"\n"),
    st.just(b"x" * (LIMIT + 1)),
)
streams = st.lists(lines, max_size=12).map(b"".join)
chunk_sizes = st.lists(st.integers(1, 64), min_size=1, max_size=6)


def answer(conn: ServerConnection, ev: ClientRequest) -> bytes:
    """Answer like a pool would; the answering helpers must accept every decoded request."""
    match ev:
        case Subscribe():
            return conn.subscribe_ok(ev, extranonce1="ab", extranonce2_size=4, subscription_id="1")
        case Authorize():
            return conn.authorize_ok(ev)
        case Configure():
            return conn.configure_reply(ev, pool_version_mask=0x1FFFE000)
        case Submit():
            verdict = conn.check_submit(ev)
            return conn.reply(ev, True) if verdict is None else conn.reply_error(ev, *verdict)
        case SuggestDifficulty() | ExtranonceSubscribe() | GetTransactions():
            return conn.reply(ev, True)
        case UnknownMethod() | InvalidRequest():
            return conn.reject(ev)
    raise AssertionError(f"unexpected event {ev!r}")


def run_server(data: bytes, sizes: list[int], eof: bool) -> tuple[list[Any], bool]:
    """Feed ``data`` in chunks, answering every request; returns (events, raised)."""
    conn = ServerConnection(LIMIT)
    seen: list[Any] = []
    pos, i = 0, 0
    try:
        while True:
            if pos < len(data):
                size = sizes[i % len(sizes)]
                conn.receive_data(data[pos : pos + size])
                pos, i = pos + size, i + 1
            elif eof:
                conn.receive_data(b"")
            ev = conn.next_event()
            while not isinstance(ev, NeedData | ConnectionClosed):
                seen.append(ev)
                check_answer(conn, ev)
                ev = conn.next_event()
            if isinstance(ev, ConnectionClosed) or (pos >= len(data) and not eof):
                return seen, False
    except RemoteProtocolError:
        assert conn.state is ConnState.ERROR
        return seen, True


def check_answer(conn: ServerConnection, ev: ClientRequest) -> None:
    for data in (answer(conn, ev), conn.reply_error(ev, 20, "refused")):
        assert data.endswith(b"\n") and data.count(b"\n") == 1
        reply = decode_server_message(data)
        assert isinstance(reply, Response)
        assert reply.id == ev.id and type(reply.id) is type(ev.id)


@settings(max_examples=300)
@given(data=streams, sizes=chunk_sizes, eof=st.booleans())
def test_server_survives_anything_and_chunking_does_not_matter(
    data: bytes, sizes: list[int], eof: bool
) -> None:
    events, raised = run_server(data, sizes, eof)
    assert run_server(data, [len(data) or 1], eof) == (events, raised)
    assert run_server(data, [1], eof) == (events, raised)


@given(data=st.binary(max_size=600), sizes=chunk_sizes)
def test_server_arbitrary_bytes(data: bytes, sizes: list[int]) -> None:
    run_server(data, sizes, eof=True)


@given(method=st.sampled_from(METHODS[:7]), params=st.lists(json_values, max_size=7), id=ids)
def test_known_methods_with_arbitrary_params_are_answerable(
    method: str, params: list[Any], id: Any
) -> None:
    conn = ServerConnection(1 << 20)
    conn.receive_data(to_line({"id": id, "method": method, "params": params}))
    ev = conn.next_event()
    assert not isinstance(ev, NeedData | ConnectionClosed)
    if isinstance(ev, InvalidRequest):
        assert ev.message
    check_answer(conn, ev)


def run_client(data: bytes, sizes: list[int], fixed: int | None) -> list[Any]:
    conn = ClientConnection(LIMIT, fixed_submit_id=fixed)
    conn.configure(["version-rolling"], {})
    conn.subscribe("fuzz")
    conn.authorize("w", "x")
    for _ in range(3):
        conn.submit("w", "1", "00", "11", "22")
    seen: list[Any] = []
    for start in range(0, len(data), sizes[0]):
        conn.receive_data(data[start : start + sizes[0]])
        try:
            while not isinstance(ev := conn.next_event(), NeedData | ConnectionClosed):
                seen.append(ev)
        except RemoteProtocolError:
            seen.append("error")
            break
    return seen


client_lines = st.one_of(
    st.builds(
        lambda id, result, error: to_line({"id": id, "result": result, "error": error}),
        st.integers(0, 8) | ids,
        json_values,
        json_values,
    ),
    messages.map(to_line),
    st.binary(max_size=60),
    st.just(b"y" * (LIMIT + 1)),
)


@settings(max_examples=300)
@given(
    data=st.lists(client_lines, max_size=12).map(b"".join),
    size=st.integers(1, 64),
    fixed=st.none() | st.just(4),
)
def test_client_survives_anything(data: bytes, size: int, fixed: int | None) -> None:
    seen = run_client(data, [size], fixed)
    assert run_client(data, [max(len(data), 1)], fixed) == seen
