"""The HTTP API's edges: errors as JSON without tracebacks, bounded log lines, the Host check.

aiohttp's low-level server answers a request it cannot parse (an 8 KB URL, a header too long,
garbage) with a plain-text 400 and logs it on its own ``aiohttp.server`` logger with the
traceback (which, with nothing configured for the standard ``logging``, goes to stderr as
plain text in the middle of the JSON log). Here the protocol's ``handle_error`` answers JSON
(``{"error": ..., "status": ...}``, the status saying what was too long: 414 for the request
line, 431 for a header) and the logger aiohttp is given writes one structured line without
traceback, at most ``LOG_BURST`` lines per ``LOG_WINDOW_SECONDS`` per event (the next line
says how many were left out).

The Host check defends against DNS rebinding (a web page whose name is made to point at this
machine, reading the API from the victim's browser): a request whose ``Host`` is not one of
``allowed_hosts`` gets 421 (Misdirected Request). See ``allowed_hosts`` for the default.
"""

from __future__ import annotations

import ipaddress
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler

from pool.config import ApiConfig

log = structlog.get_logger("pool.api")

LOG_BURST = 10  # lines per event and window; the rest are counted
LOG_WINDOW_SECONDS = 10.0
CLIP_CHARS = 160  # echoed client input (a URL, a Host, a parser message) is cut to this
ANY_HOST = "*"
WILDCARD_BINDS = ("", "0.0.0.0", "::")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def clip(text: object, limit: int = CLIP_CHARS) -> str:
    """``text`` as a string of at most ``limit`` characters (the cut is marked)."""
    s = str(text)
    return s if len(s) <= limit else f"{s[:limit]}...(+{len(s) - limit} chars)"


