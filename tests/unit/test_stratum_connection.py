"""ServerConnection: the state table (every state x every event), answers, limits, EOF."""

from __future__ import annotations

import json
from contextlib import nullcontext
from typing import Any

import pytest

from stratum.codec import decode_server_message
from stratum.connection import ServerConnection, negotiate_version_rolling
from stratum.errors import ErrorCode, LineTooLong, LocalProtocolError, RemoteProtocolError
from stratum.events import (
    CONNECTION_CLOSED,
    NEED_DATA,
    Authorize,
    ClientRequest,
    Configure,
    ConnectionClosed,
    ExtranonceSubscribe,
    GetTransactions,
    InvalidRequest,
    NeedData,
    Notify,
    PoolNotification,
    Reconnect,
    Response,
    ServerEvent,
    SetDifficulty,
    SetExtranonce,
    SetVersionMask,
    ShowMessage,
    Submit,
    Subscribe,
    SuggestDifficulty,
    UnknownMethod,
)
from stratum.state import CAN_SEND, TRANSITIONS, ConnState, Outgoing, Trigger, next_state

S, T = ConnState, Trigger
LIMIT = 256
BITAXE = {"version-rolling.mask": "1fffe000", "version-rolling.min-bit-count": 16}
NOTIFY = Notify("1", "00" * 32, "", "", (), "20000000", "207fffff", "5f5e1000", True)


def req(id: Any, method: str, params: Any) -> bytes:
    return json.dumps({"id": id, "method": method, "params": params}).encode() + b"\n"


def feed(conn: ServerConnection, data: bytes) -> list[ServerEvent]:
    conn.receive_data(data)
    events: list[ServerEvent] = []
    while not isinstance(ev := conn.next_event(), NeedData | ConnectionClosed):
        events.append(ev)
    return events


def one(conn: ServerConnection, data: bytes) -> ServerEvent:
    events = feed(conn, data)
    assert len(events) == 1, events
    return events[0]


def subscribe(conn: ServerConnection, en1: str = "0000abcd") -> bytes:
    ev = one(conn, req(1, "mining.subscribe", ["test/1.0"]))
    assert isinstance(ev, Subscribe)
    return conn.subscribe_ok(ev, extranonce1=en1, extranonce2_size=4, subscription_id="s1")


def configure(conn: ServerConnection, params: dict[str, Any] | None = None) -> Response:
    ev = one(conn, req(2, "mining.configure", [["version-rolling"], params or BITAXE]))
    assert isinstance(ev, Configure)
    return response(conn.configure_reply(ev, pool_version_mask=0x1FFFE000))


def state_of(conn: ServerConnection) -> ConnState:
    """The state, read through a call so that mypy does not keep an earlier narrowing."""
    return conn.state


def response(data: bytes) -> Response:
    msg = decode_server_message(data)
    assert isinstance(msg, Response), msg
    return msg


def build(state: ConnState) -> ServerConnection:
    """A connection in ``state``, with version rolling granted and extranonce subscribed
    whenever the state allows it."""
    conn = ServerConnection(LIMIT)
    one(conn, req(3, "mining.extranonce.subscribe", []))
    if state is S.CONNECTED:
        return conn
    configure(conn)
    if state is S.CONFIGURED:
        return conn
    subscribe(conn)
    if state is S.CLOSED:
        conn.close()
    elif state is S.ERROR:
        conn.receive_data(b"x" * (LIMIT + 1))
        with pytest.raises(LineTooLong):
            conn.next_event()
    assert conn.state is state
    return conn


# ------------------------------------------------------------------- the table itself

