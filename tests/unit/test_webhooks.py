"""Webhook deliveries to real aiohttp receivers on loopback ports: body, signature, filters,
retries with backoff up to the bound, the bounded queue, a slow or closed receiver delaying no
other; the pure worker / health watches; subscriptions and their file; the config keys.

Wall time: about 10 s (the slow receiver's test waits for its 1 s attempt timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import json
import socket
import time
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Self

import pytest
from aiohttp import web

from pool.api.metrics import render
from pool.api.webhook_routes import webhook_metrics
from pool.config import Config as PoolConfig
from pool.config import ConfigError, LimitsConfig, load, validate
from pool.ledger.payouts import RoundResult
from pool.stats import WorkerStats
from pool.webhook_config import WebhooksConfig, WebhookUrlConfig
from pool.webhook_subs import (
    Subscription,
    SubscriptionBook,
    SubscriptionError,
    Subscriptions,
    SubscriptionsFileError,
    save,
)
from pool.webhook_subs import load as load_subs
from pool.webhook_wiring import PoolWebhooks
from pool.webhooks import (
    ADDRESS_EVENTS,
    HealthWatch,
    Receiver,
    Webhooks,
    WorkerWatch,
    block_change_events,
    sign,
)
from tests.integration.harness import wait_for

SECRET = "s3cret-for-tests"


@dataclasses.dataclass
class Hit:
    at: float
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


class HookReceiver:
    """A real HTTP receiver: answers ``status`` after ``delay`` seconds, records every POST."""

    def __init__(self, status: int = 200, delay: float = 0.0) -> None:
        self.status = status
        self.delay = delay
        self.hits: list[Hit] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.hits.append(Hit(time.monotonic(), dict(request.headers), await request.read()))
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(status=self.status)

    async def start(self) -> Self:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/nobody-listens"


def hooks_config(*urls: WebhookUrlConfig, **kw: Any) -> WebhooksConfig:
    base: dict[str, Any] = {
        "enabled": True,
        "urls": urls,
        "timeout_seconds": 1.0,
        "retry_seconds": 0.05,
        "retry_max_seconds": 1.0,
        "max_attempts": 4,
    }
    return WebhooksConfig(**(base | kw))


@pytest.fixture
async def receivers() -> AsyncIterator[list[HookReceiver]]:
    made: list[HookReceiver] = []
    yield made
    for r in made:
        await r.stop()


async def receiver(made: list[HookReceiver], **kw: Any) -> HookReceiver:
    r = await HookReceiver(**kw).start()
    made.append(r)
    return r


async def test_delivery_body_signature_and_filter(receivers: list[HookReceiver]) -> None:
    every = await receiver(receivers)
    blocks_only = await receiver(receivers)
    cfg = hooks_config(
        WebhookUrlConfig(url=every.url),
        WebhookUrlConfig(url=blocks_only.url, events=("block_found",)),
    )
    hooks = Webhooks(cfg, pool_id="test-pool", secret=SECRET, clock=lambda: 1234.5)
    await hooks.start()
    try:
        assert hooks.emit("worker_offline", {"worker": "a.w"}, address="a") == 1
        assert hooks.emit("block_found", {"height": 7}) == 2
        await wait_for(lambda: len(every.hits) == 2 and len(blocks_only.hits) == 1, 10, "hits")
    finally:
        await hooks.close()
    first = every.hits[0]
    body = first.json
    assert body["event"] == "worker_offline" and body["pool"] == "test-pool"
    assert body["time"] == 1234.5 and body["data"] == {"worker": "a.w"}
    assert first.headers["X-Webhook-Event"] == "worker_offline"
    assert first.headers["X-Webhook-Id"] == body["id"]
    expected = hmac.new(SECRET.encode(), first.body, hashlib.sha256).hexdigest()
    assert first.headers["X-Webhook-Signature"] == f"sha256={expected}"
    assert blocks_only.hits[0].json["event"] == "block_found"
    assert blocks_only.hits[0].json["id"] == every.hits[1].json["id"]  # one event, one id
    assert hooks.counters.delivered == 3 and hooks.counters.failed == 0


async def test_no_signature_without_a_secret(receivers: list[HookReceiver]) -> None:
    r = await receiver(receivers)
    hooks = Webhooks(hooks_config(WebhookUrlConfig(url=r.url)), pool_id="p")
    await hooks.start()
    try:
        hooks.emit("pool_healthy", {"reasons": []})
        await wait_for(lambda: len(r.hits) == 1, 10, "a hit")
    finally:
        await hooks.close()
    assert "X-Webhook-Signature" not in r.hits[0].headers


def test_unknown_event_is_refused() -> None:
    hooks = Webhooks(hooks_config(), pool_id="p")
    with pytest.raises(ValueError, match="unknown webhook event"):
        hooks.emit("block_eaten", {})


async def test_retries_back_off_and_stop_at_the_bound(receivers: list[HookReceiver]) -> None:
    failing = await receiver(receivers, status=500)
    cfg = hooks_config(WebhookUrlConfig(url=failing.url), retry_seconds=0.1, max_attempts=4)
    hooks = Webhooks(cfg, pool_id="p")
    await hooks.start()
    try:
        hooks.emit("block_found", {"height": 1})
        await wait_for(lambda: hooks.counters.failed == 1, 20, "the delivery given up")
        assert len(failing.hits) == 4  # max_attempts, and not one more
        gaps = [b.at - a.at for a, b in zip(failing.hits, failing.hits[1:], strict=False)]
        for gap, delay in zip(gaps, (0.1, 0.2, 0.4), strict=True):  # doubled each time
            assert gap >= delay * 0.9, gaps
        assert hooks.counters.retries == 3 and hooks.counters.delivered == 0
        # a new event is still sent (the queue moved on)
        failing.status = 200
        hooks.emit("block_found", {"height": 2})
        await wait_for(lambda: hooks.counters.delivered == 1, 10, "the next delivery")
    finally:
        await hooks.close()
    assert len(failing.hits) == 5


async def test_a_4xx_is_not_retried_but_429_is(receivers: list[HookReceiver]) -> None:
    refusing = await receiver(receivers, status=404)
    busy = await receiver(receivers, status=429)
    cfg = hooks_config(WebhookUrlConfig(url=refusing.url), WebhookUrlConfig(url=busy.url))
    hooks = Webhooks(cfg, pool_id="p")
    await hooks.start()
    try:
        hooks.emit("block_found", {})
        await wait_for(lambda: hooks.counters.failed == 2, 20, "both given up")
    finally:
        await hooks.close()
    assert len(refusing.hits) == 1
    assert len(busy.hits) == 4


async def test_the_queue_is_bounded_oldest_dropped() -> None:
    cfg = hooks_config(
        WebhookUrlConfig(url=closed_port_url()),
        queue_size=3,
        retry_seconds=60.0,
        retry_max_seconds=60.0,
    )
    hooks = Webhooks(cfg, pool_id="p")
    await hooks.start()
    try:
        for i in range(10):
            hooks.emit("block_found", {"height": i})
        assert hooks.queued() == 3
        assert hooks.counters.dropped == 7
        box = next(iter(hooks._outboxes.values()))
        assert [json.loads(d.body)["data"]["height"] for d in box.queue] == [7, 8, 9]
    finally:
        await hooks.close()


async def test_deliveries_queued_at_stop_are_sent_after_the_next_start(
    tmp_path: Path, receivers: list[HookReceiver]
) -> None:
    """The receiver is down while the pool stops: its deliveries are kept in the data dir and
    delivered, same ids and bodies, once the pool is back and so is the receiver. Deliveries
    for a receiver no longer configured are dropped, not sent elsewhere."""
    outbox = tmp_path / "webhooks-outbox.jsonl"
    down = closed_port_url()
    cfg = hooks_config(
        WebhookUrlConfig(url=down), retry_seconds=60.0, retry_max_seconds=60.0, max_attempts=9
    )
    hooks = Webhooks(cfg, pool_id="p", outbox_path=outbox)
    await hooks.start()
    for i in range(3):
        hooks.emit("block_found", {"height": i})
    sent = [json.loads(d.body) for box in hooks._outboxes.values() for d in box.queue]
    await hooks.close()
    assert outbox.exists() and len(outbox.read_text().splitlines()) == 3
    # the next start: the same receiver (same URL, now answering) gets them, in order
    up = await receiver(receivers)
    port = int(down.rsplit(":", 1)[1].split("/")[0])
    try:
        site = web.TCPSite(up.runner, "127.0.0.1", port)  # type: ignore[arg-type]
        await site.start()
    except OSError:
        pytest.skip(f"port {port} was taken meanwhile")
    again = Webhooks(cfg, pool_id="p", outbox_path=outbox)
    await again.start()
    try:
        await wait_for(lambda: again.counters.delivered == 3, 20, "the kept deliveries")
    finally:
        await again.close()
    assert [json.loads(h.body) for h in up.hits] == sent
    assert not outbox.exists()
    # kept for a receiver that is gone by the next start: dropped
    gone = Webhooks(cfg, pool_id="p", outbox_path=outbox)
    await gone.start()
    gone.emit("block_found", {"height": 9})
    await gone.close()
    other = Webhooks(hooks_config(WebhookUrlConfig(url=up.url)), pool_id="p", outbox_path=outbox)
    other._outboxes.clear()  # no receiver with the kept one's key
    await other.start()
    try:
        assert other.queued() == 0 and not outbox.exists()
    finally:
        await other.close()


async def test_a_damaged_outbox_is_set_aside(tmp_path: Path) -> None:
    outbox = tmp_path / "webhooks-outbox.jsonl"
    outbox.write_text("{not json\n")
    hooks = Webhooks(
        hooks_config(WebhookUrlConfig(url=closed_port_url())), pool_id="p", outbox_path=outbox
    )
    await hooks.start()
    await hooks.close()
    assert (tmp_path / "webhooks-outbox.jsonl.damaged").read_text() == "{not json\n"


async def test_a_slow_or_closed_receiver_delays_no_other(receivers: list[HookReceiver]) -> None:
    slow = await receiver(receivers, delay=30.0)
    fast = await receiver(receivers)
    cfg = hooks_config(
        WebhookUrlConfig(url=slow.url),
        WebhookUrlConfig(url=closed_port_url()),
        WebhookUrlConfig(url=fast.url),
        timeout_seconds=1.0,
        max_attempts=2,
    )
    hooks = Webhooks(cfg, pool_id="p")
    await hooks.start()
    try:
        started = time.monotonic()
        for i in range(3):
            hooks.emit("block_found", {"height": i})
        emitted = time.monotonic() - started
        await wait_for(lambda: len(fast.hits) == 3, 10, "the fast receiver's three events")
        fast_done = time.monotonic() - started
        await wait_for(lambda: len(slow.hits) >= 1, 10, "the slow receiver asked")
        assert emitted < 0.5  # emit only queues
        assert fast_done < 5.0, fast_done  # the slow one takes 30 s per answer
        # the slow receiver's attempts end at the timeout: it is retried, then given up
        await wait_for(lambda: hooks.counters.failed >= 2, 20, "slow and closed given up")
    finally:
        await hooks.close()


# -- the pure watches -----------------------------------------------------------------------------


def worker(name: str, last: float | None) -> WorkerStats:
    return WorkerStats(name=name, address=name.split(".")[0], last_share=last)


def test_worker_watch_offline_once_then_back() -> None:
    watch = WorkerWatch(offline_seconds=10, started=100.0)
    workers = {
        "a.1": worker("a.1", 105.0),
        "b.1": worker("b.1", None),  # never had an accepted share: nothing ever
        "c.1": worker("c.1", 90.0),  # only before the start: no storm at start-up
    }
    assert watch.check(workers, 110.0) == []
    events = watch.check(workers, 115.0)
    assert [(e, d["worker"], a) for e, d, a in events] == [("worker_offline", "a.1", "a")]
    assert events[0][1]["seconds_since_share"] == 10.0
    assert watch.check(workers, 200.0) == []  # once
    workers["a.1"].last_share = 201.0
    events = watch.check(workers, 202.0)
    assert [(e, d["worker"]) for e, d, _ in events] == [("worker_back", "a.1")]
    assert watch.check(workers, 203.0) == []
    assert watch.check(workers, 211.0)[0][0] == "worker_offline"
    del workers["a.1"]  # evicted by the stats: forgotten
    assert watch.check(workers, 300.0) == [] and watch.offline == {}


def test_health_watch_reports_changes_only() -> None:
    watch = HealthWatch()
    assert watch.check([]) is None  # healthy at start: nothing to say
    assert watch.check(["bitcoind does not answer"]) == (
        "pool_degraded",
        {"reasons": ["bitcoind does not answer"]},
    )
    assert watch.check(["still down"]) is None
    assert watch.check([]) == ("pool_healthy", {"reasons": []})
    assert HealthWatch().check(["no job"]) is not None  # degraded at the first check: said


def test_block_changes_become_events() -> None:
    events = block_change_events(
        ["aa:pending->confirmed", "bb:pending->orphaned", "cc:pending->rejected"]
    )
    assert events == [
        ("block_confirmed", {"hash": "aa", "from": "pending", "status": "confirmed"}),
        ("block_orphaned", {"hash": "bb", "from": "pending", "status": "orphaned"}),
    ]


def test_a_subscription_gets_its_own_address_events_only() -> None:
    sub = Receiver(key="sub:x", url="http://h/", secret=b"k", events=ADDRESS_EVENTS, address="A")
    assert sub.wants("worker_offline", "A") and sub.wants("payout_sent", "A")
    assert not sub.wants("worker_offline", "B")
    assert not sub.wants("block_found", None) and not sub.wants("pool_degraded", None)
    configured = Receiver(key="config:0", url="http://h/", secret=b"")
    assert configured.wants("worker_offline", "A") and configured.wants("block_found", None)
    hooks = Webhooks(hooks_config(WebhookUrlConfig(url="http://h/")), pool_id="p")
    hooks.add_receiver(sub)
    assert hooks.emit("payout_sent", {}, address="A", subscriptions_only=True) == 1
    assert hooks.emit("payout_sent", {}, address="A") == 2
    assert sign(b"k", b"x") == "sha256=" + hmac.new(b"k", b"x", hashlib.sha256).hexdigest()


# -- subscriptions --------------------------------------------------------------------------------


def test_subscriptions_bounds_and_urls() -> None:
    subs = Subscriptions({}, max_total=3, max_per_address=2)
    one, new = subs.add("A", "https://a.example/hook", 1.0)
    assert new and len(one.id) == 32 and len(one.secret) == 64
    again, new = subs.add("A", "https://a.example/hook", 2.0)
    assert again == one and not new
    subs.add("A", "http://a.example/other", 3.0)
    with pytest.raises(SubscriptionError, match="max_subscriptions_per_address") as exc:
        subs.add("A", "http://a.example/third", 4.0)
    assert exc.value.status == 409
    subs.add("B", "http://b.example/", 5.0)
    with pytest.raises(SubscriptionError, match=r"webhooks\.max_subscriptions") as exc:
        subs.add("C", "http://c.example/", 6.0)
    assert exc.value.status == 503
    for bad in ("ftp://x.example/", "file:///etc/passwd", "javascript:alert(1)", "http:///x"):
        with pytest.raises(SubscriptionError) as exc:
            Subscriptions({}, max_total=9, max_per_address=9).add("A", bad, 1.0)
        assert exc.value.status == 400
    assert subs.remove(one.id) == one and subs.remove(one.id) is None


async def test_subscriptions_persist_atomically(tmp_path: Path) -> None:
    path = tmp_path / "webhooks.json"
    hooks = Webhooks(hooks_config(), pool_id="p")
    book = SubscriptionBook(hooks, Subscriptions({}, max_total=9, max_per_address=9), path)
    sub, _ = await book.subscribe("A", "http://127.0.0.1:9/h", 1.0)
    assert [r.key for r in hooks.receivers()] == [f"sub:{sub.id}"]
    assert load_subs(path) == {sub.id: sub}
    assert not path.with_name("webhooks.json.tmp").exists()  # no temp file left
    # a new book (the next start) has the subscription and its receiver
    hooks2 = Webhooks(hooks_config(), pool_id="p")
    SubscriptionBook(hooks2, Subscriptions(load_subs(path), max_total=9, max_per_address=9), path)
    assert hooks2.receivers()[0].secret == sub.secret.encode()
    assert await book.unsubscribe(sub.id) == sub
    assert load_subs(path) == {} and hooks.receivers() == []
    assert await book.unsubscribe(sub.id) is None


async def test_another_process_follows_the_subscriptions_file(tmp_path: Path) -> None:
    """Worker processes: the lead's API writes the file; every other worker reloads it when it
    changes, so the address events it sends reach subscriptions made after it started."""
    path = tmp_path / "webhooks.json"
    lead_hooks, other_hooks = (Webhooks(hooks_config(), pool_id="p") for _ in range(2))
    lead = SubscriptionBook(lead_hooks, Subscriptions({}, max_total=9, max_per_address=9), path)
    other = SubscriptionBook(other_hooks, Subscriptions({}, max_total=9, max_per_address=9), path)
    follower = asyncio.create_task(other.follow(0.02))
    try:
        sub, _ = await lead.subscribe("A", "http://127.0.0.1:9/h", 1.0)
        await wait_for(lambda: len(other_hooks.receivers()) == 1, 10, "the new subscription")
        got = other_hooks.receivers()[0]
        assert got.key == f"sub:{sub.id}" and got.secret == sub.secret.encode()
        assert got.address == "A" and other.subs.all() == [sub]

        path.write_text("{not json")  # a damaged file: logged, the subscriptions stay
        await asyncio.sleep(0.1)
        assert [r.key for r in other_hooks.receivers()] == [f"sub:{sub.id}"]

        await lead.unsubscribe(sub.id)  # writes the file again, without it
        await wait_for(lambda: other_hooks.receivers() == [], 10, "the subscription gone")
        assert other.subs.all() == [] and not follower.done()
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower


async def test_a_failed_save_keeps_nothing(tmp_path: Path) -> None:
    path = tmp_path / "missing-dir" / "webhooks.json"
    hooks = Webhooks(hooks_config(), pool_id="p")
    book = SubscriptionBook(hooks, Subscriptions({}, max_total=9, max_per_address=9), path)
    with pytest.raises(SubscriptionError, match="could not be saved") as exc:
        await book.subscribe("A", "http://127.0.0.1:9/h", 1.0)
    assert exc.value.status == 500
    assert book.subs.all() == [] and hooks.receivers() == []


def test_a_damaged_subscriptions_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "webhooks.json"
    assert load_subs(path) == {}
    for text in ("{not json", '{"subscriptions": [{"id": 1}]}', "[]"):
        path.write_text(text)
        with pytest.raises(SubscriptionsFileError, match=r"webhooks\.json"):
            load_subs(path)
    good = Subscription("i", "A", "gopher://x/", "s", 1.0)
    save(path, [good])
    with pytest.raises(SubscriptionsFileError, match="http"):
        load_subs(path)


# -- config ---------------------------------------------------------------------------------------


def test_the_shipped_config_has_webhooks_off() -> None:
    assert load(env={}).webhooks == WebhooksConfig()
    assert WebhooksConfig().enabled is False


def test_offline_must_come_before_the_worker_is_forgotten() -> None:
    cfg = PoolConfig(
        webhooks=WebhooksConfig(worker_offline_seconds=7200.0),
        limits=LimitsConfig(worker_idle_seconds=7200.0),
    )
    with pytest.raises(ConfigError, match=r"limits\.worker_idle_seconds"):
        validate(cfg, "test.toml")
    validate(dataclasses.replace(cfg, limits=LimitsConfig(worker_idle_seconds=7201.0)), "t")


@pytest.mark.parametrize(
    ("hooks", "message"),
    [
        (WebhooksConfig(urls=(WebhookUrlConfig(url="ftp://x/"),)), r"webhooks.urls\[0\].url"),
        (WebhooksConfig(urls=(WebhookUrlConfig(url=""),)), r"webhooks.urls\[0\].url"),
        (
            WebhooksConfig(urls=(WebhookUrlConfig(url="http://x/", events=("block_eaten",)),)),
            r"webhooks.urls\[0\].events",
        ),
        (WebhooksConfig(max_attempts=0), "webhooks.max_attempts"),
        (WebhooksConfig(queue_size=0), "webhooks.queue_size"),
        (WebhooksConfig(max_subscriptions=0), "webhooks.max_subscriptions"),
        (WebhooksConfig(max_subscriptions_per_address=0), "max_subscriptions_per_address"),
        (WebhooksConfig(timeout_seconds=0), "webhooks.timeout_seconds"),
        (WebhooksConfig(retry_seconds=5, retry_max_seconds=1), "retry_seconds"),
        (WebhooksConfig(check_seconds=0), "webhooks.check_seconds"),
        (WebhooksConfig(worker_offline_seconds=1, check_seconds=5), "worker_offline_seconds"),
    ],
)
def test_bad_webhook_config_is_refused(hooks: WebhooksConfig, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate(PoolConfig(webhooks=hooks), "test.toml")


def test_webhook_config_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "pool.toml"
    path.write_text(
        '[webhooks]\nenabled = true\nsubscriptions = "open"\n'
        '[[webhooks.urls]]\nurl = "https://h.example/x"\nevents = ["block_found"]\n'
    )
    cfg = load(path, env={}).webhooks
    assert cfg.enabled and cfg.subscriptions == "open"
    assert cfg.urls == (WebhookUrlConfig(url="https://h.example/x", events=("block_found",)),)
    path.write_text('[webhooks]\nsubscriptions = "anyone"\n')
    with pytest.raises(ConfigError, match=r"webhooks\.subscriptions must be one of"):
        load(path, env={})


async def test_metrics_count_the_dropped(tmp_path: Path) -> None:
    cfg = hooks_config(
        WebhookUrlConfig(url=closed_port_url()),
        queue_size=2,
        retry_seconds=60.0,
        retry_max_seconds=60.0,
    )
    hooks = Webhooks(cfg, pool_id="p")
    book = SubscriptionBook(
        hooks, Subscriptions({}, max_total=9, max_per_address=9), tmp_path / "w.json"
    )
    for i in range(5):
        hooks.emit("block_found", {"height": i})
    text = render(webhook_metrics(types.SimpleNamespace(book=book), "stratum_pool_"))
    assert 'stratum_pool_webhook_deliveries_total{outcome="dropped"} 3' in text
    assert "stratum_pool_webhook_queued 2" in text
    assert "stratum_pool_webhook_subscriptions 0" in text
    assert webhook_metrics(None, "stratum_pool_") == []  # webhooks off: no series


async def test_payout_sent_to_the_operator_and_each_address(
    receivers: list[HookReceiver], tmp_path: Path
) -> None:
    operator, miner = await receiver(receivers), await receiver(receivers)
    hooks = Webhooks(hooks_config(WebhookUrlConfig(url=operator.url)), pool_id="p")
    book = SubscriptionBook(
        hooks, Subscriptions({}, max_total=9, max_per_address=9), tmp_path / "w.json"
    )
    sub, _ = await book.subscribe("addrA", miner.url, 1.0)
    wiring = PoolWebhooks(hooks, book)
    await hooks.start()
    try:
        wiring.payout_round(RoundResult(status="waiting_for_funds", paid={}))  # nothing sent
        wiring.payout_round(
            RoundResult(
                status="paid", payout_id="p1", txid="ab" * 32, paid={"addrA": 700, "addrB": 300}
            )
        )
        wiring.blocks_changed(["cc:pending->confirmed"])
        await wait_for(lambda: len(operator.hits) == 2 and len(miner.hits) == 1, 10, "hits")
    finally:
        await hooks.close()
    assert operator.hits[0].json["data"] == {
        "payout_id": "p1",
        "txid": "ab" * 32,
        "paid": {"addrA": 700, "addrB": 300},
        "total_sat": 1000,
    }
    assert operator.hits[1].json["event"] == "block_confirmed"
    mine = miner.hits[0]
    assert mine.json["data"] == {
        "payout_id": "p1",
        "txid": "ab" * 32,
        "address": "addrA",
        "amount_sat": 700,
    }
    expected = hmac.new(sub.secret.encode(), mine.body, hashlib.sha256).hexdigest()
    assert mine.headers["X-Webhook-Signature"] == f"sha256={expected}"
