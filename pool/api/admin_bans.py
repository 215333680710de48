"""GET /api/admin/bans, POST /api/admin/ban and /api/admin/unban.

The operator's bans (IPs and workers, kept in ``bans.json``) and the temporary IP bans the
pool's abuse guard gave by itself. With a shared store (several processes or instances) the
bans also travel through the store (pool/server/shared_bans.py): an unban of a ban this
process has not read yet (made elsewhere less than ``ledger.shared_refresh_seconds`` ago)
first catches up with the store, so it is found and lifted everywhere instead of a 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from pool.api.body import json_body
from pool.api.views import ApiError, Views
from pool.server.bans import save_bans

if TYPE_CHECKING:
    from pool.server.server import StratumServer
    from pool.server.shared_bans import SharedBans

log = structlog.get_logger("pool.api")


class BanRoutes:
    def __init__(self, views: Views, shared: Callable[[], SharedBans | None]) -> None:
        self.views = views
        self.shared = shared  # the pool's shared bans (None: not a shared store)

    def bans(self) -> dict[str, Any]:
        """The operator's bans (kept in bans.json) and the temporary IP bans the pool gave
        abusers by itself (ending by themselves)."""
        server = self.views.parts().server
        now = time.time()
        temporary = [
            {
                "ip": ban.ip,
                "until": ban.until,
                "seconds_left": round(max(0.0, ban.until - now), 1),
                "ban_seconds": ban.seconds,
                "bans": ban.bans,
                "reason": ban.reason,
            }
            for ban in server.temp_bans()
        ]
        return {
            "ips": sorted(server.banned_ips),
            "workers": sorted(server.banned_workers),
            "temporary": temporary,
        }

    async def get_bans(self, request: web.Request) -> web.Response:
        return web.json_response(self.bans())

    async def _target(self, request: web.Request) -> tuple[str, str]:
        body = await json_body(request)
        given = {k: body[k] for k in ("ip", "worker") if k in body}
        unknown = set(body) - {"ip", "worker"}
        if unknown or len(given) != 1:
            raise ApiError(
                400, 'the body must be {"ip": "<address>"} or {"worker": "<ADDRESS[.worker]>"}'
            )
        kind, value = next(iter(given.items()))
        if not isinstance(value, str):
            raise ApiError(400, f"{kind} must be a string")
        if kind == "ip":
            try:
                return kind, str(ipaddress.ip_address(value.strip()))
            except ValueError:
                raise ApiError(400, f"{value!r} is not an IP address", ip=value) from None
        return kind, self.views.check_worker(value)

    async def post_ban(self, request: web.Request) -> web.Response:
        kind, value = await self._target(request)
        server = self.views.parts().server
        (server.banned_ips if kind == "ip" else server.banned_workers).add(value)
        dropped = server.drop_banned()
        log.warning("api_ban", kind=kind, value=value, dropped=dropped, peer=request.remote)
        await self._save(server, f"the ban of {kind} {value} is in force")
        return web.json_response({"banned": {kind: value}, "dropped": dropped, **self.bans()})

    async def _save(self, server: StratumServer, done: str) -> None:
        """Save the bans as they are now; saves run one at a time and each writes the state
        at its own turn, so the file always ends with the latest list."""
        if server.bans_path is None:
            return
        try:
            async with server.bans_lock:
                await asyncio.to_thread(save_bans, server.bans_path, server.bans_snapshot())
        except OSError as exc:
            log.error("bans_not_saved", path=str(server.bans_path), error=repr(exc))
            raise ApiError(
                500,
                f"{done} but could not be saved to {server.bans_path} ({exc}): "
                "it will not survive a restart",
            ) from exc

    async def post_unban(self, request: web.Request) -> web.Response:
        kind, value = await self._target(request)
        server = self.views.parts().server
        bans = server.banned_ips if kind == "ip" else server.banned_workers
        lifted = kind == "ip" and server.lift_temp_ban(value)  # the pool's own temporary ban
        shared = self.shared()
        if value not in bans and not lifted and shared is not None:
            # made elsewhere and not read here yet? (a store that fails: answered as before)
            with contextlib.suppress(Exception):  # a hung store: answered within a bound
                await asyncio.wait_for(shared.catch_up(), 2 * shared.refresh + 5)
            lifted = kind == "ip" and server.lift_temp_ban(value)
        if value not in bans and not lifted:
            raise ApiError(404, f"{kind} {value} is not banned", target={kind: value})
        bans.discard(value)
        log.warning("api_unban", kind=kind, value=value, temporary=lifted, peer=request.remote)
        await self._save(server, f"the unban of {kind} {value} is in force")
        return web.json_response({"unbanned": {kind: value}, **self.bans()})