EXPECTED = {
    S.CONNECTED: {T.CONFIGURE: S.CONFIGURED, T.SUBSCRIBE: S.SUBSCRIBED},
    S.CONFIGURED: {T.CONFIGURE: S.CONFIGURED, T.SUBSCRIBE: S.SUBSCRIBED},
    S.SUBSCRIBED: {T.CONFIGURE: S.SUBSCRIBED, T.SUBSCRIBE: S.SUBSCRIBED},
    S.CLOSED: {T.PEER_CLOSED: S.CLOSED, T.LOCAL_CLOSE: S.CLOSED},
    S.ERROR: {T.LOCAL_CLOSE: S.CLOSED},
}
for _open in (S.CONNECTED, S.CONFIGURED, S.SUBSCRIBED):
    EXPECTED[_open] |= {T.PEER_CLOSED: S.CLOSED, T.LOCAL_CLOSE: S.CLOSED, T.PROTOCOL_ERROR: S.ERROR}


@pytest.mark.parametrize("state", list(ConnState))
@pytest.mark.parametrize("trigger", list(Trigger))
def test_transition_table(state: ConnState, trigger: Trigger) -> None:
    expected = EXPECTED[state].get(trigger)
    assert TRANSITIONS.get((state, trigger)) == expected
    if expected is None:
        with pytest.raises(LocalProtocolError):
            next_state(state, trigger)
    else:
        assert next_state(state, trigger) is expected


def do(conn: ServerConnection, trigger: Trigger) -> None:
    """Cause ``trigger`` through the public API."""
    if trigger is T.CONFIGURE:
        conn.configure_reply(
            Configure(9, ("version-rolling",), BITAXE), pool_version_mask=0xFFFFFFFF
        )
    elif trigger is T.SUBSCRIBE:
        conn.subscribe_ok(Subscribe(9), extranonce1="01", extranonce2_size=8, subscription_id="x")
    elif trigger is T.LOCAL_CLOSE:
        conn.close()
    elif trigger is T.PEER_CLOSED:
        conn.receive_data(b"")
        assert conn.next_event() is CONNECTION_CLOSED
    else:
        conn.receive_data(b"y" * (LIMIT + 1))
        conn.next_event()


@pytest.mark.parametrize("state", list(ConnState))
@pytest.mark.parametrize("trigger", list(Trigger))
def test_every_trigger_in_every_state_through_the_api(state: ConnState, trigger: Trigger) -> None:
    conn = build(state)
    expected = EXPECTED[state].get(trigger)
    if state is S.ERROR and trigger in (T.PEER_CLOSED, T.PROTOCOL_ERROR):
        with pytest.raises(RemoteProtocolError):  # the error is sticky
            do(conn, trigger)
        assert conn.state is S.ERROR
    elif state is S.CLOSED and trigger is T.PROTOCOL_ERROR:
        do(conn, trigger)  # data after close is discarded: no error, nothing happens
        assert conn.state is S.CLOSED
    elif expected is None:
        with pytest.raises(LocalProtocolError):
            do(conn, trigger)
        assert conn.state is state
    else:
        with pytest.raises(LineTooLong) if trigger is T.PROTOCOL_ERROR else nullcontext():
            do(conn, trigger)
        assert conn.state is expected


# ------------------------------------------------- every request in every state

REQUEST_LINES: list[tuple[bytes, type[Any]]] = [
    (req(1, "mining.subscribe", ["cpuminer/2.5.1"]), Subscribe),
    (req(2, "mining.authorize", ["addr.w1", "x"]), Authorize),
    (req("c", "mining.configure", [["version-rolling"], BITAXE]), Configure),
    (req(4, "mining.submit", ["addr.w1", "1", "00000000", "5f5e1000", "00000000"]), Submit),
    (req(5, "mining.suggest_difficulty", [0.0001]), SuggestDifficulty),
    (req(6, "mining.extranonce.subscribe", []), ExtranonceSubscribe),
    (req(7, "mining.get_transactions", ["1"]), GetTransactions),
    (req(8, "mining.ping", []), UnknownMethod),
    (req(9, "mining.submit", ["too", "few"]), InvalidRequest),
    (b"{not json\n", InvalidRequest),
]


