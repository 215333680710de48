"""The HTTP API's edges on a real pool: requests aiohttp cannot parse, bodies too big or too
deep, a fault in a handler, the Host check. Every answer is JSON; nothing reaches the standard
``logging`` (where aiohttp's own traceback would go) and the pool logs one line per fault, at
most ``LOG_BURST`` per window. About 10 s."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from structlog.testing import capture_logs

from pool.api import guard
from pool.app import PoolApp
from pool.config import ApiConfig
from pool.node.managed import ManagedNode
from tests.integration.api_harness import TOKEN, TOKEN_ENV
from tests.integration.harness import pool_config, start_pool, wallet_address

pytestmark = pytest.mark.integration

BODY_LIMIT = 4096


@pytest_asyncio.fixture(scope="module")
async def pool(
    regtest_node: ManagedNode, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[PoolApp]:
    os.environ[TOKEN_ENV] = TOKEN
    payout = await wallet_address(regtest_node)
    base = pool_config(regtest_node, tmp_path_factory.mktemp("api-errors"), payout)
    config = dataclasses.replace(
        base, api=ApiConfig(port=0, admin_token_env=TOKEN_ENV, max_body_bytes=BODY_LIMIT)
    )
    app = await start_pool(config)
    try:
        yield app
    finally:
        await app.stop()


async def exchange(app: PoolApp, request: bytes) -> tuple[int, dict[str, str], Any]:
    """Send raw bytes to the API; (status, headers, JSON body) of the answer."""
    assert app.api is not None and app.api.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", app.api.port)
    try:
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        body = dechunk(body)
    return status, headers, json.loads(body)


def dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out, data = out + rest[:size], rest[size + 2 :]
    return out


def get(path: str, host: str | None = "127.0.0.1", extra: bytes = b"") -> bytes:
    if host is None:  # HTTP/1.0 (1.1 requires a Host: aiohttp answers 400 without one)
        head = f"GET {path} HTTP/1.0\r\n".encode()
    else:
        head = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n".encode()
    return head + extra + b"Connection: close\r\n\r\n"


def post(path: str, body: bytes, token: str = TOKEN) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body


@pytest.fixture
def no_stdlib_logs(caplog: pytest.LogCaptureFixture) -> Any:
    """aiohttp logs through the standard ``logging`` (plain text, tracebacks): nothing may go
    there."""
    caplog.set_level(logging.DEBUG)
    yield
    leaked = [r for r in caplog.records if r.name.startswith("aiohttp") and r.levelno > 10]
    assert leaked == [], [(r.name, r.getMessage(), r.exc_info) for r in leaked]


@pytest.mark.parametrize(
    ("request_bytes", "status", "words"),
    [
        (get("/api/pool?" + "x" * 8192), 414, "request line is too long"),
        (get("/api/pool", extra=b"X-Big: " + b"y" * 9000 + b"\r\n"), 431, "header is too long"),
        (
            get("/api/pool", extra=b"".join(b"X-%d: 1\r\n" % i for i in range(100))),
            400,
            "bad request",
        ),
        (b"NOT HTTP AT ALL\x00\x01\r\n\r\n", 400, "bad request"),
        (b"GET /api/pool HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400, "bad request"),
    ],
    ids=["8k-url", "9k-header", "100-headers", "garbage", "bad-length"],
)
async def test_unparsable_requests_get_json_4xx_and_one_log_line(
    pool: PoolApp, no_stdlib_logs: None, request_bytes: bytes, status: int, words: str
) -> None:
    with capture_logs() as logs:
        got, headers, body = await exchange(pool, request_bytes)
    assert (got, body["status"]) == (status, status)
    assert words in body["error"] and headers["content-type"].startswith("application/json")
    lines = [x for x in logs if x["event"] == "http_bad_request"]
    assert len(lines) == 1 and lines[0]["status"] == status, logs
    assert "Traceback" not in json.dumps(lines) and len(json.dumps(lines)) < 1000


async def test_the_api_still_serves_after_bad_requests(pool: PoolApp) -> None:
    await exchange(pool, get("/api/pool?" + "x" * 10_000))
    got, _, body = await exchange(pool, get("/api/pool"))
    assert got == 200 and "hashrate" in body


async def test_bad_request_log_lines_are_rate_limited(pool: PoolApp, no_stdlib_logs: None) -> None:
    assert pool.api is not None
    limiter = pool.api._limited_log
    limiter._state.clear()
    floods = 3 * guard.LOG_BURST
    with capture_logs() as logs:
        for _ in range(floods):
            got, _, _ = await exchange(pool, get("/?" + "z" * 9000))
            assert got == 414
    lines = [x for x in logs if x["event"] == "http_bad_request"]
    assert len(lines) == guard.LOG_BURST, len(lines)
    limiter._state["http_bad_request"][0] -= guard.LOG_WINDOW_SECONDS  # the next window
    with capture_logs() as logs:
        await exchange(pool, get("/?" + "z" * 9000))
    (line,) = [x for x in logs if x["event"] == "http_bad_request"]
    assert line["suppressed"] == floods - guard.LOG_BURST


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 2000 + b"]" * 2000,  # complete, beyond Python's recursion limit
        b'{"ip": ' + b"[" * 1500 + b"]" * 1500 + b"}",
        b"[" * 4000,  # unfinished: the parser gives up on the depth first
    ],
    ids=["list", "in-object", "unfinished"],
)
async def test_deeply_nested_admin_body_is_a_400(
    pool: PoolApp, no_stdlib_logs: None, body: bytes
) -> None:
    with capture_logs() as logs:
        got, _, answer = await exchange(pool, post("/api/admin/ban", body))
    assert (got, answer) == (400, {"error": "the body is nested too deeply", "status": 400})
    assert not [x for x in logs if x["log_level"] == "error"], logs


async def test_body_over_the_limit_is_a_413_naming_the_key(pool: PoolApp) -> None:
    body = json.dumps({"ip": "10.0.0.1", "pad": "p" * BODY_LIMIT}).encode()
    got, _, answer = await exchange(pool, post("/api/admin/ban", body))
    assert got == 413 and "api.max_body_bytes" in answer["error"], answer


async def test_a_fault_in_a_handler_is_a_json_500_and_one_line(
    pool: PoolApp, monkeypatch: pytest.MonkeyPatch, no_stdlib_logs: None
) -> None:
    """A fault we cannot cause for real (a bug): the view raises."""
    assert pool.api is not None

    def broken(now: float) -> dict[str, Any]:
        raise RuntimeError("secret internals /var/lib/x")

    monkeypatch.setattr(pool.api.views, "pool", broken)
    pool.api._limited_log._state.clear()
    with capture_logs() as logs:
        got, _, answer = await exchange(pool, get("/api/pool"))
    assert got == 500 and answer["status"] == 500
    assert "RuntimeError" in answer["error"] and "secret" not in answer["error"]
    (line,) = [x for x in logs if x["event"] == "api_error"]
    assert line["error"] == "RuntimeError" and "secret internals" in line["detail"]
    assert line["where"].startswith("test_api_errors.py:") and "exc_info" not in line


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("127.0.0.1", 200),
        ("127.0.0.1:8080", 200),
        ("localhost", 200),
        ("LOCALHOST.:1", 200),
        ("[::1]:8080", 200),
        (None, 200),
        ("evil.example", 421),
        ("evil.example:8080", 421),
        ("127.0.0.1.evil.example", 421),
        ("[::2]", 421),
        ("x" * 4000, 421),
    ],
)
async def test_host_check(pool: PoolApp, host: str | None, status: int) -> None:
    got, _, answer = await exchange(pool, get("/api/pool", host=host))
    assert got == status, answer
    if status == 421:
        assert answer["status"] == 421 and "api.allowed_hosts" in answer["error"]
        assert len(answer["error"]) < 400  # the Host is echoed cut short


async def test_host_check_covers_every_route(pool: PoolApp) -> None:
    for path in ("/", "/healthz", "/metrics", "/api/nothing"):
        got, _, answer = await exchange(pool, get(path, host="rebound.example"))
        assert got == 421, (path, answer)
    got, _, _ = await exchange(pool, post("/api/admin/ban", b"{}").replace(b"localhost", b"a.b"))
    assert got == 421


async def test_configured_hosts_replace_the_default(
    regtest_node: ManagedNode, tmp_path: Path
) -> None:
    payout = await wallet_address(regtest_node)
    base = pool_config(regtest_node, tmp_path, payout)
    config = dataclasses.replace(base, api=ApiConfig(port=0, allowed_hosts=("pool.example",)))
    app = await start_pool(config)
    try:
        assert (await exchange(app, get("/api/pool", host="pool.example:80")))[0] == 200
        assert (await exchange(app, get("/api/pool", host="127.0.0.1")))[0] == 421
    finally:
        await app.stop()


async def test_refused_admin_tokens_are_logged_rate_limited(pool: PoolApp) -> None:
    assert pool.api is not None
    pool.api._limited_log._state.clear()
    with capture_logs() as logs:
        for _ in range(3 * guard.LOG_BURST):
            got, _, answer = await exchange(pool, post("/api/admin/ban", b"{}", token="wrong"))
            assert got == 401 and "Authorization: Bearer" in answer["error"]
    assert len([x for x in logs if x["event"] == "api_admin_refused"]) == guard.LOG_BURST