class RateLimitedLog:
    """At most ``burst`` lines per event per ``window`` seconds; the first line of the next
    window carries ``suppressed=N``, the lines left out of the previous ones."""

    def __init__(
        self,
        *,
        burst: int = LOG_BURST,
        window: float = LOG_WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.window = window
        self.clock = clock
        self._state: dict[str, list[float]] = {}  # event -> [window start, lines, suppressed]

    def __call__(self, level: str, event: str, **fields: Any) -> bool:
        """Log ``event`` at ``level`` unless over the limit; returns whether it was logged."""
        now = self.clock()
        state = self._state.setdefault(event, [now, 0, 0])
        if now - state[0] >= self.window:
            state[0], state[1] = now, 0
        if state[1] >= self.burst:
            state[2] += 1
            return False
        state[1] += 1
        if state[2]:
            fields["suppressed"] = int(state[2])
            state[2] = 0
        getattr(log, level)(event, **fields)
        return True


def _error_fields(exc_info: object) -> dict[str, str]:
    if isinstance(exc_info, BaseException):
        return {"error": type(exc_info).__name__, "detail": clip(exc_info)}
    return {}


class AiohttpLog:
    """Stands in for aiohttp's server logger (``RequestHandler(logger=...)``): every message is
    one structured line without a traceback, rate-limited; debug messages are dropped."""

    def __init__(self, limiter: RateLimitedLog) -> None:
        self.limiter = limiter

    def _emit(self, level: str, msg: object, args: tuple[Any, ...], kw: dict[str, Any]) -> None:
        try:
            text = str(msg) % args if args else str(msg)
        except (TypeError, ValueError):
            text = str(msg)
        self.limiter(
            level, "http_server_error", message=clip(text), **_error_fields(kw.get("exc_info"))
        )

    def debug(self, msg: object, *args: Any, **kw: Any) -> None:
        pass

    def info(self, msg: object, *args: Any, **kw: Any) -> None:
        self._emit("info", msg, args, kw)

    def warning(self, msg: object, *args: Any, **kw: Any) -> None:
        self._emit("warning", msg, args, kw)

    def error(self, msg: object, *args: Any, **kw: Any) -> None:
        self._emit("error", msg, args, kw)

    exception = error

    def isEnabledFor(self, level: int) -> bool:
        return level > 10


def _status_for(status: int, exc: BaseException | None) -> int:
    """414 for a request line too long (the parser's excerpt of it is a URL), 431 for a header
    too long; else aiohttp's own status."""
    if isinstance(exc, LineTooLong):
        line = exc.args[0] if exc.args else b""
        head = bytes(line) if isinstance(line, bytes | bytearray) else str(line).encode()
        return 414 if head.startswith((b"/", b"http:", b"https:", b"*")) else 431
    return status


class JsonErrorHandler(RequestHandler):
    """aiohttp's protocol, but a request it cannot parse (or an error that escaped the
    application) is answered with a JSON error and logged as one line."""

    limiter: RateLimitedLog | None = None

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        status = _status_for(status, exc)
        fields = {"status": status, "peer": request.remote, **_error_fields(exc)}
        if self.limiter is not None:
            level = "warning" if status < 500 else "error"
            self.limiter(level, "http_bad_request" if status < 500 else "http_error", **fields)
        if request.writer.output_size > 0:
            raise ConnectionError("the response was already being sent: the connection is closed")
        if status >= 500:
            error = "internal error: the pool's log has the details"
        elif status == 414:
            error = (
                f"the request line is too long (api.max_request_line_bytes: {self.max_line_size})"
            )
        elif status == 431:
            error = f"a request header is too long (api.max_header_bytes: {self.max_field_size})"
        else:
            error = f"bad request: {clip(message or exc or 'unparsable')}"
        resp = web.json_response({"error": error, "status": status}, status=status)
        resp.force_close()
        return resp


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        handler = JsonErrorHandler(self, loop=self._loop, **self._kwargs)
        handler.limiter = self.limiter
        return handler

    limiter: RateLimitedLog | None = None


class GuardedRunner(web.AppRunner):
    """``web.AppRunner`` whose connections use ``JsonErrorHandler``."""

    def __init__(self, app: web.Application, limiter: RateLimitedLog, **kwargs: Any) -> None:
        super().__init__(app, logger=AiohttpLog(limiter), **kwargs)
        self.limiter = limiter

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer  # adds no state: only the protocol it makes
        assert isinstance(server, _JsonErrorServer)
        server.limiter = self.limiter
        return server


def where(exc: BaseException) -> str:
    """``file.py:line in function`` of the innermost frame of ``exc`` (a log line's pointer
    to the fault, instead of the whole traceback)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]
    return f"{Path(last.filename).name}:{last.lineno} in {last.name}"


# -- Host check ---------------------------------------------------------------------------------


def normal_host(name: str) -> str:
    """A host as compared: lower case, no trailing dot, IPv6 in brackets."""
    name = name.strip().lower().rstrip(".")
    if not name.startswith("["):
        try:
            if ipaddress.ip_address(name).version == 6:
                return f"[{name}]"
        except ValueError:
            pass
    return name


def host_of(header: str) -> str:
    """The host part of a ``Host`` header (``name``, ``name:port``, ``[v6]:port``)."""
    h = header.strip().lower()
    if h.startswith("["):
        end = h.find("]")
        return h[: end + 1] if end > 0 else h
    return h.split(":", 1)[0].rstrip(".")


def allowed_hosts(api: ApiConfig) -> frozenset[str] | None:
    """The hosts the API answers to; None: any.

    ``api.allowed_hosts`` when set ("*" in it: any). Empty (the default): bound to a wildcard
    address (0.0.0.0, ::), any host (the pool is meant to be reached by names it cannot know;
    set the list to check them); bound to a given address, that address plus localhost,
    127.0.0.1 and [::1]."""
    if api.allowed_hosts:
        if ANY_HOST in api.allowed_hosts:
            return None
        return frozenset(normal_host(h) for h in api.allowed_hosts)
    if api.host in WILDCARD_BINDS:
        return None
    return frozenset({*LOOPBACK_NAMES, normal_host(api.host)})


def host_refusal(header: str | None, allowed: frozenset[str] | None) -> str | None:
    """None when a request with this ``Host`` header may be served, else why not. A request
    without one is served: a browser always sends it, so DNS rebinding cannot omit it."""
    if allowed is None or header is None or host_of(header) in allowed:
        return None
    return (
        f"the Host {clip(header, 100)!r} is not served here: the API answers to "
        f"{', '.join(sorted(allowed))} (api.allowed_hosts)"
    )
