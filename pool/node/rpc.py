"""bitcoind JSON-RPC client on aiohttp.

Errors are typed by what the caller should do about them:

- ``RpcRefused``: bitcoind answered and said no (a JSON-RPC error other than "warming up"). Never
  retried: asking again gets the same answer.
- ``RpcAuthError``: HTTP 401/403. The credentials are wrong; not retried forever (a cookie file
  is re-read once, since bitcoind writes a new cookie each time it starts).
- ``RpcUnavailable``: bitcoind could not be reached, timed out, or is warming up (-28). Retried
  with exponential backoff; the failure is logged at most once a minute and "restored" is logged
  when a call succeeds again.

No credential ever appears in a log line or an error message: errors name ``display_url``, the
URL with any user-info removed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import structlog

log = structlog.get_logger("pool.node.rpc")

RPC_IN_WARMUP = -28


class RpcError(Exception):
    """Base of every error this client raises."""


class RpcRefused(RpcError):
    """bitcoind answered with an error. Never retried."""

    def __init__(self, method: str, code: int, message: str) -> None:
        super().__init__(f"bitcoind refused {method}: {message} (code {code})")
        self.method = method
        self.code = code
        self.message = message


class RpcAuthError(RpcError):
    """bitcoind rejected the credentials (HTTP 401/403; 403 also: a method ``-rpcwhitelist``
    does not allow this user)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RpcUnavailable(RpcError):
    """bitcoind unreachable, timed out or warming up. Retried with backoff."""


class RpcTimeout(RpcUnavailable):
    """bitcoind did not answer within the call's timeout. For a long-poll (``quiet_timeout``)
    that is the normal end of a quiet wait, not a failure."""


@dataclass(frozen=True)
class RetryPolicy:
    first_delay: float = 0.25
    max_delay: float = 10.0
    # Give up after this many seconds of continuous failure (None: keep trying for ever).
    give_up_after: float | None = 60.0
    log_every: float = 60.0


def strip_userinfo(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path or "/", "", ""))


