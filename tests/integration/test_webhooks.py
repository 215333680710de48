"""Webhooks from a real pool on a real regtest bitcoind to real aiohttp receivers on loopback.

Receivers: one that answers 200 (every event), one that sleeps 30 s per request, a closed port,
one that answers 500 (block_found only: its retries are counted), and a per-address
subscription made through the API; a bitcoind of the test's own, stopped and continued, for
pool_degraded / pool_healthy. On plain regtest every share is a block, so each share
raises block_found. Workers go offline after 3 s without an accepted share.

Wall time: about 20 s.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import itertools
import json
import os
import secrets
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from pool.api.server import ApiServer
from pool.app import PoolApp
from pool.config import ApiConfig
from pool.jobs import prevhash_to_stratum
from pool.node.binaries import Binaries
from pool.node.managed import ManagedNode
from pool.webhook_config import WebhooksConfig, WebhookUrlConfig
from tests.integration.harness import (
    RawClient,
    own_node,
    pool_config,
    solve,
    start_pool,
    wait_for,
    wallet_address,
)
from tests.unit.test_webhooks import Hit, HookReceiver

pytestmark = pytest.mark.integration

TOKEN_ENV = "STRATUM_POOL_TEST_HOOKS_TOKEN"
TOKEN = "test-" + secrets.token_hex(16)
SECRET_ENV = "STRATUM_POOL_TEST_HOOKS_SECRET"
SECRET = secrets.token_hex(16)
OFFLINE_SECONDS = 3.0


class Receiver(HookReceiver):
    """The unit tests' real HTTP receiver, with a subscription's secret and a filter."""

    def __init__(self, status: int = 200, delay: float = 0.0) -> None:
        super().__init__(status, delay)
        self.secret = ""  # a subscription's, from the API's answer

    def events(self, event: str) -> list[dict[str, Any]]:
        return [h.json for h in self.hits if h.json["event"] == event]


@dataclasses.dataclass
class Pool:
    app: PoolApp
    base: str
    http: aiohttp.ClientSession
    good: Receiver
    slow: Receiver
    failing: Receiver
    subscribed: Receiver
    addresses: list[str]
    data_dir: Path


@pytest_asyncio.fixture(scope="module")
async def pool(
    regtest_node: ManagedNode, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Pool]:
    good, slow = await Receiver().start(), await Receiver(delay=30.0).start()
    failing, subscribed = await Receiver(status=500).start(), await Receiver().start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/down"
    data_dir = tmp_path_factory.mktemp("webhooks")
    addresses = [await wallet_address(regtest_node) for _ in range(2)]
    base_cfg = pool_config(regtest_node, data_dir, await wallet_address(regtest_node))
    hooks = WebhooksConfig(
        enabled=True,
        urls=(
            WebhookUrlConfig(url=slow.url),
            WebhookUrlConfig(url=closed),
            WebhookUrlConfig(url=failing.url, events=("block_found",)),
            WebhookUrlConfig(url=good.url),
        ),
        secret_env=SECRET_ENV,
        pool_id="hooks-test",
        timeout_seconds=1.0,
        retry_seconds=0.2,
        retry_max_seconds=2.0,
        max_attempts=3,
        worker_offline_seconds=OFFLINE_SECONDS,
        check_seconds=0.5,
        max_subscriptions_per_address=2,
    )
    cfg = dataclasses.replace(
        base_cfg,
        webhooks=hooks,
        api=ApiConfig(port=0, admin_token_env=TOKEN_ENV),
        ledger=dataclasses.replace(base_cfg.ledger, block_check_seconds=1.0, block_maturity=2),
    )
    os.environ[TOKEN_ENV], os.environ[SECRET_ENV] = TOKEN, SECRET
    app = await start_pool(cfg)
    try:
        assert app.api is not None and app.api.port is not None
        async with aiohttp.ClientSession() as http:
            yield Pool(
                app,
                f"http://127.0.0.1:{app.api.port}",
                http,
                good,
                slow,
                failing,
                subscribed,
                addresses,
                data_dir,
            )
    finally:
        await app.stop()
        for r in (good, slow, failing, subscribed):
            assert r.runner is not None
            await r.runner.cleanup()
        for var in (TOKEN_ENV, SECRET_ENV):
            os.environ.pop(var, None)


def last_notify(client: RawClient) -> dict[str, Any]:
    return [m for m in client.messages if m.get("method") == "mining.notify"][-1]


async def submit_share(client: RawClient, worker: str, difficulty: float, ids: list[int]) -> float:
    """One accepted share on the newest job (a stale one is tried again on the next job);
    returns the seconds the pool took to answer it."""
    for _ in range(10):
        notify = last_notify(client)
        extranonce2 = secrets.token_bytes(client.extranonce2_size)
        solution = solve(notify["params"], client.extranonce1, extranonce2, difficulty)
        ids[0] += 1
        started = time.monotonic()
        client.send(ids[0], "mining.submit", solution.params(worker))
        answer = await client.response(ids[0])
        took = time.monotonic() - started
        if answer.get("result") is True:
            return took
        if last_notify(client) is notify:  # stale: a newer job is on its way
            await client.notification("mining.notify")
    raise AssertionError("no share accepted in 10 tries")


def verify(hit: Hit, secret: str) -> None:
    expected = hmac.new(secret.encode(), hit.body, hashlib.sha256).hexdigest()
    assert hit.headers["X-Webhook-Signature"] == f"sha256={expected}"


async def test_subscriptions_through_the_api(pool: Pool) -> None:
    url = pool.base + "/api/webhooks"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    a = pool.addresses[0]
    async with pool.http.post(url, json={"address": a, "url": pool.subscribed.url}) as resp:
        assert resp.status == 401  # webhooks.subscriptions = admin (the default)
    for body, why in (
        ({"address": a, "url": "ftp://127.0.0.1/x"}, "http"),
        ({"address": a, "url": "file:///etc/passwd"}, "http"),
        ({"address": "not-an-address", "url": pool.subscribed.url}, "not an address"),
        ({"address": a}, "the body must be"),
    ):
        async with pool.http.post(url, json=body, headers=auth) as resp:
            answer = await resp.json()
            assert resp.status == 400, answer
            assert why in answer["error"]
    async with pool.http.post(
        url, json={"address": a, "url": pool.subscribed.url}, headers=auth
    ) as resp:
        assert resp.status == 201
        sub = await resp.json()
    assert len(sub["secret"]) == 64 and sub["address"] == a
    async with pool.http.post(
        url, json={"address": a, "url": pool.subscribed.url}, headers=auth
    ) as resp:
        assert resp.status == 200 and (await resp.json())["id"] == sub["id"]
    # the per-address bound (2 here); the one over it is refused, then removed again
    extra = []
    for i in range(2):
        async with pool.http.post(
            url, json={"address": a, "url": f"http://127.0.0.1:9/x{i}"}, headers=auth
        ) as resp:
            extra.append((resp.status, await resp.json()))
    assert extra[0][0] == 201 and extra[1][0] == 409, extra
    async with pool.http.delete(f"{url}/{extra[0][1]['id']}", headers=auth) as resp:
        assert resp.status == 200
    async with pool.http.delete(f"{url}/{extra[0][1]['id']}", headers=auth) as resp:
        assert resp.status == 404
    async with pool.http.get(url, headers=auth) as resp:
        listed = await resp.json()
    assert [s["id"] for s in listed["subscriptions"]] == [sub["id"]]
    assert "secret" not in listed["subscriptions"][0]
    saved = json.loads((pool.data_dir / "webhooks.json").read_text())
    assert [s["id"] for s in saved["subscriptions"]] == [sub["id"]]
    pool.subscribed.secret = sub["secret"]


async def on_the_tip(client: RawClient, app: PoolApp) -> None:
    """Wait until ``client`` has read a job on the chain's current tip."""
    assert app.rpc is not None and app.server is not None
    jobs = app.server.jobs
    tip = await app.rpc.call("getblockcount")
    await wait_for(
        lambda: jobs.current is not None and jobs.current.height == tip + 1, 15, "a tip job"
    )
    assert jobs.current is not None
    want = prevhash_to_stratum(jobs.current.prev_hash)
    while [m for m in client.messages if m.get("method") == "mining.notify"][-1]["params"][
        1
    ] != want:
        await client.notification("mining.notify")