def answer(conn: ServerConnection, ev: ClientRequest) -> bytes:
    """The natural answer a pool gives to each kind of request."""
    match ev:
        case Subscribe():
            return conn.subscribe_ok(ev, extranonce1="00", extranonce2_size=4, subscription_id="s")
        case Authorize():
            return conn.authorize_ok(ev)
        case Configure():
            return conn.configure_reply(ev, pool_version_mask=0x1FFFE000)
        case Submit():
            verdict = conn.check_submit(ev)
            return conn.reply(ev, True) if verdict is None else conn.reply_error(ev, *verdict)
        case SuggestDifficulty() | ExtranonceSubscribe():
            return conn.reply(ev, True)
        case GetTransactions():
            return conn.reply(ev, [])
        case UnknownMethod() | InvalidRequest():
            return conn.reject(ev)
    raise AssertionError(ev)


@pytest.mark.parametrize("state", list(ConnState))
@pytest.mark.parametrize(("data", "kind"), REQUEST_LINES)
def test_every_request_in_every_state(state: ConnState, data: bytes, kind: type[Any]) -> None:
    conn = build(state)
    conn.receive_data(data)
    if state is S.ERROR:
        with pytest.raises(RemoteProtocolError):
            conn.next_event()
        return
    ev = conn.next_event()
    if state is S.CLOSED:
        assert ev is CONNECTION_CLOSED
        return
    assert isinstance(ev, kind)
    assert conn.state is state  # receiving never changes the state
    assert conn.next_event() is NEED_DATA
    reply = response(answer(conn, ev))
    assert reply.id == ev.id


# ------------------------------------------------ every outgoing kind in every state

NOTIFICATIONS: list[tuple[PoolNotification, Outgoing]] = [
    (SetDifficulty(0.001), Outgoing.SET_DIFFICULTY),
    (NOTIFY, Outgoing.NOTIFY),
    (SetExtranonce("beef", 8), Outgoing.SET_EXTRANONCE),
    (SetVersionMask("00ffe000"), Outgoing.SET_VERSION_MASK),
    (Reconnect("h", 3333), Outgoing.RECONNECT),
    (ShowMessage("hi"), Outgoing.SHOW_MESSAGE),
]


def test_send_rules_table() -> None:
    answering = {S.CONNECTED, S.CONFIGURED, S.SUBSCRIBED, S.ERROR}
    assert {kind: set(states) for kind, states in CAN_SEND.items()} == {
        Outgoing.RESPONSE: answering,
        Outgoing.REQUEST: {S.CONNECTED, S.CONFIGURED, S.SUBSCRIBED},
        Outgoing.SET_DIFFICULTY: answering,
        Outgoing.NOTIFY: {S.SUBSCRIBED},
        Outgoing.SET_EXTRANONCE: {S.SUBSCRIBED},
        Outgoing.SET_VERSION_MASK: answering,
        Outgoing.RECONNECT: answering,
        Outgoing.SHOW_MESSAGE: answering,
    }


@pytest.mark.parametrize("state", list(ConnState))
@pytest.mark.parametrize(("event", "kind"), NOTIFICATIONS)
def test_every_notification_in_every_state(
    state: ConnState, event: PoolNotification, kind: Outgoing
) -> None:
    conn = build(state)
    allowed = state in CAN_SEND[kind]
    if kind is Outgoing.SET_VERSION_MASK:
        allowed = allowed and conn.version_mask is not None
    if not allowed:
        with pytest.raises(LocalProtocolError):
            conn.notify(event)
        return
    data = conn.notify(event)
    assert decode_server_message(data) == event


@pytest.mark.parametrize("state", list(ConnState))
def test_replies_in_every_state(state: ConnState) -> None:
    conn = build(state)
    submit = Submit(4, "w", "1", "00", "00", "00")
    if state is S.CLOSED:
        with pytest.raises(LocalProtocolError):
            conn.reply(submit, True)
        with pytest.raises(LocalProtocolError):
            conn.reply_error(submit, 20, "x")
        return
    assert response(conn.reply(submit, True)) == Response(4, True, None)
    assert response(conn.reply_error(submit, 21, "stale")) == Response(4, None, (21, "stale"))


