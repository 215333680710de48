"""Two processes' shared bans (pool/server/shared_bans.py) on one real store file: each with
its own store thread and its own (not listening) StratumServer, synced round by round."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from pool.api.admin_bans import BanRoutes
from pool.api.views import ApiError, Views
from pool.bitcoin import network_for_chain
from pool.config import Config, PoolConfig
from pool.ledger.store import Store
from pool.ledger.store_thread import StoreThread
from pool.server.bans import Bans
from pool.server.server import StratumServer
from pool.server.shared_bans import SharedBans


async def no_blocks(_: object) -> Any:
    raise AssertionError("no block expected")


def no_records(_: dict[str, Any]) -> Any:
    raise AssertionError("no share expected")


class Process:
    def __init__(self, tmp_path: Path, name: str) -> None:
        config = Config(pool=PoolConfig(data_dir=str(tmp_path / name)))
        (tmp_path / name).mkdir(parents=True, exist_ok=True)
        self.server = StratumServer(config, network_for_chain("regtest"), submit_block=no_blocks)
        self.store = StoreThread(tmp_path / "ledger.sqlite3", no_records, name)
        self.bans = SharedBans(self.store, self.server, 0.1, f"process {name}")

    async def start(self, file_bans: Bans | None = None) -> None:
        await self.store.open()
        self.server.use_bans(
            Path(self.server.config.pool.data_dir) / "bans.json", file_bans or Bans()
        )
        await self.bans.load()


async def test_operator_and_temporary_bans_reach_the_other_process(tmp_path: Path) -> None:
    a, b = Process(tmp_path, "w0"), Process(tmp_path, "w1")
    await a.start(Bans({"10.0.0.1"}, {"addr.rig1"}))  # its bans.json: written to the table
    await b.start()
    assert b.server.banned_ips == {"10.0.0.1"} and b.server.banned_workers == {"addr.rig1"}

    a.server.banned_ips.add("10.0.0.2")  # as the admin API does
    a.server.banned_workers.discard("addr.rig1")
    await a.bans.sync()
    assert await b.bans.sync() == 2
    assert b.server.banned_ips == {"10.0.0.1", "10.0.0.2"} and not b.server.banned_workers

    # a temporary ban b's guard gives (its own strikes) is installed in a's guard
    now = time.time()
    for _ in range(3):
        ban = b.server.ctx.guard.strike("10.0.0.9", now, "invalid-share flood")
    assert ban is not None
    await b.bans.sync()
    await a.bans.sync()
    installed = a.server.ctx.guard.banned("10.0.0.9", time.time())
    assert installed is not None and installed.until == ban.until
    # the operator's unban on a (the API: lift_temp_ban, discard) lifts it on b too
    assert a.server.lift_temp_ban("10.0.0.9")
    a.server.banned_ips.discard("10.0.0.1")
    await a.bans.sync()
    await b.bans.sync()
    assert b.server.ctx.guard.banned("10.0.0.9", time.time()) is None
    assert b.server.banned_ips == {"10.0.0.2"}

    # a change made here and not yet written is not undone by an older row read meanwhile
    b.server.banned_ips.add("10.0.0.1")  # b bans it again; a's lift row is older
    b.bans.seq = 0  # (b reads every row again, the lift among them)
    b.bans.apply(await b.store.run(Store.bans_since, 0), time.time())
    assert "10.0.0.1" in b.server.banned_ips
    await b.bans.sync()
    await a.bans.sync()
    assert a.server.banned_ips == {"10.0.0.1", "10.0.0.2"}  # the later change won

    # a restart of a with a stale bans.json: the table wins (rig1 stays lifted), the
    # temporary ban it never had in memory comes back from the table
    now = time.time()
    for _ in range(3):
        ban = b.server.ctx.guard.strike("10.0.0.8", now, "invalid-share flood")
    await b.bans.sync()
    await a.store.close()
    c = Process(tmp_path, "w0")
    await c.start(Bans({"10.0.0.2"}, {"addr.rig1"}))
    assert c.server.banned_workers == set() and c.server.banned_ips == {"10.0.0.1", "10.0.0.2"}
    assert c.server.ctx.guard.banned("10.0.0.8", time.time()) is not None
    await c.store.close()
    await b.store.close()


@contextlib.asynccontextmanager
async def admin(routes: BanRoutes) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """The unban route over real HTTP (aiohttp's test server), ApiError as its status."""

    @web.middleware
    async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)  # type: ignore[no-any-return]
        except ApiError as exc:
            return web.json_response(exc.body(), status=exc.status)

    app = web.Application(middlewares=[errors])
    app.router.add_post("/api/admin/unban", routes.post_unban)
    async with TestClient(TestServer(app)) as client:
        yield client


async def test_an_unban_of_a_temporary_ban_not_read_here_yet_catches_up(tmp_path: Path) -> None:
    """The admin API runs in one process; a temporary ban another process gave less than one
    refresh ago is not in this process's guard yet. Its unban reads the store first and lifts
    it everywhere (before: 404, "not banned")."""
    a, b = Process(tmp_path, "w0"), Process(tmp_path, "w1")
    await a.start()
    await b.start()
    try:
        now = time.time()
        for _ in range(3):
            ban = b.server.ctx.guard.strike("10.0.0.7", now, "invalid-share flood")
        assert ban is not None
        await b.bans.sync()  # written to the store; a has not read it
        assert a.server.ctx.guard.banned("10.0.0.7", time.time()) is None
        source = SimpleNamespace(server=a.server, ledger=object(), network=a.server.network)
        views = Views(source, cache_seconds=0)  # type: ignore[arg-type]

        alone = BanRoutes(views, lambda: None)  # no shared store: nothing to catch up with
        async with admin(alone) as client:
            missing = await client.post("/api/admin/unban", json={"ip": "10.0.0.7"})
            assert missing.status == 404, await missing.text()

        async with admin(BanRoutes(views, lambda: a.bans)) as client:
            answer = await client.post("/api/admin/unban", json={"ip": "10.0.0.7"})
            assert answer.status == 200, await answer.text()
            assert (await answer.json())["unbanned"] == {"ip": "10.0.0.7"}
            assert a.server.ctx.guard.banned("10.0.0.7", time.time()) is None
            await a.bans.sync()  # the lift is written...
            await b.bans.sync()  # ...and read where the ban was given
            assert b.server.ctx.guard.banned("10.0.0.7", time.time()) is None
            nowhere = await client.post("/api/admin/unban", json={"ip": "10.0.0.6"})
            assert nowhere.status == 404, await nowhere.text()  # banned nowhere: still 404
    finally:
        await a.store.close()
        await b.store.close()
