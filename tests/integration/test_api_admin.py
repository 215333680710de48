"""The HTTP API's admin endpoints (bearer token; off without one), bans, and /healthz, on a
real pool with two bundled miners (a short run: enough for balances to pay out)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from structlog.testing import capture_logs

from pool.api.server import ApiServer
from pool.app import PoolApp, StartupError
from pool.ledger.store import Store
from pool.node.managed import ManagedNode
from pool.node.rpc import BitcoinRpc
from tests.integration.api_harness import (
    TOKEN,
    TOKEN_ENV,
    Mined,
    api_config,
    get,
    mined_pool,
    post,
)
from tests.integration.harness import (
    RawClient,
    pool_config,
    start_pool,
    wait_for,
    wallet_address,
)

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(scope="module")
async def mined(
    regtest_node: ManagedNode, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Mined]:
    async with mined_pool(regtest_node, tmp_path_factory.mktemp("api-admin"), 5.0) as m:
        yield m


# -- admin --------------------------------------------------------------------------------------


async def test_admin_needs_the_bearer_token(mined: Mined) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        async with mined.http.get(mined.base + "/api/admin/bans", headers=headers) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            assert TOKEN_ENV in (await resp.json())["error"]
    status, body = await post(mined, "/api/admin/ban", {"ip": "10.1.2.3"}, token="wrong")
    assert status == 401
    assert mined.app.server is not None and not mined.app.server.banned_ips
    status, body = await get(mined, "/api/admin/bans", Authorization=f"Bearer {TOKEN}")
    assert status == 200 and body == {"ips": [], "workers": [], "temporary": []}


async def test_admin_is_off_without_a_token(mined: Mined) -> None:
    os.environ.pop(TOKEN_ENV)
    second = ApiServer(mined.app)
    try:
        port = await second.start()
        async with mined.http.post(
            f"http://127.0.0.1:{port}/api/admin/payout", headers={"Authorization": "Bearer x"}
        ) as resp:
            assert resp.status == 403
            body = await resp.json()
        assert "admin endpoints are off" in body["error"] and TOKEN_ENV in body["error"]
    finally:
        os.environ[TOKEN_ENV] = TOKEN
        await second.stop()


async def test_admin_payout_round_and_payouts_endpoint(mined: Mined) -> None:
    status, result = await post(mined, "/api/admin/payout")
    assert status == 200, result
    assert result["status"] in ("paid", "waiting_for_funds"), result
    status, body = await get(mined, "/api/payouts")
    assert status == 200
    stored = await mined.stored(Store.payouts)
    assert [(p["id"], p["status"], p["total_sat"], p["txid"]) for p in body["payouts"]] == [
        (p["id"], p["status"], p["total_sat"], p["txid"]) for p in stored
    ]
    if result["status"] == "paid":
        balances = {a: await mined.stored(Store.balance, a) for a in mined.addresses}
        assert result["paid"] == {a: b.paid_units // 1_000_000 for a, b in balances.items()}
        assert all(mined.app.ledger.aggregates.balances[a] == b for a, b in balances.items())
        [payout] = body["payouts"]
        assert payout["id"] == result["payout_id"] and payout["txid"] == result["txid"]
        assert {i["address"]: i["amount_sat"] for i in payout["items"]} == result["paid"]
        for address in mined.addresses:
            _, page = await get(mined, f"/api/addresses/{address}")
            assert page["paid_sat"] == result["paid"][address]
            assert [p["amount_sat"] for p in page["payouts"]] == [result["paid"][address]]
            _, mine = await get(mined, f"/api/payouts?address={address}")
            assert [p["id"] for p in mine["payouts"]] == [result["payout_id"]]


async def test_admin_reconnect_all(mined: Mined) -> None:
    assert mined.app.server is not None
    client = await RawClient.connect(mined.app.server.bound_ports[0])
    try:
        await client.handshake(f"{mined.addresses[0]}.reconnect")
        status, body = await post(mined, "/api/admin/reconnect", {"wait": 0})
        assert status == 200 and body["reconnected"] >= 1
        msg = await client.notification("client.reconnect")
        assert msg["params"][2] == 0
        with pytest.raises(ConnectionError):
            await client.next_message(timeout=5)
    finally:
        await client.close()
    for bad in ({"wait": -1}, {"wait": "soon"}, {"wait": 1.5}, [1]):
        status, body = await post(mined, "/api/admin/reconnect", bad)
        assert status == 400, (bad, body)


async def test_admin_message_to_one_worker_an_address_or_all(mined: Mined) -> None:
    """client.show_message reaches exactly the connections asked for, over real sockets."""
    server = mined.app.server
    assert server is not None
    port = server.bound_ports[0]
    first, second = mined.addresses
    names = [f"{first}.msga", f"{first}.msgb", f"{second}.msgc"]
    clients = [await RawClient.connect(port) for _ in names]
    try:
        for client, name in zip(clients, names, strict=True):
            await client.handshake(name)
        a, b = clients[:2]

        async def shown(client: RawClient) -> str:
            msg = await client.notification("client.show_message")
            [text] = msg["params"]
            assert isinstance(text, str)
            return text

        status, body = await post(
            mined, "/api/admin/message", {"message": "to a", "worker": names[0]}
        )
        assert status == 200 and body == {"sent": 1, "worker": names[0], "chars": 4}, body
        assert await shown(a) == "to a"
        status, body = await post(
            mined, "/api/admin/message", {"message": "to ab", "worker": first}
        )
        assert status == 200 and body["sent"] == 2, body
        assert await shown(a) == "to ab"
        assert await shown(b) == "to ab"  # b's first: "to a" never reached it
        text = "é" * server.config.api.max_message_chars  # the longest allowed, not ASCII
        status, body = await post(mined, "/api/admin/message", {"message": text})
        assert status == 200 and body["sent"] >= 3, body  # and any other miner connected
        assert body["worker"] is None
        for client in clients:
            assert await shown(client) == text  # c's first: nothing before reached it
        # a worker with no connection: nothing sent, a 404 saying so
        idle = f"{second}.nobody"
        status, body = await post(mined, "/api/admin/message", {"message": "x", "worker": idle})
        assert status == 404 and body["sent"] == 0 and idle in body["error"], body
    finally:
        for client in clients:
            await client.close()


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"message": "x" * 257}, "longer than api.max_message_chars (256)"),
        ({"message": "   "}, "must not be blank"),
        ({"message": "two\nlines"}, "control characters (found U+000A)"),
        ({"message": "esc \x1b[31m"}, "control characters (found U+001B)"),
        ({"message": 5}, 'the body must be {"message"'),
        ({}, 'the body must be {"message"'),
        ({"message": "x", "worker": "nope.rig"}, "not a worker name"),
        ({"message": "x", "worker": 7}, "worker must be a string"),
        ({"message": "x", "to": "all"}, "unknown field(s) ['to']"),
        ([1], "JSON object"),
    ],
)
async def test_admin_message_input_errors(mined: Mined, body: Any, words: str) -> None:
    assert mined.app.config.api.max_message_chars == 256  # the default, as the cases assume
    status, answer = await post(mined, "/api/admin/message", body)
    assert status == 400 and words in answer["error"], answer


async def test_admin_message_needs_the_token(mined: Mined) -> None:
    status, body = await post(mined, "/api/admin/message", {"message": "hi"}, token="wrong")
    assert status == 401, body


async def authorize(port: int, user: str) -> tuple[RawClient, dict[str, Any]]:
    client = await RawClient.connect(port)
    client.send(1, "mining.subscribe", ["test-client/1"])
    await client.response(1)
    client.send(2, "mining.authorize", [user, "x"])
    return client, await client.response(2)


async def test_bans(mined: Mined) -> None:
    server = mined.app.server
    assert server is not None
    port = server.bound_ports[0]
    address = mined.addresses[1]
    name = f"{address}.banme"
    try:
        # a worker: its live connection is dropped, a new authorize is refused
        client = await RawClient.connect(port)
        await client.handshake(name)
        status, body = await post(mined, "/api/admin/ban", {"worker": name})
        assert status == 200 and body["dropped"] == 1 and body["workers"] == [name]
        saved = json.loads((mined.app.data_dir / "bans.json").read_text())
        assert saved["workers"] == [name]  # saved at once: a restart keeps it
        with pytest.raises(ConnectionError):
            await client.next_message(timeout=5)
        refused, reply = await authorize(port, name)
        assert reply["result"] is not True
        assert reply["error"][0] == 24 and f"worker {name} is banned" in reply["error"][1]
        other, reply = await authorize(port, f"{address}.other")  # the address's other workers
        assert reply["result"] is True
        for c in (refused, other):
            await c.close()
        status, body = await post(mined, "/api/admin/unban", {"worker": name})
        assert status == 200 and body["workers"] == []
        again, reply = await authorize(port, name)
        assert reply["result"] is True
        await again.close()
        # a bare address bans all its workers
        status, body = await post(mined, "/api/admin/ban", {"worker": address})
        assert status == 200
        refused, reply = await authorize(port, f"{address}.any")
        assert reply["error"][0] == 24
        await refused.close()
        assert (await post(mined, "/api/admin/unban", {"worker": address}))[0] == 200
        # an IP: live connections dropped, new ones refused at accept (with a log line)
        client = await RawClient.connect(port)
        await client.handshake(f"{address}.ip")
        status, body = await post(mined, "/api/admin/ban", {"ip": "127.0.0.1"})
        assert status == 200 and body["dropped"] >= 1 and body["ips"] == ["127.0.0.1"]
        with pytest.raises(ConnectionError):
            await client.next_message(timeout=5)
        with capture_logs() as logs:
            refused = await RawClient.connect(port)
            with pytest.raises(ConnectionError):
                await refused.next_message(timeout=5)
        assert {
            "event": "connection_refused",
            "peer": "127.0.0.1",
            "reason": "banned IP",
        }.items() <= next(e for e in logs if e["event"] == "connection_refused").items()
        status, body = await post(mined, "/api/admin/unban", {"ip": "127.0.0.1"})
        assert status == 200 and body["ips"] == []
        client, reply = await authorize(port, f"{address}.ip")
        assert reply["result"] is True
        await client.close()
    finally:
        server.banned_ips.clear()
        server.banned_workers.clear()


async def test_temporary_ip_bans_are_listed_counted_and_lifted(mined: Mined) -> None:
    """The pool's own temporary bans (given to abusers by the guard) are in the admin API's
    list and in /metrics, and an operator's unban of the IP ends them."""
    server = mined.app.server
    assert server is not None
    ip, now = "10.7.7.7", time.time()
    ban = None
    for _ in range(server.config.limits.ban_strikes):
        ban = server.ctx.guard.strike(ip, now, "test strikes")
    assert ban is not None and ban.ip == ip
    status, body = await post(mined, "/api/admin/unban", {"ip": "10.7.7.8"})
    assert status == 404  # another IP: nothing to lift
    headers = {"Authorization": f"Bearer {TOKEN}"}
    status, bans = await get(mined, "/api/admin/bans", **headers)
    assert status == 200 and bans["ips"] == []
    [temporary] = bans["temporary"]
    assert temporary["ip"] == ip and temporary["reason"] == "test strikes"
    assert 0 < temporary["seconds_left"] <= temporary["ban_seconds"]
    async with mined.http.get(mined.base + "/metrics") as resp:
        text = await resp.text()
    assert 'stratum_pool_bans{kind="ip_temporary"} 1' in text
    status, body = await post(mined, "/api/admin/unban", {"ip": ip})
    assert status == 200 and body["temporary"] == []
    assert server.ctx.guard.banned(ip, time.time()) is None


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("/api/admin/ban", {"ip": "300.1.2.3"}, 400, "not an IP address"),
        ("/api/admin/ban", {"worker": "nope.rig"}, 400, "not a worker name"),
        ("/api/admin/ban", {}, 400, "the body must be"),
        ("/api/admin/ban", {"ip": "10.0.0.1", "worker": "x"}, 400, "the body must be"),
        ("/api/admin/ban", {"ip": 5}, 400, "must be a string"),
        ("/api/admin/ban", [1, 2], 400, "JSON object"),
        ("/api/admin/unban", {"ip": "10.9.9.9"}, 404, "not banned"),
    ],
)
async def test_ban_input_errors(
    mined: Mined, path: str, body: Any, status: int, words: str
) -> None:
    got, answer = await post(mined, path, body)
    assert got == status and words in answer["error"], answer