# ---------------------------------------------------------------------- behaviours


def test_subscribe_ok_result_and_state() -> None:
    conn = ServerConnection()
    assert conn.state is S.CONNECTED and not conn.subscribed
    reply = response(subscribe(conn, "deadbeef"))
    assert reply == Response(
        1, [[["mining.set_difficulty", "s1"], ["mining.notify", "s1"]], "deadbeef", 4], None
    )
    assert state_of(conn) is S.SUBSCRIBED and conn.subscribed
    assert (conn.extranonce1, conn.extranonce2_size, conn.subscription_id) == ("deadbeef", 4, "s1")
    assert conn.user_agent == "test/1.0"
    subscribe(conn, "cafe")  # re-subscribe: a new extranonce1
    assert conn.extranonce1 == "cafe"


@pytest.mark.parametrize(("en1", "size"), [("xyz", 4), ("abc", 4), ("00", 0), ("00", 101)])
def test_subscribe_ok_rejects_bad_extranonce(en1: str, size: int) -> None:
    conn = ServerConnection()
    with pytest.raises(LocalProtocolError):
        conn.subscribe_ok(Subscribe(1), extranonce1=en1, extranonce2_size=size, subscription_id="s")
    assert conn.state is S.CONNECTED and conn.extranonce1 is None


def test_several_workers_authorize_and_check_submit() -> None:
    conn = ServerConnection()
    sub = Submit(4, "addr.w1", "1", "00000000", "5f5e1000", "00000000")
    assert conn.check_submit(sub) == (25, "not subscribed")
    ev = one(conn, req(2, "mining.authorize", ["addr.w1", "x"]))
    assert isinstance(ev, Authorize)
    assert response(conn.authorize_ok(ev)) == Response(2, True, None)
    assert conn.check_submit(sub) == (ErrorCode.NOT_SUBSCRIBED, "not subscribed")
    subscribe(conn)
    assert conn.check_submit(sub) is None
    other = Submit(4, "addr.w2", "1", "00000000", "5f5e1000", "00000000")
    assert conn.check_submit(other) == (24, "unauthorized worker addr.w2")
    conn.authorize_ok(Authorize(3, "addr.w2", ""))
    assert conn.check_submit(other) is None
    assert conn.authorized_workers == frozenset({"addr.w1", "addr.w2"})
    conn.authorize_ok(Authorize(5, "Addr.W3"), worker="addr.w3")
    assert "addr.w3" in conn.authorized_workers


def test_submit_before_subscribe_is_still_delivered() -> None:
    conn = ServerConnection()
    ev = one(conn, req(4, "mining.submit", ["w", "1", "00000000", "5f5e1000", "00000000"]))
    assert isinstance(ev, Submit)
    verdict = conn.check_submit(ev)
    assert verdict is not None
    assert response(conn.reply_error(ev, *verdict)) == Response(4, None, (25, "not subscribed"))


def test_bitaxe_configure_gets_the_intersection_mask() -> None:
    conn = ServerConnection()
    ev = one(conn, req(1, "mining.configure", [["version-rolling"], BITAXE]))
    assert isinstance(ev, Configure)
    # pool 1fff0000 & miner 1fffe000 = 1fff0000: 13 bits, fewer than the 16 the miner needs
    reply = response(conn.configure_reply(ev, pool_version_mask=0x1FFF0000))
    assert reply.result == {"version-rolling": False}
    assert conn.version_mask is None and conn.state is S.CONFIGURED
    reply = configure(conn)
    assert reply.result == {"version-rolling": True, "version-rolling.mask": "1fffe000"}
    assert conn.version_mask == 0x1FFFE000


