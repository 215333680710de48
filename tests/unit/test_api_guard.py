"""The HTTP API's guard rails as pure functions: Host parsing and defaults, the rate-limited
log, clipping of echoed input."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from pool.api import guard
from pool.config import ApiConfig


@pytest.mark.parametrize(
    ("header", "host"),
    [
        ("localhost", "localhost"),
        ("LocalHost:8080", "localhost"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("[::1]:8080", "[::1]"),
        ("[::1]", "[::1]"),
        ("pool.example.", "pool.example"),
        ("  pool.example:1  ", "pool.example"),
        ("[broken", "[broken"),
    ],
)
def test_host_of(header: str, host: str) -> None:
    assert guard.host_of(header) == host


@pytest.mark.parametrize(
    ("bind", "configured", "expected"),
    [
        ("127.0.0.1", (), {"localhost", "127.0.0.1", "[::1]"}),
        ("::1", (), {"localhost", "127.0.0.1", "[::1]"}),
        ("192.0.2.7", (), {"localhost", "127.0.0.1", "[::1]", "192.0.2.7"}),
        ("fd00::7", (), {"localhost", "127.0.0.1", "[::1]", "[fd00::7]"}),
        ("0.0.0.0", (), None),
        ("::", (), None),
        ("0.0.0.0", ("Pool.Example.", "::1"), {"pool.example", "[::1]"}),
        ("127.0.0.1", ("*",), None),
    ],
)
def test_allowed_hosts_defaults_and_configured(
    bind: str, configured: tuple[str, ...], expected: set[str] | None
) -> None:
    allowed = guard.allowed_hosts(ApiConfig(host=bind, allowed_hosts=configured))
    assert allowed == (None if expected is None else frozenset(expected))


def test_host_refusal() -> None:
    allowed = guard.allowed_hosts(ApiConfig())
    assert guard.host_refusal("localhost:8080", allowed) is None
    assert guard.host_refusal(None, allowed) is None  # no Host (HTTP/1.0): not a browser
    assert guard.host_refusal("anything", None) is None  # any host allowed
    why = guard.host_refusal("attacker.example:8080", allowed)
    assert why is not None and "'attacker.example:8080'" in why and "api.allowed_hosts" in why
    long = guard.host_refusal("a" * 5000, allowed)
    assert long is not None and len(long) < 300


def test_clip() -> None:
    assert guard.clip("short") == "short"
    clipped = guard.clip("x" * 1000, 10)
    assert clipped == "x" * 10 + "...(+990 chars)"


def test_rate_limited_log_counts_what_it_leaves_out() -> None:
    now = [0.0]
    limiter = guard.RateLimitedLog(burst=3, window=10.0, clock=lambda: now[0])
    with capture_logs() as logs:
        results = [limiter("warning", "e", n=i) for i in range(10)]
        assert limiter("warning", "other") is True  # each event has its own budget
        now[0] = 9.9
        assert limiter("warning", "e") is False
        now[0] = 10.0
        assert limiter("warning", "e", n=99) is True
        assert limiter("warning", "e", n=100) is True
    assert results == [True] * 3 + [False] * 7
    lines = [x for x in logs if x["event"] == "e"]
    assert [x["n"] for x in lines] == [0, 1, 2, 99, 100]
    assert lines[3]["suppressed"] == 8 and "suppressed" not in lines[4]


def test_aiohttp_log_stand_in_writes_one_line_without_traceback() -> None:
    log = guard.AiohttpLog(guard.RateLimitedLog())
    try:
        raise ValueError("boom " + "z" * 500)
    except ValueError as exc:
        error = exc
    with capture_logs() as logs:
        log.exception("Error handling request from %s", "10.0.0.1", exc_info=error)
        log.debug("noise %s", 1)
    assert logs == [
        {
            "event": "http_server_error",
            "log_level": "error",
            "message": "Error handling request from 10.0.0.1",
            "error": "ValueError",
            "detail": guard.clip(error),
        }
    ]
    assert not log.isEnabledFor(10) and log.isEnabledFor(40)
