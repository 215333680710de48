"""The JSON-RPC dialect both ways: real miners' lines, error shapes, difficulties, garbage."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stratum.codec import (
    decode_request,
    decode_server_message,
    encode_client_request,
    encode_notification,
    encode_request,
    encode_response,
    format_difficulty,
    parse_difficulty,
)
from stratum.errors import ErrorCode, LocalProtocolError
from stratum.events import (
    Authorize,
    ClientRequest,
    Configure,
    ExtranonceSubscribe,
    GetTransactions,
    InvalidMessage,
    InvalidRequest,
    Notify,
    PoolNotification,
    Reconnect,
    Response,
    SetDifficulty,
    SetExtranonce,
    SetVersionMask,
    ShowMessage,
    Submit,
    Subscribe,
    SuggestDifficulty,
    UnknownMethod,
    UnknownNotification,
)

PREVHASH = "00" * 32
BRANCH = ("11" * 32, "22" * 32)
NOTIFY = Notify(
    "1a", PREVHASH, "01000000", "ffffffff", BRANCH, "20000000", "207fffff", "5f5e1000", True
)


def line(obj: Any) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def wire(data: bytes) -> Any:
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    return json.loads(data)


# --------------------------------------------------------------- requests: real miners


def test_cpuminer_subscribe() -> None:
    ev = decode_request(b'{"id": 1, "method": "mining.subscribe", "params": ["cpuminer/2.5.1"]}')
    assert ev == Subscribe(1, "cpuminer/2.5.1", None)


def test_cpuminer_submit_with_id_4_and_five_params() -> None:
    raw = line(
        {
            "id": 4,
            "method": "mining.submit",
            "params": ["addr.w1", "1a", "00000001", "5f5e1000", "deadbeef"],
        }
    )
    assert decode_request(raw) == Submit(4, "addr.w1", "1a", "00000001", "5f5e1000", "deadbeef")


def test_submit_with_version_bits() -> None:
    params = ["w", "1a", "00000001", "5f5e1000", "deadbeef", "00002000"]
    ev = decode_request(line({"id": "7", "method": "mining.submit", "params": params}))
    assert ev == Submit("7", "w", "1a", "00000001", "5f5e1000", "deadbeef", "00002000")


def test_bitaxe_configure() -> None:
    ext_params = {"version-rolling.mask": "1fffe000", "version-rolling.min-bit-count": 16}
    params: list[Any] = [["version-rolling"], ext_params]
    ev = decode_request(line({"id": 1, "method": "mining.configure", "params": params}))
    assert ev == Configure(1, ("version-rolling",), ext_params)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.0001, 0.0001), ("0.5", 0.5), (1, 1.0), (512, 512.0), ("1e-3", 0.001), (" 2 ", 2.0)],
)
def test_suggest_difficulty_accepts_numeric_strings(value: Any, expected: float) -> None:
    ev = decode_request(line({"id": 3, "method": "mining.suggest_difficulty", "params": [value]}))
    assert ev == SuggestDifficulty(3, expected)


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        0,
        -1,
        "0",
        "-0.5",
        "nan",
        "inf",
        "Infinity",
        "1_000",
        "",
        "abc",
        None,
        [1],
        {"d": 1},
        "1e400",
        10**400,
    ],
)
def test_suggest_difficulty_rejects_invalid_values(value: Any) -> None:
    ev = decode_request(line({"id": 3, "method": "mining.suggest_difficulty", "params": [value]}))
    assert isinstance(ev, InvalidRequest)
    assert ev.id == 3 and ev.code == ErrorCode.INVALID_PARAMS
    assert "difficulty" in ev.message


def test_other_known_requests() -> None:
    assert decode_request(line({"id": 9, "method": "mining.authorize", "params": ["a.w"]})) == (
        Authorize(9, "a.w", "")
    )
    raw = line({"id": 9, "method": "mining.authorize", "params": ["a.w", None]})
    assert decode_request(raw) == Authorize(9, "a.w", "")
    raw = line({"id": 5, "method": "mining.extranonce.subscribe", "params": []})
    assert decode_request(raw) == ExtranonceSubscribe(5)
    raw = line({"id": 5, "method": "mining.get_transactions", "params": ["1a"]})
    assert decode_request(raw) == GetTransactions(5, "1a")
    raw = line({"id": 5, "method": "mining.subscribe", "params": ["bmminer/2.0", None, "h", 3333]})
    assert decode_request(raw) == Subscribe(5, "bmminer/2.0", None)
    assert decode_request(b'{"id":6,"method":"mining.subscribe"}') == Subscribe(6)
    assert decode_request(b'{"id":6,"method":"mining.subscribe","params":null}') == Subscribe(6)


def test_unknown_method_is_an_event() -> None:
    ev = decode_request(line({"id": 8, "method": "mining.ping", "params": [1, "x"]}))
    assert ev == UnknownMethod(8, "mining.ping", [1, "x"])


# ------------------------------------------------------------------ requests: garbage


@pytest.mark.parametrize(
    ("raw", "code", "id", "fragment"),
    [
        (b"not json", ErrorCode.PARSE_ERROR, None, "invalid JSON"),
        (b'{"id": 1, "method": "mining.subscribe"', ErrorCode.PARSE_ERROR, None, "invalid JSON"),
        (b"\xff\xfe{}", ErrorCode.PARSE_ERROR, None, "UTF-8"),
        (b'{"id": NaN, "method": "x"}', ErrorCode.PARSE_ERROR, None, "NaN"),
        (b"[" * 5000 + b"]" * 5000, ErrorCode.PARSE_ERROR, None, "invalid JSON"),
        (b'{"id": ' + b"9" * 5000 + b"}", ErrorCode.PARSE_ERROR, None, "invalid JSON"),
        (b"[1, 2]", ErrorCode.INVALID_REQUEST, None, "array"),
        (b'"x"', ErrorCode.INVALID_REQUEST, None, "string"),
        (b'{"id": 1}', ErrorCode.INVALID_REQUEST, 1, "missing method"),
        (b'{"id": "a", "method": 5}', ErrorCode.INVALID_REQUEST, "a", "method"),
        (b'{"id": 1, "method": "x", "params": {}}', ErrorCode.INVALID_REQUEST, 1, "params"),
        (b'{"id": true, "method": "mining.subscribe"}', ErrorCode.INVALID_REQUEST, None, "id"),
        (b'{"id": 1.5, "method": "mining.subscribe"}', ErrorCode.INVALID_REQUEST, None, "id"),
        (b'{"id": [1], "method": "mining.subscribe"}', ErrorCode.INVALID_REQUEST, None, "id"),
    ],
)
def test_garbage_becomes_invalid_request(raw: bytes, code: int, id: Any, fragment: str) -> None:
    ev = decode_request(raw)
    assert isinstance(ev, InvalidRequest)
    assert (ev.code, ev.id) == (code, id)
    assert fragment in ev.message


@pytest.mark.parametrize(
    ("method", "params", "fragment"),
    [
        ("mining.subscribe", [5], "user_agent"),
        ("mining.subscribe", ["ua", 7], "session_id"),
        ("mining.authorize", [], "expected params"),
        ("mining.authorize", ["a", "b", "c"], "expected params"),
        ("mining.authorize", [1, "x"], "username"),
        ("mining.authorize", ["a", 1], "password"),
        ("mining.configure", [], "expected params"),
        ("mining.configure", ["version-rolling", {}], "extensions"),
        ("mining.configure", [[1], {}], "extensions"),
        ("mining.configure", [["version-rolling"], []], "extension params"),
        ("mining.submit", ["w", "1", "00", "11"], "got 4"),
        ("mining.submit", ["w", "1", "00", "11", "22", "33", "44"], "got 7"),
        ("mining.submit", ["w", 1, "00", "11", "22"], "job_id"),
        ("mining.submit", ["w", "1", "00", "11", 34], "nonce"),
        ("mining.submit", ["w", "1", "00", "11", "22", 5], "version_bits"),
        ("mining.suggest_difficulty", [], "expected params"),
        ("mining.suggest_difficulty", [1, 2], "expected params"),
        ("mining.get_transactions", [1], "job_id"),
    ],
)
def test_wrong_params_for_known_methods(method: str, params: Any, fragment: str) -> None:
    ev = decode_request(line({"id": 11, "method": method, "params": params}))
    assert isinstance(ev, InvalidRequest)
    assert ev.id == 11 and ev.code == ErrorCode.INVALID_PARAMS
    assert ev.message.startswith(method) and fragment in ev.message


# ----------------------------------------------------------------------- responses


@pytest.mark.parametrize("request_id", [1, 4, 2**70, "abc", "", "\u00e9\ud800", None])
def test_ids_are_echoed_unchanged(request_id: Any) -> None:
    data = encode_response(request_id, True)
    assert wire(data) == {"id": request_id, "result": True, "error": None}
    assert decode_server_message(data) == Response(request_id, True, None)


def test_error_serializes_as_code_message_null() -> None:
    data = encode_response(4, None, (ErrorCode.LOW_DIFFICULTY, "low difficulty share"))
    assert data == b'{"id":4,"result":null,"error":[23,"low difficulty share",null]}\n'
    assert decode_server_message(data) == Response(4, None, (23, "low difficulty share"))


def test_encoding_rejects_what_cannot_be_sent() -> None:
    bad_ids: list[Any] = [True, 1.5, [1]]
    for bad_id in bad_ids:
        with pytest.raises(LocalProtocolError):
            encode_response(bad_id, True)
    with pytest.raises(LocalProtocolError):
        encode_response(1, float("nan"))
    with pytest.raises(LocalProtocolError):
        encode_response(1, {1, 2})
    with pytest.raises(LocalProtocolError):
        encode_response(1, None, ("20", "x"))  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        encode_request(1, "", [])
    with pytest.raises(LocalProtocolError):
        encode_request(1, "m", "abc")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ([21, "job not found", None], (21, "job not found")),
        ({"code": 22, "message": "duplicate"}, (22, "duplicate")),
        ("plain text", (20, "plain text")),
        ([True, 5], (20, "5")),
        ([], (20, "")),
        (7, (20, "7")),
        (None, None),
        (False, None),
    ],
)
def test_client_normalises_error_shapes(error: Any, expected: Any) -> None:
    message = decode_server_message(line({"id": 1, "result": None, "error": error}))
    assert isinstance(message, Response) and message.error == expected


# -------------------------------------------------------------- notifications, difficulty


@pytest.mark.parametrize(
    ("difficulty", "text"),
    [
        (0.001, "0.001"),
        (1.0, "1"),
        (2, "2"),
        (65536.0, "65536"),
        (4.66e-10, "4.66e-10"),
        (1.5, "1.5"),
        (2.0**60, "1.152921504606847e+18"),
    ],
)
def test_set_difficulty_keeps_fractions_and_prints_integers_compactly(
    difficulty: float, text: str
) -> None:
    data = encode_notification(SetDifficulty(difficulty))
    prefix = b'{"id":null,"method":"mining.set_difficulty","params":['
    assert data == prefix + text.encode() + b"]}\n"
    assert decode_server_message(data) == SetDifficulty(float(difficulty))


@pytest.mark.parametrize("difficulty", [0, -1, 0.0, float("nan"), float("inf"), True, "1"])
def test_set_difficulty_rejects_invalid(difficulty: Any) -> None:
    with pytest.raises(LocalProtocolError):
        encode_notification(SetDifficulty(difficulty))


def test_parse_and_format_difficulty_helpers() -> None:
    assert parse_difficulty("0.0001") == 0.0001
    assert parse_difficulty("1e-400") is None  # underflows to 0
    assert format_difficulty(0.001) == 0.001
    assert format_difficulty(3.0) == 3 and isinstance(format_difficulty(3.0), int)


NOTIFICATIONS: list[PoolNotification] = [
    SetDifficulty(0.001),
    NOTIFY,
    SetExtranonce("deadbeef", 4),
    SetVersionMask("1fffe000"),
    Reconnect(),
    Reconnect("pool.example", 3333, 5),
    Reconnect(None, 3334),
    ShowMessage("maintenance in 5 minutes"),
]


@pytest.mark.parametrize("event", NOTIFICATIONS)
def test_notifications_round_trip(event: PoolNotification) -> None:
    data = encode_notification(event)
    obj = wire(data)
    assert obj["id"] is None and isinstance(obj["params"], list)
    assert decode_server_message(data) == event


def test_notify_wire_format() -> None:
    assert wire(encode_notification(NOTIFY)) == {
        "id": None,
        "method": "mining.notify",
        "params": [
            "1a",
            PREVHASH,
            "01000000",
            "ffffffff",
            list(BRANCH),
            "20000000",
            "207fffff",
            "5f5e1000",
            True,
        ],
    }


def test_reconnect_sends_port_as_string_and_trims_trailing_nulls() -> None:
    assert wire(encode_notification(Reconnect("h", 3333)))["params"] == ["h", "3333"]
    assert wire(encode_notification(Reconnect()))["params"] == []
    assert wire(encode_notification(Reconnect(None, None, 3)))["params"] == [None, None, 3]


@pytest.mark.parametrize(
    "event",
    [
        Notify("", PREVHASH, "", "", (), "20000000", "207fffff", "5f5e1000", False),
        Notify("1", "00" * 31, "", "", (), "20000000", "207fffff", "5f5e1000", False),
        Notify("1", PREVHASH, "0", "", (), "20000000", "207fffff", "5f5e1000", False),
        Notify("1", PREVHASH, "", "", ("zz" * 32,), "20000000", "207fffff", "5f5e1000", False),
        Notify("1", PREVHASH, "", "", (), "2000000", "207fffff", "5f5e1000", False),
        Notify("1", PREVHASH, "", "", (), "20000000", "207fffff", "5f5e1000", 1),  # type: ignore[arg-type]
        SetExtranonce("xyz", 4),
        SetExtranonce("00", 0),
        SetExtranonce("00", 101),
        SetVersionMask("1fffe00"),
        Reconnect("h", 0),
        Reconnect("h", 3333, -1),
        ShowMessage(5),  # type: ignore[arg-type]
    ],
)
def test_invalid_notifications_are_local_errors(event: PoolNotification) -> None:
    with pytest.raises(LocalProtocolError):
        encode_notification(event)


def test_unknown_and_malformed_server_messages() -> None:
    raw = line({"id": 5, "method": "client.get_version", "params": []})
    assert decode_server_message(raw) == UnknownNotification("client.get_version", [], 5)
    for garbage in (
        b"{",
        b"[]",
        b"\xff",
        b'{"id": 1}',
        b'{"id": 1.5, "result": 1}',
        b'{"method": 3}',
        b'{"id": null, "method": "mining.notify", "params": [1]}',
        b'{"method": "mining.set_difficulty", "params": [0]}',
        b'{"method": "mining.set_difficulty", "params": {}}',
        b'{"method": "client.reconnect", "params": ["h", "x"]}',
        b'{"method": "mining.set_extranonce", "params": ["00", -1]}',
    ):
        assert isinstance(decode_server_message(garbage), InvalidMessage), garbage


def test_lenient_server_message_forms() -> None:
    raw = b'{"method": "client.reconnect", "params": ["h", 3333, "10"]}'
    assert decode_server_message(raw) == Reconnect("h", 3333, 10)
    raw = b'{"method": "mining.set_version_mask", "params": ["fe000"]}'
    assert decode_server_message(raw) == SetVersionMask("000fe000")
    raw = b'{"method": "mining.set_difficulty", "params": ["0.5"]}'
    assert decode_server_message(raw) == SetDifficulty(0.5)


# --------------------------------------------------- client encodes -> server decodes

REQUESTS: list[ClientRequest] = [
    Subscribe(1),
    Subscribe(1, "cpuminer/2.5.1"),
    Subscribe("s", "bitaxe", "sess"),
    Subscribe(2, None, "sess"),
    Authorize(2, "addr.worker", "x"),
    Configure(3, ("version-rolling", "info"), {"version-rolling.mask": "ffffffff"}),
    Submit(4, "w", "1a", "00000001", "5f5e1000", "deadbeef"),
    Submit(4, "w", "1a", "00000001", "5f5e1000", "deadbeef", "00002000"),
    SuggestDifficulty(5, 0.0001),
    SuggestDifficulty(5, 1.0),
    ExtranonceSubscribe(6),
    GetTransactions(7),
    GetTransactions(7, "1a"),
    UnknownMethod(8, "mining.ping", []),
]


@pytest.mark.parametrize("event", REQUESTS)
def test_requests_round_trip(event: ClientRequest) -> None:
    assert decode_request(encode_client_request(event)) == event


def test_cpuminer_subscribe_is_encoded_like_cpuminer() -> None:
    assert wire(encode_client_request(Subscribe(1, "cpuminer/2.5.1"))) == {
        "id": 1,
        "method": "mining.subscribe",
        "params": ["cpuminer/2.5.1"],
    }


def test_invalid_request_cannot_be_encoded() -> None:
    with pytest.raises(LocalProtocolError):
        encode_client_request(InvalidRequest(1, -32600, "x"))
    with pytest.raises(LocalProtocolError):
        encode_client_request(UnknownMethod(1, "m", {"a": 1}))


ids = st.one_of(st.none(), st.integers(), st.text(max_size=10))
texts = st.text(max_size=12)
positive = st.floats(min_value=1e-12, max_value=1e12, allow_nan=False, allow_infinity=False)


@given(
    st.one_of(
        st.builds(Subscribe, ids, st.none() | texts, st.none() | texts),
        st.builds(Authorize, ids, texts, texts),
        st.builds(Submit, ids, texts, texts, texts, texts, texts, st.none() | texts),
        st.builds(SuggestDifficulty, ids, positive),
        st.builds(ExtranonceSubscribe, ids),
        st.builds(GetTransactions, ids, st.none() | texts),
        st.builds(Configure, ids, st.lists(texts).map(tuple), st.dictionaries(texts, texts)),
    )
)
def test_any_valid_request_round_trips(event: ClientRequest) -> None:
    assert decode_request(encode_client_request(event)) == event