def test_configure_intersection_and_unknown_extensions() -> None:
    conn = ServerConnection()
    exts = ["version-rolling", "minimum-difficulty", "subscribe-extranonce", "info"]
    params = {
        "version-rolling.mask": "ffffffff",
        "version-rolling.min-bit-count": 2,
        "minimum-difficulty.value": 2048,
        "info.connection-url": "x",
    }
    ev = one(conn, req("c", "mining.configure", [exts, params]))
    assert isinstance(ev, Configure)
    reply = response(conn.configure_reply(ev, pool_version_mask=0x1FFFE000))
    assert reply.id == "c"
    assert reply.result == {
        "version-rolling": True,
        "version-rolling.mask": "1fffe000",
        "minimum-difficulty": False,
        "subscribe-extranonce": False,
        "info": False,
    }
    subscribe(conn)
    configure(conn, {"version-rolling.mask": "00006000", "version-rolling.min-bit-count": 2})
    assert conn.version_mask == 0x6000 and conn.state is S.SUBSCRIBED


@pytest.mark.parametrize(
    ("params", "pool", "granted"),
    [
        ({}, 0x1FFFE000, 0x1FFFE000),  # mask defaults to ffffffff, min bits to 0
        ({"version-rolling.mask": "e000"}, 0x1FFFE000, 0xE000),
        ({"version-rolling.mask": "e0000000"}, 0x1FFFE000, None),  # empty intersection
        ({"version-rolling.mask": "zz"}, 0x1FFFE000, None),
        ({"version-rolling.mask": ""}, 0x1FFFE000, None),  # found by make fuzz: raised
        ({"version-rolling.mask": 5}, 0x1FFFE000, None),
        ({"version-rolling.min-bit-count": "2"}, 0x1FFFE000, None),
        ({"version-rolling.min-bit-count": 17}, 0x1FFFE000, None),
        ({"version-rolling.min-bit-count": 16}, 0x1FFFE000, 0x1FFFE000),
    ],
)
def test_negotiate_version_rolling(params: dict[str, Any], pool: int, granted: int | None) -> None:
    assert negotiate_version_rolling(params, pool) == granted


def test_configure_reply_checks_pool_mask() -> None:
    conn = ServerConnection()
    with pytest.raises(LocalProtocolError):
        conn.configure_reply(Configure(1, (), {}), pool_version_mask=1 << 32)
    assert conn.state is S.CONNECTED


def test_suggest_difficulty_before_subscribe() -> None:
    conn = ServerConnection()
    ev = one(conn, req(1, "mining.suggest_difficulty", [0.0001]))
    assert ev == SuggestDifficulty(1, 0.0001)
    assert conn.suggested_difficulty == 0.0001
    assert response(conn.reply(ev, True)) == Response(1, True, None)
    ev = one(conn, req(2, "mining.suggest_difficulty", ["0.5"]))
    assert ev == SuggestDifficulty(2, 0.5) and conn.suggested_difficulty == 0.5
    bad = one(conn, req(3, "mining.suggest_difficulty", [float("nan")]))  # json writes NaN
    assert isinstance(bad, InvalidRequest) and conn.suggested_difficulty == 0.5
    assert conn.state is S.CONNECTED


def test_unknown_method_gets_code_20() -> None:
    conn = ServerConnection()
    ev = one(conn, req(8, "mining.ping", []))
    assert isinstance(ev, UnknownMethod)
    assert response(conn.reject(ev)) == Response(8, None, (20, "unknown method mining.ping"))
    bad = one(conn, b'{"id": 9, "method": "mining.authorize", "params": [1]}\n')
    assert isinstance(bad, InvalidRequest)
    assert response(conn.reject(bad)).error == (-32602, bad.message)


def test_reply_refuses_requests_that_have_their_own_helper() -> None:
    conn = ServerConnection()
    for ev in (Subscribe(1), Configure(1, (), {}), Authorize(1, "w"), InvalidRequest(1, 1, "x")):
        with pytest.raises(LocalProtocolError):
            conn.reply(ev, True)
    assert response(conn.reply(Authorize(1, "w"), False)) == Response(1, False, None)
    assert response(conn.reply_error(Subscribe(1), 20, "no")) == Response(1, None, (20, "no"))
    assert conn.state is S.CONNECTED and not conn.authorized_workers


