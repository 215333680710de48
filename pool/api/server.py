"""The HTTP API, /metrics, /healthz and the dashboard (aiohttp).

Read-only, except the admin endpoints (POST, ``Authorization: Bearer <token>``). The token is
read at start from the environment variable named by ``api.admin_token_env``; when that is
unset or empty the admin endpoints are off and answer 403 saying so. Every error is a JSON
object ``{"error": message, "status": code, ...}``, also for requests aiohttp cannot parse and
for faults of the pool itself (500, no traceback to the client, one log line); see
``pool.api.guard`` for those and for the Host check (``api.allowed_hosts``, 421).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import json
import os
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from pool.api import guard, webhook_routes
from pool.api.admin_bans import BanRoutes
from pool.api.admin_message import send_message
from pool.api.body import json_body
from pool.api.collect import WorkerRanking, collect
from pool.api.metrics import CONTENT_TYPE, render
from pool.api.views import CACHE_SECONDS, ApiError, Views
from pool.node.rpc import RpcError

if TYPE_CHECKING:
    from pool.api.source import PoolSource
    from pool.tasks import TaskState

log = structlog.get_logger("pool.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HEALTH_RPC_TIMEOUT = 2.0  # seconds for the health check's getblockcount
SAMPLE_SECONDS = 5.0  # the live pool hashrate is sampled this often for the chart
SAMPLE_KEEP_SECONDS = 3600.0
MAX_LIMIT = 1000
WORKERS_PAGE = 100  # workers per page by default (GET /api/workers, /api/addresses/{a})
RENDER_CHUNK = 50  # workers rendered per turn of the event loop (miners are served between)
RENDERS_AT_ONCE = 2  # worker lists rendered concurrently; more requests wait their turn
PAGE_CACHE_ENTRIES = 256  # rendered /api/workers pages kept (for cache_seconds)
MAX_HISTORY_MINUTES = 7 * 24 * 60
MAX_RECONNECT_WAIT = 3600
DASHBOARD_HEADERS = {
    # Everything the page needs is inline or from this server: no CDN can sneak in.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def dashboard_html() -> bytes:
    """The dashboard page, package data of ``pool.api`` (found when installed too)."""
    page = resources.files("pool.api") / "static" / "index.html"
    try:
        return page.read_bytes()
    except OSError as exc:
        raise RuntimeError(
            f"the dashboard page {page} is missing: the package was installed without its "
            "data files (pyproject: [tool.setuptools.package-data])"
        ) from exc


class ApiServer:
    def __init__(
        self,
        app: PoolSource,
        *,
        sample_seconds: float = SAMPLE_SECONDS,
        cache_seconds: float = CACHE_SECONDS,
    ) -> None:
        """``cache_seconds``: how long a rendered /metrics text, a rendered /api/workers page
        and the worker directory are served again (a polling storm costs one render per page
        per period); 0 renders every request afresh."""
        self.app = app
        self.cache_seconds = cache_seconds
        self.views = Views(app, cache_seconds=cache_seconds)
        self.sample_seconds = sample_seconds
        self.samples: collections.deque[tuple[float, float]] = collections.deque(
            maxlen=max(1, int(SAMPLE_KEEP_SECONDS / sample_seconds))
        )
        self.port: int | None = None
        self._token = ""
        self._runner: web.AppRunner | None = None
        self._sampler: asyncio.Task[None] | None = None
        self._page = b""
        self._ranking = WorkerRanking()
        self._metrics: tuple[float, bytes] | None = None  # (monotonic time, rendered text)
        self._pages: dict[tuple[int, int], tuple[float, object, bytes]] = {}
        self._renders = asyncio.Semaphore(RENDERS_AT_ONCE)
        self._allowed_hosts = guard.allowed_hosts(app.config.api)
        self._limited_log = guard.RateLimitedLog()

    # -- lifecycle --------------------------------------------------------------------------------
    def build(self) -> web.Application:
        web_app = web.Application(
            middlewares=[self._errors], client_max_size=self.app.config.api.max_body_bytes
        )
        r = web_app.router
        r.add_get("/", self.dashboard)
        r.add_get("/address/{address}", self.dashboard)
        r.add_get("/api/pool", self.get_pool)
        r.add_get("/api/pool/history", self.get_history)
        r.add_get("/api/workers", self.get_workers)
        r.add_get("/api/workers/{name}", self.get_worker)
        r.add_get("/api/addresses/{address}", self.get_address)
        r.add_get("/api/blocks", self.get_blocks)
        r.add_get("/api/payouts", self.get_payouts)
        r.add_get("/healthz", self.healthz)
        r.add_get("/metrics", self.metrics)
        bans = BanRoutes(self.views, lambda: self.app.shared_bans)
        r.add_get("/api/admin/bans", self.admin(bans.get_bans))
        r.add_post("/api/admin/ban", self.admin(bans.post_ban))
        r.add_post("/api/admin/unban", self.admin(bans.post_unban))
        r.add_post("/api/admin/reconnect", self.admin(self.post_reconnect))
        r.add_post("/api/admin/payout", self.admin(self.post_payout))
        r.add_post("/api/admin/message", self.admin(self.post_message))
        webhook_routes.add(r, self)
        return web_app

    async def start(self) -> int:
        """Listen on ``api.host:api.port`` (0: a free port); returns the bound port."""
        cfg = self.app.config.api
        self._token = os.environ.get(cfg.admin_token_env, "")
        self._page = dashboard_html()
        self._runner = guard.GuardedRunner(
            self.build(),
            self._limited_log,
            access_log=None,
            shutdown_timeout=2.0,
            max_line_size=cfg.max_request_line_bytes,
            max_field_size=cfg.max_header_bytes,
            max_headers=cfg.max_headers,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, cfg.host, cfg.port, reuse_address=True)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self._sampler = asyncio.create_task(self._sample_loop(), name="api-hashrate-sampler")
        log.info(
            "api_listening",
            host=cfg.host,
            port=self.port,
            url=f"http://{cfg.host}:{self.port}/",
            admin="on" if self._token else f"off ({cfg.admin_token_env} not set)",
            allowed_hosts="any" if self._allowed_hosts is None else sorted(self._allowed_hosts),
        )
        return self.port

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            log.info("api_stopped")

    async def _sample_loop(self) -> None:
        while True:
            server = self.app.server
            if server is not None:
                now = time.time()
                self.samples.append((now, server.hashrate.pool.hashrate(60, now)))
            await asyncio.sleep(self.sample_seconds)

    # -- plumbing ---------------------------------------------------------------------------------
    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            refusal = guard.host_refusal(request.headers.get("Host"), self._allowed_hosts)
            if refusal is not None:
                self._limited_log(
                    "warning",
                    "api_host_refused",
                    host=guard.clip(request.headers.get("Host"), 100),
                    peer=request.remote,
                )
                raise ApiError(421, refusal)
            return await handler(request)
        except ApiError as exc:
            return web.json_response(exc.body(), status=exc.status, headers=exc.headers)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            what = guard.clip(f"{request.method} {request.path}", 200)
            message = {
                404: f"no such endpoint: {what}",
                405: f"method not allowed: {what}",
                413: "the body is longer than api.max_body_bytes "
                f"({self.app.config.api.max_body_bytes} bytes)",
            }
            return web.json_response(
                {"error": message.get(exc.status, exc.reason), "status": exc.status},
                status=exc.status,
                headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"},
            )
        except Exception as exc:  # a bug or a broken store: say so (one line), keep serving
            self._limited_log(
                "error",
                "api_error",
                path=guard.clip(request.path, 200),
                error=type(exc).__name__,
                detail=guard.clip(exc),
                where=guard.where(exc),
            )
            return web.json_response(
                {
                    "error": f"internal error ({type(exc).__name__}): the pool's log has the "
                    "details (event api_error)",
                    "status": 500,
                },
                status=500,
            )

    def admin(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            env = self.app.config.api.admin_token_env
            if not self._token:
                raise ApiError(
                    403,
                    f"admin endpoints are off: the environment variable {env} "
                    "(api.admin_token_env) holding the admin token was not set at start",
                )
            scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
            ok = scheme.lower() == "bearer" and hmac.compare_digest(
                presented.strip().encode(), self._token.encode()
            )
            if not ok:
                self._limited_log(
                    "warning",
                    "api_admin_refused",
                    path=guard.clip(request.path),
                    peer=request.remote,
                )
                raise ApiError(
                    401,
                    "admin endpoints need the header 'Authorization: Bearer <token>' "
                    f"with the token from {env}",
                    headers={"WWW-Authenticate": 'Bearer realm="stratum-pool"'},
                )
            return await handler(request)

        return guarded

    # -- dashboard --------------------------------------------------------------------------------
    async def dashboard(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self._page,
            content_type="text/html",
            charset="utf-8",
            headers=DASHBOARD_HEADERS,
        )

    # -- read-only API ----------------------------------------------------------------------------
    async def get_pool(self, request: web.Request) -> web.Response:
        return web.json_response(self.views.pool(time.time()))

    async def get_history(self, request: web.Request) -> web.Response:
        q = request.query
        minutes = _int_param(request, "minutes", 60, 1, MAX_HISTORY_MINUTES)
        worker, address = q.get("worker"), q.get("address")
        if worker is not None and address is not None:
            raise ApiError(400, "give worker or address, not both")
        return web.json_response(
            await self.views.history(
                time.time(), minutes, worker=worker, address=address, samples=list(self.samples)
            )
        )

    def _fresh(self, at: float) -> bool:
        return 0.0 <= time.monotonic() - at < self.cache_seconds

    async def get_workers(self, request: web.Request) -> web.Response:
        """One page of the known workers in name order: ``?limit=`` (default 100, at most
        1000) from ``&offset=``; the answer says the total and the next offset. A page is
        rendered at most once per ``cache_seconds`` (while the worker directory stands)."""
        limit = _int_param(request, "limit", WORKERS_PAGE, 1, MAX_LIMIT)
        offset = _int_param(request, "offset", 0, 0, 1 << 62)
        directory = self.views.directory(self.views.parts())
        cached = self._pages.get((offset, limit))
        if cached is not None and cached[1] is directory and self._fresh(cached[0]):
            return _json_bytes(cached[2])
        now = time.time()
        head, names = self.views.workers_page(offset, limit)
        body = await self._render_workers({"time": now, **head}, names, now)
        if self.cache_seconds > 0:
            if len(self._pages) >= PAGE_CACHE_ENTRIES:
                self._pages.clear()
            self._pages[(offset, limit)] = (time.monotonic(), directory, body)
        return _json_bytes(body)

    async def _render_workers(self, head: dict[str, Any], names: list[str], now: float) -> bytes:
        """``head`` with ``"workers": [...]`` for ``names``, rendered and encoded
        ``RENDER_CHUNK`` workers per turn of the loop, at most ``RENDERS_AT_ONCE`` lists at a
        time: however many clients ask, a turn of the loop spends a few ms on them."""
        parts: list[str] = []
        async with self._renders:
            for start in range(0, len(names), RENDER_CHUNK):
                if start:
                    await asyncio.sleep(0)
                chunk = json.dumps(self.views.workers(now, names[start : start + RENDER_CHUNK]))
                parts.append(chunk[1:-1])
        return (json.dumps(head)[:-1] + ', "workers": [' + ", ".join(parts) + "]}").encode()

    async def get_worker(self, request: web.Request) -> web.Response:
        now = time.time()
        worker = self.views.worker(request.match_info["name"], now)
        return web.json_response({"time": now, **worker})

    async def get_address(self, request: web.Request) -> web.Response:
        """An address: its balance, payouts, hashrate and a page of its workers (``?limit=``,
        ``&offset=`` as for /api/workers)."""
        limit = _int_param(request, "limit", WORKERS_PAGE, 1, MAX_LIMIT)
        offset = _int_param(request, "offset", 0, 0, 1 << 62)
        now = time.time()
        head, names = await self.views.address(request.match_info["address"], now, offset, limit)
        return _json_bytes(await self._render_workers(head, names, now))

    async def get_blocks(self, request: web.Request) -> web.Response:
        limit = _int_param(request, "limit", 50, 1, MAX_LIMIT)
        return web.json_response({"time": time.time(), **self.views.blocks(limit)})

    async def get_payouts(self, request: web.Request) -> web.Response:
        limit = _int_param(request, "limit", 50, 1, MAX_LIMIT)
        address = request.query.get("address")
        return web.json_response(
            {"time": time.time(), **(await self.views.payouts(limit, address))}
        )

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text, rendered at most once per ``cache_seconds``."""
        cached = self._metrics
        if cached is None or not self._fresh(cached[0]):
            text = render(collect(self.app, self.views, time.time(), self._ranking))
            cached = self._metrics = (time.monotonic(), text.encode())
        return web.Response(body=cached[1], headers={"Content-Type": CONTENT_TYPE})

    async def healthz(self, request: web.Request) -> web.Response:
        """200 only when bitcoind answers, a current job exists and the watcher runs."""
        body = await self.health_report()
        return web.json_response(body, status=200 if not body["reasons"] else 503)

    async def health_report(self) -> dict[str, Any]:
        """The /healthz body (the webhooks' pool_degraded / pool_healthy use it too)."""
        app = self.app
        reasons: list[str] = []
        checks: dict[str, Any] = {}
        checks["bitcoind"] = await self._check_bitcoind(reasons)
        server = app.server
        job = server.jobs.current if server is not None else None
        now = time.time()
        if job is None:
            reasons.append("no current job: no block template from bitcoind yet")
            checks["job"] = {"ok": False}
        else:
            age = now - job.created_at
            limit = 3 * app.config.node.template_refresh_seconds + 10
            stale = age > limit
            if stale:
                reasons.append(
                    f"the current job is {age:.0f} s old (a fresh one is due every "
                    f"{app.config.node.template_refresh_seconds:g} s)"
                )
            checks["job"] = {
                "ok": not stale,
                "job_id": job.job_id,
                "height": job.height,
                "age_seconds": round(age, 3),
            }
        tasks = getattr(app, "tasks", None)
        task = app.watcher_task
        alive = task is not None and not task.done()
        if not alive:
            why = _task_end(task, tasks.states.get("template-watcher") if tasks else None)
            reasons.append(f"the template watcher is not running ({why})")
        checks["template_watcher"] = {"ok": alive}
        if tasks is not None:
            for state in tasks.down():
                if state.name != "template-watcher":
                    reasons.append(
                        f"the task {state.name} is not running ({_task_end(None, state)})"
                    )
            checks["tasks"] = tasks.report()
        ledger = app.ledger
        if ledger is None:
            checks["ledger"] = {"ok": False}
            reasons.append("the ledger is not open")
        else:
            checks["ledger"] = ledger.health()
            if ledger.degraded is not None:
                reasons.append(f"ledger degraded: {ledger.degraded} (retried with backoff)")
            if ledger.unrecorded:
                reasons.append(
                    f"{len(ledger.unrecorded)} found block(s) not yet recorded (retried)"
                )
        return {
            "status": "ok" if not reasons else "unhealthy",
            "reasons": reasons,
            "checks": checks,
            "time": now,
        }

    async def _check_bitcoind(self, reasons: list[str]) -> dict[str, Any]:
        rpc = self.app.rpc
        if rpc is None:
            reasons.append("bitcoind: not connected")
            return {"ok": False}
        start = time.monotonic()
        try:
            height = await asyncio.wait_for(
                rpc.call("getblockcount", timeout=HEALTH_RPC_TIMEOUT, retry=False),
                HEALTH_RPC_TIMEOUT + 1,
            )
        except (RpcError, TimeoutError) as exc:
            # the class and a reason only: never the RPC URL or any other internal address
            why = _rpc_reason(exc)
            reasons.append(f"bitcoind does not answer: {why}")
            return {"ok": False, "error": type(exc).__name__, "reason": why}
        return {"ok": True, "height": height, "seconds": round(time.monotonic() - start, 4)}

    # -- admin ------------------------------------------------------------------------------------
    async def post_reconnect(self, request: web.Request) -> web.Response:
        """client.reconnect (to this same pool, after ``wait`` seconds) to every miner, then
        close the connection (miners that ignore the message reconnect too)."""
        body = await json_body(request)
        wait = body.get("wait", 0)
        if type(wait) is not int or not 0 <= wait <= MAX_RECONNECT_WAIT:
            raise ApiError(400, f"wait must be a whole number of seconds 0..{MAX_RECONNECT_WAIT}")
        server = self.views.parts().server
        count = server.reconnect_all(wait)
        log.warning("api_reconnect_all", connections=count, wait=wait)
        return web.json_response({"reconnected": count, "wait": wait})

    async def post_message(self, request: web.Request) -> web.Response:
        """client.show_message to one worker's connections or all (see admin_message)."""
        limit = self.app.config.api.max_message_chars
        body = await json_body(request)
        return web.json_response(send_message(self.views, body, limit, request.remote))

    async def post_payout(self, request: web.Request) -> web.Response:
        log.warning("api_payout_round", peer=request.remote)
        try:
            result = await self.app.run_payout_round()
        except RpcError as exc:
            raise ApiError(502, f"the payout round failed: {exc}") from exc
        return web.json_response(result.to_dict())


def _json_bytes(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")


def _task_end(task: asyncio.Task[None] | None, state: TaskState | None = None) -> str:
    if state is not None and not state.running and state.last_error is not None:
        retry = f", restarting in {state.retry_in:g} s" if state.retry_in is not None else ""
        return f"died: {state.last_error}{retry}; restarts: {state.restarts}"
    if task is None:
        return "not started"
    if task.cancelled():
        return "cancelled"
    error = task.exception()
    return f"died: {error!r}" if error is not None else "finished"


_RPC_REASONS = {
    "RpcUnavailable": "unreachable or not ready",
    "RpcAuthError": "credentials refused",
    "RpcRefused": "refused the call",
    "TimeoutError": f"no answer within {HEALTH_RPC_TIMEOUT:g} s",
}


def _rpc_reason(exc: BaseException) -> str:
    """Why bitcoind failed, without its address: the error class and a fixed reason."""
    name = type(exc).__name__
    return f"{name}: {_RPC_REASONS.get(name, 'RPC error')}"


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be a whole number, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ApiError(400, f"{name} must be {lo}..{hi}, got {value}")
    return value
