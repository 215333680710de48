"""ClientConnection: ids, result matching (fixed submit id FIFO), state tracking, and whole
conversations with a ServerConnection through bytes only (no event loop)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from stratum.client import ClientConnection
from stratum.connection import ServerConnection
from stratum.errors import LineTooLong, LocalProtocolError
from stratum.events import (
    CONNECTION_CLOSED,
    NEED_DATA,
    Authorize,
    AuthorizeResult,
    ClientEvent,
    Configure,
    ConfigureResult,
    ConnectionClosed,
    ExtranonceSubscribe,
    InvalidMessage,
    NeedData,
    Notify,
    RequestFailed,
    Response,
    ServerEvent,
    SetDifficulty,
    SetExtranonce,
    SetVersionMask,
    ShowMessage,
    Submit,
    SubmitResult,
    Subscribe,
    SubscribeResult,
    SuggestDifficulty,
    UnknownNotification,
)
from stratum.state import ConnState

NOTIFY = Notify("1", "00" * 32, "01", "02", ("33" * 32,), "20000000", "207fffff", "5f5e1000", True)


def wire(data: bytes) -> Any:
    return json.loads(data)


def resp(id: Any, result: Any = None, error: Any = None) -> bytes:
    return json.dumps({"id": id, "result": result, "error": error}).encode() + b"\n"


def events(conn: ClientConnection | ServerConnection, data: bytes = b"") -> list[Any]:
    if data:
        conn.receive_data(data)
    out: list[Any] = []
    while not isinstance(ev := conn.next_event(), NeedData | ConnectionClosed):
        out.append(ev)
    return out


def one(conn: ClientConnection, data: bytes) -> ClientEvent:
    out = events(conn, data)
    assert len(out) == 1, out
    result: ClientEvent = out[0]
    return result


SUB_RESULT = [[["mining.set_difficulty", "s1"], ["mining.notify", "s1"]], "deadbeef", 4]


# ---------------------------------------------------------------------- requests


def test_ids_increase_and_cpuminer_wire_format() -> None:
    conn = ClientConnection()
    assert wire(conn.subscribe("cpuminer/2.5.1")) == {
        "id": 1,
        "method": "mining.subscribe",
        "params": ["cpuminer/2.5.1"],
    }
    assert wire(conn.authorize("addr.w", "x"))["id"] == 2
    assert conn.last_request_id == 2
    assert wire(conn.submit("addr.w", "1", "00", "11", "22"))["params"] == [
        "addr.w",
        "1",
        "00",
        "11",
        "22",
    ]
    assert wire(conn.submit("w", "1", "00", "11", "22", "2000"))["params"][5] == "2000"
    assert wire(conn.suggest_difficulty(0.001)) == {
        "id": 5,
        "method": "mining.suggest_difficulty",
        "params": [0.001],
    }
    assert wire(conn.extranonce_subscribe())["method"] == "mining.extranonce.subscribe"
    assert wire(conn.get_transactions("1"))["params"] == ["1"]
    assert wire(conn.request("mining.ping"))["id"] == 8
    assert conn.pending_requests == 8


def test_fixed_submit_id_like_cpuminer_and_fifo_matching() -> None:
    conn = ClientConnection(fixed_submit_id=4)
    ids = [wire(conn.subscribe())["id"], wire(conn.authorize("w", "x"))["id"]]
    ids += [wire(conn.submit("w", "1", "00", "11", str(n)))["id"] for n in range(3)]
    ids += [wire(conn.configure([], {}))["id"], wire(conn.request("x"))["id"]]
    assert ids == [1, 2, 4, 4, 4, 3, 5]
    assert conn.pending_requests == 7
    out = events(conn, resp(4, True) + resp(4, None, [23, "low difficulty", None]) + resp(4, True))
    assert out == [
        SubmitResult(4, True, None),
        SubmitResult(4, False, (23, "low difficulty")),
        SubmitResult(4, True, None),
    ]
    assert one(conn, resp(4, True)) == Response(4, True, None)  # nothing outstanding
    assert conn.pending_requests == 4


def test_subscribe_result_and_session_id() -> None:
    conn = ClientConnection()
    conn.subscribe("ua", "old-session")
    assert conn.state is ConnState.CONNECTED and not conn.subscribed
    assert one(conn, resp(1, SUB_RESULT)) == SubscribeResult(1, "deadbeef", 4, "s1")
    assert conn.state is ConnState.SUBSCRIBED and conn.subscribed  # type: ignore[comparison-overlap]
    assert (conn.extranonce1, conn.extranonce2_size, conn.session_id) == ("deadbeef", 4, "s1")


@pytest.mark.parametrize(
    ("result", "session"),
    [([["mining.notify", "ab"], "00", 8], "ab"), ([[], "00", 8], None), ([None, "00", 8], None)],
)
def test_subscribe_result_variants(result: Any, session: str | None) -> None:
    conn = ClientConnection()
    conn.subscribe()
    assert one(conn, resp(1, result)) == SubscribeResult(1, "00", 8, session)


@pytest.mark.parametrize(
    "result", [None, True, [], [[], "zz", 4], [[], "00", 0], [[], "00", "4"], [[], 5, 4]]
)
def test_malformed_subscribe_result_is_request_failed(result: Any) -> None:
    conn = ClientConnection()
    conn.subscribe()
    ev = one(conn, resp(1, result))
    assert isinstance(ev, RequestFailed) and ev.method == "mining.subscribe" and ev.error[0] == 20
    assert conn.state is ConnState.CONNECTED


def test_subscribe_error_is_request_failed() -> None:
    conn = ClientConnection()
    conn.subscribe("ua", "stale-session")
    ev = one(conn, resp(1, None, [20, "unknown session", None]))
    assert ev == RequestFailed(1, "mining.subscribe", (20, "unknown session"))


def test_authorize_results() -> None:
    conn = ClientConnection()
    conn.authorize("a.w1", "x")
    conn.authorize("a.w2", "x")
    out = events(conn, resp(2, None, [24, "unknown user", None]) + resp(1, True))
    assert out == [
        AuthorizeResult(2, "a.w2", False, (24, "unknown user")),
        AuthorizeResult(1, "a.w1", True, None),
    ]
    assert conn.authorized_workers == frozenset({"a.w1"})


def test_configure_result_sets_version_mask() -> None:
    conn = ClientConnection()
    conn.configure(["version-rolling"], {"version-rolling.mask": "1fffe000"})
    result = {"version-rolling": True, "version-rolling.mask": "1fffe000"}
    assert one(conn, resp(1, result)) == ConfigureResult(1, result)
    assert conn.version_mask == 0x1FFFE000 and conn.state is ConnState.CONFIGURED
    conn.configure(["version-rolling"], {})
    assert one(conn, resp(2, {"version-rolling": False})) == ConfigureResult(
        2, {"version-rolling": False}
    )
    assert conn.version_mask is None
    conn.configure(["version-rolling"], {})
    assert isinstance(one(conn, resp(3, ["not", "a", "dict"])), RequestFailed)
    conn.configure(["version-rolling"], {})
    assert one(conn, resp(4, None, "nope")) == RequestFailed(4, "mining.configure", (20, "nope"))


def test_notifications_update_state() -> None:
    conn = ClientConnection()
    assert conn.difficulty == 1.0
    server = b"".join(
        json.dumps({"id": None, "method": m, "params": p}).encode() + b"\n"
        for m, p in [
            ("mining.set_difficulty", [0.001]),
            ("mining.set_extranonce", ["cafe", 8]),
            ("mining.set_version_mask", ["00ffe000"]),
            ("client.show_message", ["hello"]),
        ]
    )
    out = events(conn, server)
    assert out == [
        SetDifficulty(0.001),
        SetExtranonce("cafe", 8),
        SetVersionMask("00ffe000"),
        ShowMessage("hello"),
    ]
    assert (conn.difficulty, conn.extranonce1, conn.extranonce2_size) == (0.001, "cafe", 8)
    assert conn.version_mask == 0x00FFE000


def test_unmatched_responses_server_requests_and_garbage() -> None:
    conn = ClientConnection()
    conn.suggest_difficulty(0.5)
    assert one(conn, resp(1, True)) == Response(1, True, None)
    assert one(conn, resp("x", True)) == Response("x", True, None)
    assert one(conn, resp(99, True)) == Response(99, True, None)
    raw = b'{"id": 7, "method": "client.get_version", "params": []}\n'
    assert one(conn, raw) == UnknownNotification("client.get_version", [], 7)
    assert wire(conn.respond(7, "miner/1.0")) == {"id": 7, "result": "miner/1.0", "error": None}
    assert isinstance(one(conn, b"\xff\xfe garbage\n"), InvalidMessage)
    assert isinstance(one(conn, b'{"id": 1}\n'), InvalidMessage)


def test_close_eof_and_line_limit() -> None:
    conn = ClientConnection(max_line_bytes=64)
    conn.receive_data(b"x" * 65)
    with pytest.raises(LineTooLong):
        conn.next_event()
    assert conn.state is ConnState.ERROR
    with pytest.raises(LocalProtocolError):
        conn.subscribe()
    conn.close()
    assert conn.next_event() is CONNECTION_CLOSED

    conn = ClientConnection()
    conn.receive_data(b"")
    assert conn.next_event() is CONNECTION_CLOSED and conn.state is ConnState.CLOSED
    for send in (conn.subscribe, conn.extranonce_subscribe, lambda: conn.submit(*"abcde")):
        with pytest.raises(LocalProtocolError):
            send()
    assert conn.pending_requests == 0


def test_bad_values_are_local_errors_without_side_effects() -> None:
    conn = ClientConnection()
    with pytest.raises(LocalProtocolError):
        conn.suggest_difficulty(float("nan"))
    with pytest.raises(LocalProtocolError):
        conn.configure(["version-rolling"], {"x": {1, 2}})
    assert conn.pending_requests == 0 and wire(conn.subscribe())["id"] == 1
    with pytest.raises(TypeError):
        ClientConnection(fixed_submit_id="4")  # type: ignore[arg-type]


# ------------------------------------------------- whole conversations, bytes only


def pump(server: ServerConnection, data: bytes) -> list[ServerEvent]:
    return events(server, data)


def test_cpuminer_conversation() -> None:
    server, miner = ServerConnection(), ClientConnection(fixed_submit_id=4)
    (sub,) = pump(server, miner.subscribe("cpuminer/2.5.1"))
    assert sub == Subscribe(1, "cpuminer/2.5.1", None)
    assert isinstance(sub, Subscribe)
    out = server.subscribe_ok(sub, extranonce1="0000abcd", extranonce2_size=4, subscription_id="7")
    (auth,) = pump(server, miner.authorize("bcrt1qaddr.cpu0", "x"))
    assert isinstance(auth, Authorize)
    out += server.authorize_ok(auth)
    out += server.notify(SetDifficulty(0.001)) + server.notify(NOTIFY)
    assert events(miner, out) == [
        SubscribeResult(1, "0000abcd", 4, "7"),
        AuthorizeResult(2, "bcrt1qaddr.cpu0", True, None),
        SetDifficulty(0.001),
        NOTIFY,
    ]
    assert miner.difficulty == 0.001
    shares = miner.submit("bcrt1qaddr.cpu0", "1", "00000001", "5f5e1000", "00000000")
    shares += miner.submit("bcrt1qaddr.cpu0", "0", "00000002", "5f5e1000", "00000001")
    shares += miner.submit("someone.else", "1", "00000003", "5f5e1000", "00000002")
    answers = b""
    for ev in pump(server, shares):
        assert isinstance(ev, Submit) and ev.id == 4 and ev.version_bits is None
        verdict = server.check_submit(ev)
        if verdict is None and ev.job_id != "1":
            verdict = (21, "job not found")
        answers += server.reply(ev, True) if verdict is None else server.reply_error(ev, *verdict)
    assert events(miner, answers) == [
        SubmitResult(4, True, None),
        SubmitResult(4, False, (21, "job not found")),
        SubmitResult(4, False, (24, "unauthorized worker someone.else")),
    ]
    server.receive_data(b"")
    assert server.next_event() is CONNECTION_CLOSED


def test_bitaxe_conversation() -> None:
    server, miner = ServerConnection(), ClientConnection()
    params = {"version-rolling.mask": "1fffe000", "version-rolling.min-bit-count": 16}
    data = miner.configure(["version-rolling", "minimum-difficulty"], params)
    data += miner.suggest_difficulty(0.0001) + miner.subscribe("bitaxe/BM1370/v2.4")
    data += miner.authorize("addr.bitaxe", "x") + miner.extranonce_subscribe()
    out = b""
    for ev in pump(server, data):
        match ev:
            case Configure():
                out += server.configure_reply(ev, pool_version_mask=0x1FFFE000)
            case Subscribe():
                out += server.subscribe_ok(
                    ev, extranonce1="01020304", extranonce2_size=8, subscription_id="b1"
                )
            case Authorize():
                out += server.authorize_ok(ev)
            case SuggestDifficulty() | ExtranonceSubscribe():
                out += server.reply(ev, True)
            case _:
                raise AssertionError(ev)
    assert server.suggested_difficulty == 0.0001 and server.extranonce_subscribed
    assert server.version_mask == 0x1FFFE000
    out += server.notify(SetExtranonce("05060708", 8))
    out += server.notify(SetVersionMask("00ffe000"))
    got = events(miner, out)
    assert got[0] == ConfigureResult(
        1,
        {"version-rolling": True, "version-rolling.mask": "1fffe000", "minimum-difficulty": False},
    )
    assert got[1] == Response(2, True, None)
    assert got[2] == SubscribeResult(3, "01020304", 8, "b1")
    assert miner.extranonce1 == "05060708" and miner.version_mask == 0x00FFE000
    submit = miner.submit("addr.bitaxe", "1", "00" * 8, "5f5e1000", "00000000", "00002000")
    (ev,) = pump(server, submit)
    assert isinstance(ev, Submit) and ev.version_bits == "00002000"
    assert server.check_submit(ev) is None
    assert one(miner, server.reply(ev, True)) == SubmitResult(6, True, None)
    miner.close()
    assert miner.next_event() is CONNECTION_CLOSED and miner.state is ConnState.CLOSED
    assert server.next_event() is NEED_DATA