async def test_block_found_arrives_and_nothing_waits(pool: Pool) -> None:
    """block_found reaches the good receiver within seconds although one receiver sleeps
    30 s and another is down; the shares are answered at once meanwhile. Two blocks on one
    job: bitcoind keeps the first, the other is orphaned (block_orphaned)."""
    assert pool.app.server is not None
    port = pool.app.server.bound_ports[0]
    clients = []
    for address in pool.addresses:
        client = await RawClient.connect(port)
        difficulty, _ = await client.handshake(f"{address}.w1")
        clients.append((client, f"{address}.w1", difficulty, [10]))
    idle = await RawClient.connect(port)
    await idle.handshake(f"{pool.addresses[0]}.made-up")  # authorized, never a share
    try:
        # both on the same job, sent together: bitcoind keeps the first block it gets (on a
        # busy machine the second may come after the next job: stale, then tried again)
        sent = time.monotonic()
        answer_times = []
        for attempt in range(5):
            for client, *_ in clients:
                await on_the_tip(client, pool.app)
            solutions = [
                solve(last_notify(c)["params"], c.extranonce1, secrets.token_bytes(4), d)
                for c, _, d, _ in clients
            ]
            started = time.monotonic()
            for (client, worker, _, _), solution in zip(clients, solutions, strict=True):
                client.send(100 + attempt, "mining.submit", solution.params(worker))
            answers = [await client.response(100 + attempt) for client, *_ in clients]
            answer_times.append(time.monotonic() - started)
            if all(a["result"] is True for a in answers):
                break
        else:
            raise AssertionError(f"two shares on one job never both accepted: {answers}")
        await wait_for(
            lambda: len(pool.good.events("block_found")) >= 1, 15, "block_found at the receiver"
        )
        arrived = next(h.at for h in pool.good.hits if h.json["event"] == "block_found") - sent
        await wait_for(lambda: len(pool.good.events("block_orphaned")) >= 1, 15, "block_orphaned")
        # the slow receiver was asked (and holds its request 30 s): nobody waited for it
        await wait_for(lambda: len(pool.slow.hits) >= 1, 15, "the slow receiver asked")
        found = len(pool.good.events("block_found"))
        for client, worker, difficulty, ids in clients:  # one after the other: two blocks
            await on_the_tip(client, pool.app)
            answer_times.append(await submit_share(client, worker, difficulty, ids))
        await wait_for(
            lambda: len(pool.good.events("block_found")) >= found + 2, 15, "two more blocks"
        )
    finally:
        for client, *_ in clients:
            await client.close()
        await idle.close()
    print(
        f"share answers {[round(t, 4) for t in answer_times]} s; block_found after {arrived:.3f} s"
    )
    assert max(answer_times) < 5.0  # a receiver held for 30 s delays no answer
    assert arrived < 10.0
    assert len(pool.good.events("block_found")) == found + 2
    hit = next(h for h in pool.good.hits if h.json["event"] == "block_found")
    verify(hit, SECRET)
    body = hit.json
    assert body["pool"] == "hooks-test" and body["data"]["status"] == "accepted"
    assert body["data"]["worker"] in {f"{a}.w1" for a in pool.addresses}
    rpc = pool.app.rpc
    assert rpc is not None
    header = await rpc.call("getblockheader", body["data"]["hash"], True)
    assert header["height"] == body["data"]["height"] and header["confirmations"] >= 1
    orphan = pool.good.events("block_orphaned")[0]["data"]
    assert (await rpc.call("getblockheader", orphan["hash"], True))["confirmations"] == -1
    assert not pool.subscribed.events("block_found")  # a subscription: its address's only


