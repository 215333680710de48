"""With and without orjson (the optional ``fast`` extra) a line decodes to the same event."""

from __future__ import annotations

import pytest

from stratum import _json
from stratum.codec import decode_request

LINES = [
    b'{"id": 4, "method": "mining.submit", "params": ["a.b", "1f", "00000001", "6553f100",'
    b' "a1b2c3d4"]}',
    b'{"id": 5, "method": "mining.submit", "params": ["a.b", "1f", "00000001", "6553f100",'
    b' "a1b2c3d4", "00002000"]}',
    b'{"id": 1e400, "method": "mining.submit", "params": []}',
    b'{"id": 123456789012345678901234567890, "method": "mining.submit", "params": []}',
    b'{"id": true, "method": "mining.submit", "params": ["a", "b", "c", "d", "e"]}',
    b'{"id": 6, "method": "mining.submit", "params": ["a", "b", "c", "d", 5]}',
    b'{"id": 7, "method": "mining.submit", "params": ["a", "b", "c", "d", "e", null]}',
    b'{"id": 8, "method": "mining.subscribe", "params": ["cgminer/4.11", null]}',
    b'{"id": 9, "method": "mining.suggest_difficulty", "params": [123456789012345678901234]}',
    b'{"id": "x\\u00e9", "method": "mining.authorize", "params": ["w", "p"]}',
    b'{"id": 1, "method": "mining.submit", "params": ["\xff"]}',
    b"[1, 2]",
    b"not json",
    b'{"id": 2, "method": "mining.submit"}',
]


@pytest.mark.parametrize("line", LINES)
def test_same_event_with_and_without_orjson(line: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    fast = decode_request(line)
    monkeypatch.setattr(_json, "_fast_loads", None)
    assert decode_request(line) == fast


def test_orjson_is_used_when_installed() -> None:
    pytest.importorskip("orjson")
    assert _json._fast_loads is not None