class BitcoinRpc:
    """One bitcoind. ``call`` is safe to use from many tasks; at most ``max_concurrency`` requests
    are in flight at once (a long-poll takes one slot; give it its own client if that matters)."""

    def __init__(
        self,
        url: str,
        *,
        user: str | None = None,
        password: str | None = None,
        cookie_file: Path | None = None,
        max_concurrency: int = 8,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            shown = strip_userinfo(url)
            raise ValueError(f"bitcoind RPC URL must be http(s)://host:port, got {shown}")
        if parts.username and user is None:
            user, password = parts.username, parts.password or ""
        self.display_url = strip_userinfo(url)
        self._url = self.display_url.rstrip("/")
        self._user = user
        self._password = password
        self._cookie_file = cookie_file
        self._auth_header: str | None = None
        self._sem = asyncio.Semaphore(max_concurrency)
        self._timeout = timeout
        self.retry = retry or RetryPolicy()
        self._session: aiohttp.ClientSession | None = None
        self._ids = itertools.count(1)
        self._failing_since: float | None = None
        self._up = asyncio.Event()  # cleared while calls fail, set by the next success
        self._up.set()
        self._last_failure_log = 0.0
        # Counters for /metrics: calls, errors by kind, total latency.
        self.calls = 0
        self.errors: dict[str, int] = {"refused": 0, "unavailable": 0, "auth": 0}
        self.latency_total = 0.0

    # -- credentials ---------------------------------------------------------------------------
    def _load_auth(self, *, reload: bool = False) -> str:
        if self._auth_header is not None and not reload:
            return self._auth_header
        if self._user is not None:
            raw = f"{self._user}:{self._password or ''}"
        elif self._cookie_file is not None:
            try:
                raw = self._cookie_file.read_text().strip()
            except OSError as exc:
                raise RpcUnavailable(
                    f"bitcoind at {self.display_url}: cannot read cookie file "
                    f"{self._cookie_file}: {exc.strerror}"
                ) from exc
        else:
            raise RpcAuthError(
                f"no credentials for bitcoind at {self.display_url}: set rpc user/password "
                "or a cookie file"
            )
        self._auth_header = "Basic " + base64.b64encode(raw.encode()).decode()
        return self._auth_header

    async def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=False)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> BitcoinRpc:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- one request ----------------------------------------------------------------------------
    async def _request_once(
        self, method: str, params: list[Any], wallet: str | None, timeout: float | None
    ) -> Any:
        url = f"{self._url}/wallet/{wallet}" if wallet is not None else self._url
        payload = {"jsonrpc": "1.0", "id": next(self._ids), "method": method, "params": params}
        session = await self._get_session()
        for attempt in range(2):
            headers = {"Authorization": self._load_auth(reload=attempt > 0)}
            try:
                async with session.post(
                    url,
                    data=json.dumps(payload),
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=timeout),
                ) as resp:
                    if resp.status in (401, 403):
                        if attempt == 0 and self._cookie_file is not None and self._user is None:
                            continue  # bitcoind may have restarted with a new cookie
                        raise RpcAuthError(
                            f"bitcoind at {self.display_url} rejected the RPC credentials "
                            f"(HTTP {resp.status}); check the rpc user/password or cookie file",
                            resp.status,
                        )
                    body = await resp.read()
            except TimeoutError as exc:  # before ClientConnectionError: a read timeout is both
                raise RpcTimeout(
                    f"bitcoind at {self.display_url} did not answer {method} within {timeout} s"
                ) from exc
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                raise RpcUnavailable(
                    f"bitcoind at {self.display_url} unreachable: {type(exc).__name__}: "
                    f"{_describe(exc)}"
                ) from exc
            return self._decode(method, resp.status, body)
        raise AssertionError("unreachable")

    def _decode(self, method: str, status: int, body: bytes) -> Any:
        try:
            reply = json.loads(body)
        except ValueError as exc:
            if status == 503 or status >= 500:
                raise RpcUnavailable(
                    f"bitcoind at {self.display_url} answered HTTP {status} to {method}"
                ) from exc
            raise RpcRefused(method, status, f"HTTP {status}: not JSON") from exc
        if not isinstance(reply, dict):
            raise RpcRefused(method, status, "reply is not a JSON object")
        error = reply.get("error")
        if error:
            code = int(error.get("code", 0)) if isinstance(error, dict) else 0
            message = str(error.get("message", error)) if isinstance(error, dict) else str(error)
            if code == RPC_IN_WARMUP:
                raise RpcUnavailable(f"bitcoind at {self.display_url} is warming up: {message}")
            raise RpcRefused(method, code, message)
        return reply.get("result")

    # -- public ------------------------------------------------------------------------------------
    async def call(
        self,
        method: str,
        *params: Any,
        wallet: str | None = None,
        timeout: float | None = None,
        retry: bool = True,
        quiet_timeout: bool = False,
    ) -> Any:
        """Call ``method``; retries RpcUnavailable per the policy when ``retry`` is true.
        ``quiet_timeout``: a timeout is expected (a long-poll on a quiet chain): ``RpcTimeout``
        is raised at once, neither logged nor counted as an error."""
        delay = self.retry.first_delay
        eff_timeout = self._timeout if timeout is None else timeout
        while True:
            start = time.monotonic()
            try:
                async with self._sem:
                    result = await self._request_once(method, list(params), wallet, eff_timeout)
            except RpcUnavailable as exc:
                if quiet_timeout and isinstance(exc, RpcTimeout):
                    raise
                self.errors["unavailable"] += 1
                self._up.clear()
                now = time.monotonic()
                if self._failing_since is None:
                    self._failing_since = now
                if now - self._last_failure_log >= self.retry.log_every:
                    self._last_failure_log = now
                    log.warning("bitcoind_unavailable", url=self.display_url, error=str(exc))
                give_up = self.retry.give_up_after
                if not retry or (give_up is not None and now - self._failing_since >= give_up):
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry.max_delay)
                continue
            except RpcRefused:
                self.errors["refused"] += 1
                self._note_success()
                raise
            except RpcAuthError:
                self.errors["auth"] += 1
                raise
            self.calls += 1
            self.latency_total += time.monotonic() - start
            self._note_success()
            return result

    @property
    def available(self) -> bool:
        """False from a failed call (unreachable, timed out) until the next one that succeeds."""
        return self._up.is_set()

    async def wait_available(self, timeout: float) -> bool:
        """Wait until a call succeeds (at once if the last one did), at most ``timeout``
        seconds. Returns whether bitcoind is available."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._up.wait()
        return self._up.is_set()

    def _note_success(self) -> None:
        self._up.set()
        if self._failing_since is not None:
            down = time.monotonic() - self._failing_since
            log.info("bitcoind_restored", url=self.display_url, down_seconds=round(down, 1))
            self._failing_since = None
            self._last_failure_log = 0.0


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.replace("\n", " ")