async def test_ban_body_must_be_json(mined: Mined) -> None:
    async with mined.http.post(
        mined.base + "/api/admin/ban",
        data=b"{not json",
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as resp:
        assert resp.status == 400 and "not JSON" in (await resp.json())["error"]


# -- /healthz -----------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_healthz(regtest_node: ManagedNode, tmp_path: Path) -> None:
    payout = await wallet_address(regtest_node)
    app = await start_pool(api_config(pool_config(regtest_node, tmp_path, payout)))
    api = ApiServer(app)
    try:
        port = await api.start()
        url = f"http://127.0.0.1:{port}/healthz"
        async with aiohttp.ClientSession() as http:
            async with http.get(url) as resp:
                body = await resp.json()
                assert resp.status == 200, body
            assert body["status"] == "ok" and body["reasons"] == []
            assert body["checks"]["bitcoind"]["ok"] and body["checks"]["job"]["ok"]
            # bitcoind unreachable
            real, app.rpc = (
                app.rpc,
                BitcoinRpc(f"http://127.0.0.1:{closed_port()}/", user="u", password="p"),
            )
            try:
                async with http.get(url) as resp:
                    body = await resp.json()
                    assert resp.status == 503, body
                assert body["status"] == "unhealthy"
                assert [r for r in body["reasons"] if r.startswith("bitcoind does not answer")]
                # no internal address: neither the RPC URL nor its port is shown
                assert str(app.rpc.display_url) not in json.dumps(body), body
                assert "127.0.0.1" not in json.dumps(body), body
                assert body["checks"]["bitcoind"]["error"] == "RpcUnavailable"
            finally:
                assert app.rpc is not None
                await app.rpc.close()
                app.rpc = real
            # the template watcher dies: health says so while it is down, and it is restarted
            app.tasks.initial = 0.5  # (the supervisor's first delay, for the down window)
            state = app.tasks.states["template-watcher"]
            task = app.watcher_task
            assert task is not None
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await wait_for(lambda: not state.running, 10, "the watcher to be seen down")
            async with http.get(url) as resp:
                body = await resp.json()
            if not state.running:  # still in its restart delay
                assert resp.status == 503, body
                [reason] = body["reasons"]
                assert reason.startswith("the template watcher is not running (died: "), reason
                assert not body["checks"]["template_watcher"]["ok"]
            await wait_for(lambda: state.running, 30, "the watcher to be restarted")
            async with http.get(url) as resp:
                body = await resp.json()
                assert resp.status == 200, body
            watcher = body["checks"]["tasks"]["template-watcher"]
            assert watcher["ok"] and watcher["restarts"] == 1, watcher
            assert "cancelled" in watcher["last_error"], watcher
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                text = await resp.text()
            assert 'pool_task_restarts_total{task="template-watcher"} 1' in text
            assert "pool_ledger_degraded 0" in text
    finally:
        await api.stop()
        await app.stop()


async def test_bans_survive_a_restart_and_a_bad_bans_file_stops_the_start(
    regtest_node: ManagedNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    payout = await wallet_address(regtest_node)
    worker = f"{await wallet_address(regtest_node)}.banned"
    config = api_config(pool_config(regtest_node, tmp_path, payout))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    app = await start_pool(config)
    api = ApiServer(app)
    try:
        base = f"http://127.0.0.1:{await api.start()}"
        async with aiohttp.ClientSession() as http:

            async def admin(path: str, body: dict[str, str]) -> None:
                async with http.post(base + path, json=body, headers=headers) as r:
                    assert r.status == 200, await r.json()

            # Concurrent bans: every save sees the latest list, the file ends complete.
            others = [f"10.1.1.{i}" for i in range(1, 13)]
            await asyncio.gather(
                admin("/api/admin/ban", {"ip": "10.9.8.7"}),
                admin("/api/admin/ban", {"worker": worker}),
                *(admin("/api/admin/ban", {"ip": ip}) for ip in others),
            )
            await asyncio.gather(*(admin("/api/admin/unban", {"ip": ip}) for ip in others))
    finally:
        await api.stop()
        await app.stop()
    saved = json.loads((tmp_path / "bans.json").read_text())
    assert saved == {"version": 1, "ips": ["10.9.8.7"], "workers": [worker]}
    assert [n for n in os.listdir(tmp_path) if n.startswith("bans.json")] == ["bans.json"]
    # Restarted on the same data directory: the bans are in force before any miner arrives.
    app = await start_pool(config)
    try:
        assert app.server is not None
        assert app.server.banned_ips == {"10.9.8.7"} and app.server.banned_workers == {worker}
        client, reply = await authorize(app.server.bound_ports[0], worker)
        await client.close()
        assert reply["error"][0] == 24 and "banned" in reply["error"][1]
    finally:
        await app.stop()
    # A bans file the pool cannot trust: it refuses to start (and says which file), rather
    # than letting banned miners back in.
    (tmp_path / "bans.json").write_text('{"version": 1, "ips": "10.9.8.7"}')
    app = PoolApp(config)
    try:
        with pytest.raises(StartupError) as info:
            await app.start()
    finally:
        await app.stop()
    assert str(tmp_path / "bans.json") in str(info.value) and "'ips'" in str(info.value)