async def test_block_confirmed(pool: Pool) -> None:
    """ledger.block_maturity = 2 here: the first block is confirmed two blocks later."""
    first = pool.good.events("block_found")[0]["data"]["hash"]
    await wait_for(
        lambda: first in {e["data"]["hash"] for e in pool.good.events("block_confirmed")},
        15,
        "block_confirmed for the first block",
        lambda: [h.json["event"] for h in pool.good.hits],
    )
    assert pool.app.rpc is not None
    header = await pool.app.rpc.call("getblockheader", first, True)
    assert header["confirmations"] >= 2


async def test_retries_back_off_and_stop_at_the_bound(pool: Pool) -> None:
    hooks = pool.app.webhooks
    assert hooks is not None
    first = pool.good.events("block_found")[0]["id"]
    failing_box = next(
        b for b in hooks.hooks._outboxes.values() if b.receiver.url == pool.failing.url
    )
    await wait_for(
        lambda: all(d.id != first for d in failing_box.queue), 30, "the failing delivery given up"
    )
    attempts = [h for h in pool.failing.hits if h.json["id"] == first]
    assert len(attempts) == 3  # webhooks.max_attempts
    gaps = [b.at - a.at for a, b in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.18 and gaps[1] >= 0.36, gaps  # 0.2 s, then doubled
    assert hooks.hooks.counters.failed >= 1 and hooks.hooks.counters.retries >= 2
    async with pool.http.get(pool.base + "/metrics") as resp:
        text = await resp.text()
    failed = next(
        line
        for line in text.splitlines()
        if line.startswith('stratum_pool_webhook_deliveries_total{outcome="failed"}')
    )
    assert float(failed.split()[-1]) >= 1


def worker_events(receiver: Receiver, worker: str) -> list[str]:
    """worker_offline / worker_back of ``worker`` in the order they arrived."""
    return [
        h.json["event"]
        for h in receiver.hits
        if h.json["event"] in ("worker_offline", "worker_back")
        and h.json["data"]["worker"] == worker
    ]


def alternates(events: list[str]) -> bool:
    """offline, back, offline, ...: never said twice in a row."""
    return all(e == ("worker_offline", "worker_back")[i % 2] for i, e in enumerate(events))


async def test_worker_offline_then_back(pool: Pool) -> None:
    a, b = pool.addresses
    workers = (f"{a}.w1", f"{b}.w1")
    # (on a slow machine a worker may already have gone offline and come back between the
    # previous test's shares: each offline period is said once, alternating with back)
    await wait_for(
        lambda: all(worker_events(pool.good, w)[-1:] == ["worker_offline"] for w in workers),
        OFFLINE_SECONDS + 15,
        "worker_offline for both workers",
        lambda: [h.json["event"] for h in pool.good.hits],
    )
    for w in workers:
        assert alternates(worker_events(pool.good, w)), worker_events(pool.good, w)
    offline = pool.good.events("worker_offline")
    assert {e["data"]["worker"] for e in offline} == set(workers)  # none for made-up workers
    assert all(e["data"]["seconds_since_share"] >= OFFLINE_SECONDS for e in offline)
    # the subscription got its own address's worker only, signed with its own secret
    await wait_for(
        lambda: worker_events(pool.subscribed, workers[0])[-1:] == ["worker_offline"],
        10,
        "the subscription's worker_offline",
    )
    sub_hits = [h for h in pool.subscribed.hits if h.json["event"] == "worker_offline"]
    assert {h.json["data"]["worker"] for h in sub_hits} == {workers[0]}
    assert worker_events(pool.subscribed, workers[0]) == worker_events(pool.good, workers[0])
    verify(sub_hits[0], pool.subscribed.secret)
    # a worker authorized without any share never raises anything
    assert not any("made-up" in str(h.json["data"].get("worker")) for h in pool.good.hits)
    assert pool.app.server is not None
    client = await RawClient.connect(pool.app.server.bound_ports[0])
    try:
        difficulty, _ = await client.handshake(workers[0])
        await submit_share(client, workers[0], difficulty, [10])
        await wait_for(
            lambda: (
                worker_events(pool.good, workers[0])[-1:] == ["worker_back"]
                and worker_events(pool.subscribed, workers[0])[-1:] == ["worker_back"]
            ),
            15,
            "worker_back",
        )
    finally:
        await client.close()
    assert alternates(worker_events(pool.good, workers[0]))
    back = [e for e in pool.good.events("worker_back") if e["data"]["worker"] == workers[0]]
    assert back[-1]["data"]["connections"] >= 1


async def test_pool_degraded_then_healthy(
    bitcoind_binaries: Binaries, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A bitcoind that stops answering (SIGSTOP, its own node) makes the /healthz checks fail:
    pool_degraded with the reason; answering again (SIGCONT): pool_healthy."""
    receiver = await Receiver().start()
    stopped = False
    async with own_node(bitcoind_binaries, tmp_path_factory.mktemp("hooks-node")) as node:
        base = pool_config(
            node, tmp_path_factory.mktemp("hooks-health"), await wallet_address(node)
        )
        hooks = WebhooksConfig(
            enabled=True, urls=(WebhookUrlConfig(url=receiver.url),), check_seconds=0.5
        )
        app = await start_pool(
            dataclasses.replace(base, webhooks=hooks, api=ApiConfig(enabled=False))
        )
        assert node.process is not None
        pid = node.process.pid
        try:
            os.kill(pid, signal.SIGSTOP)
            stopped = True
            await wait_for(lambda: bool(receiver.events("pool_degraded")), 30, "pool_degraded")
            os.kill(pid, signal.SIGCONT)
            stopped = False
            await wait_for(lambda: bool(receiver.events("pool_healthy")), 30, "pool_healthy")
        finally:
            if stopped:
                os.kill(pid, signal.SIGCONT)
            await app.stop()
            assert receiver.runner is not None
            await receiver.runner.cleanup()
    degraded = receiver.events("pool_degraded")
    assert len(degraded) == 1  # once, however many checks failed meanwhile
    assert any("bitcoind does not answer" in r for r in degraded[0]["data"]["reasons"])
    assert [h.json["event"] for h in receiver.hits if "pool_" in h.json["event"]] == [
        "pool_degraded",
        "pool_healthy",
    ]


async def test_open_and_off_subscription_modes(pool: Pool) -> None:
    """``open``: no token needed, internal destinations refused; ``off``: refused (403)."""
    app = pool.app
    original = app.config
    servers = {}
    try:
        for mode in ("open", "off"):
            app.config = dataclasses.replace(
                original, webhooks=dataclasses.replace(original.webhooks, subscriptions=mode)
            )
            servers[mode] = ApiServer(app)
            await servers[mode].start()  # the routes follow the mode at build time
        app.config = original
        open_url = f"http://127.0.0.1:{servers['open'].port}/api/webhooks"
        off_url = f"http://127.0.0.1:{servers['off'].port}/api/webhooks"
        address = pool.addresses[1]
        for internal in (
            "http://127.0.0.1:9/x",
            "http://[::1]/x",
            "http://localhost/x",
            "http://10.1.2.3/x",
            "http://169.254.169.254/latest",
        ):
            async with pool.http.post(open_url, json={"address": address, "url": internal}) as r:
                answer = await r.json()
                assert r.status == 400 and "open subscriptions" in answer["error"], answer
        # a public name is taken without a token (deleted at once: nothing is ever sent there)
        async with pool.http.post(
            open_url, json={"address": address, "url": "https://hooks.example.com/x"}
        ) as r:
            assert r.status == 201
            sub = await r.json()
        async with pool.http.delete(f"{open_url}/{sub['id']}") as r:
            assert r.status == 200
        async with pool.http.get(open_url) as r:
            assert r.status == 401  # the listing stays admin-only
        async with pool.http.post(
            off_url,
            json={"address": address, "url": "https://hooks.example.com/x"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as r:
            assert r.status == 403
            assert "webhooks.subscriptions = off" in (await r.json())["error"]
    finally:
        app.config = original
        for server in servers.values():
            await server.stop()