def test_notify_before_subscribe_is_a_local_error() -> None:
    conn = ServerConnection()
    with pytest.raises(LocalProtocolError):
        conn.notify(NOTIFY)
    conn.notify(SetDifficulty(0.5))  # allowed: miners apply it to the next job
    assert conn.difficulty == 0.5
    subscribe(conn)
    assert decode_server_message(conn.notify(NOTIFY)) == NOTIFY


def test_set_extranonce_needs_extranonce_subscribe() -> None:
    conn = ServerConnection()
    subscribe(conn)
    with pytest.raises(LocalProtocolError):
        conn.notify(SetExtranonce("beef", 4))
    assert not conn.extranonce_subscribed
    one(conn, req(6, "mining.extranonce.subscribe", []))
    assert conn.extranonce_subscribed
    conn.notify(SetExtranonce("beef", 8))
    assert (conn.extranonce1, conn.extranonce2_size) == ("beef", 8)


def test_set_version_mask_needs_negotiation_and_updates_mask() -> None:
    conn = ServerConnection()
    with pytest.raises(LocalProtocolError):
        conn.notify(SetVersionMask("1fffe000"))
    configure(conn)
    conn.notify(SetVersionMask("00ffe000"))
    assert conn.version_mask == 0x00FFE000


def test_not_a_notification() -> None:
    with pytest.raises(LocalProtocolError):
        ServerConnection().notify(Subscribe(1))  # type: ignore[arg-type]


def test_eof_delivers_buffered_lines_first() -> None:
    conn = ServerConnection()
    conn.receive_data(req(1, "mining.subscribe", []) + req(2, "mining.authorize", ["w"])[:-1])
    conn.receive_data(b"")
    conn.receive_data(b"ignored after EOF\n")
    first, second = conn.next_event(), conn.next_event()
    assert isinstance(first, Subscribe) and isinstance(second, Authorize)
    assert conn.state is S.CONNECTED
    conn.subscribe_ok(first, extranonce1="00", extranonce2_size=4, subscription_id="s")
    assert conn.next_event() is CONNECTION_CLOSED
    assert state_of(conn) is S.CLOSED
    assert conn.next_event() is CONNECTION_CLOSED
    with pytest.raises(LocalProtocolError):
        conn.authorize_ok(second)
    with pytest.raises(LocalProtocolError):
        conn.notify(NOTIFY)


def test_line_too_long_is_the_only_fatal_input() -> None:
    conn = ServerConnection(max_line_bytes=100)
    assert conn.max_line_bytes == 100
    conn.receive_data(req(1, "mining.subscribe", []) + b"x" * 101)
    assert isinstance(conn.next_event(), Subscribe)
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert isinstance(info.value, LineTooLong)
    assert conn.state is S.ERROR
    conn.receive_data(b"\n" + req(2, "mining.authorize", ["w"]))
    with pytest.raises(LineTooLong):
        conn.next_event()
    # we may still explain why before closing
    last = conn.reply_error(InvalidRequest(None, info.value.code, info.value.message), 20, "bye")
    assert response(last) == Response(None, None, (20, "bye"))
    conn.close()
    assert state_of(conn) is S.CLOSED and conn.next_event() is CONNECTION_CLOSED


def test_close_is_idempotent_and_discards_input() -> None:
    conn = ServerConnection()
    conn.close()
    conn.close()
    conn.receive_data(req(1, "mining.subscribe", []))
    assert conn.next_event() is CONNECTION_CLOSED
    with pytest.raises(LocalProtocolError):
        conn.subscribe_ok(Subscribe(1), extranonce1="00", extranonce2_size=4, subscription_id="s")
