"""Webhook subscriptions through the API.

``POST /api/webhooks {"address": A, "url": U}`` subscribes U to A's own events (its workers'
worker_offline / worker_back, payouts sent to A): 201 with the subscription's id and secret
(shown this once), 200 with the same subscription when it exists already. ``DELETE
/api/webhooks/{id}`` ends it. ``GET /api/webhooks`` (admin) lists the receivers, the
subscriptions (without secrets) and the delivery counters.

Who may subscribe (``webhooks.subscriptions``): ``admin`` (the default) needs the admin token,
since the pool cannot tell who owns an address without a signature and each subscription makes
the pool POST to a URL of the caller's choice; ``open`` lets anyone subscribe (the events carry
only what GET /api/addresses/{A} shows anyone already; bounded by ``webhooks.max_subscriptions``
and ``webhooks.max_subscriptions_per_address``; URLs naming localhost or an internal IP address
are refused); ``off`` refuses all.
"""

from __future__ import annotations

import ipaddress
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog
from aiohttp import web

from pool.api.body import json_body
from pool.api.metrics import Metric, counter, gauge, sample
from pool.api.views import ApiError
from pool.bitcoin import AddressError, address_to_script
from pool.webhook_subs import SubscriptionBook, SubscriptionError
from pool.webhooks import ADDRESS_EVENTS

if TYPE_CHECKING:
    from pool.api.server import ApiServer, Handler

log = structlog.get_logger("pool.api")

MAX_ADDRESS_CHARS = 100


def add(router: web.UrlDispatcher, api: ApiServer) -> None:
    mode = api.app.config.webhooks.subscriptions
    routes = WebhookRoutes(api, mode)
    post: Handler = routes.post
    delete: Handler = routes.delete
    if mode == "admin":
        post, delete = api.admin(post), api.admin(delete)
    elif mode == "off":
        post = delete = routes.off
    router.add_post("/api/webhooks", post)
    router.add_delete("/api/webhooks/{id}", delete)
    router.add_get("/api/webhooks", api.admin(routes.get))


class WebhookRoutes:
    def __init__(self, api: ApiServer, mode: str) -> None:
        self.api = api
        self.mode = mode  # webhooks.subscriptions when the routes were built

    def _book(self) -> SubscriptionBook:
        wiring = getattr(self.api.app, "webhooks", None)
        if wiring is None:
            raise ApiError(403, "webhooks are off (webhooks.enabled = false)")
        book: SubscriptionBook = wiring.book
        return book

    async def off(self, request: web.Request) -> web.Response:
        raise ApiError(403, "webhook subscriptions are off (webhooks.subscriptions = off)")

    async def post(self, request: web.Request) -> web.Response:
        book = self._book()
        body = await json_body(request)
        if set(body) != {"address", "url"}:
            raise ApiError(400, 'the body must be {"address": "<payout address>", "url": "<URL>"}')
        address, url = body["address"], body["url"]
        if not isinstance(address, str) or not isinstance(url, str):
            raise ApiError(400, "address and url must be strings")
        network = self.api.app.network
        if network is None or len(address) > MAX_ADDRESS_CHARS:
            raise ApiError(400, "not a payout address of this pool's chain", address=address[:100])
        try:
            address_to_script(address, network)
        except AddressError as exc:
            raise ApiError(
                400, f"{address[:100]!r} is not an address on {network.name}: {exc}"
            ) from None
        if self.mode == "open":
            refused = _internal_host(url)
            if refused is not None:
                raise ApiError(400, f"url: {refused}")
        try:
            sub, new = await book.subscribe(address, url, time.time())
        except SubscriptionError as exc:
            raise ApiError(exc.status, str(exc)) from None
        if new:
            log.info("webhook_subscribed", id=sub.id, address=address, url=url, peer=request.remote)
        answer: dict[str, Any] = {**sub.to_dict(), "events": sorted(ADDRESS_EVENTS)}
        return web.json_response(answer, status=201 if new else 200)

    async def delete(self, request: web.Request) -> web.Response:
        book = self._book()
        sub_id = request.match_info["id"]
        try:
            sub = await book.unsubscribe(sub_id)
        except SubscriptionError as exc:
            raise ApiError(exc.status, str(exc)) from None
        if sub is None:
            raise ApiError(404, "no such webhook subscription", id=sub_id[:100])
        log.info("webhook_unsubscribed", id=sub.id, address=sub.address, peer=request.remote)
        return web.json_response({"deleted": sub.public()})

    async def get(self, request: web.Request) -> web.Response:
        book = self._book()
        hooks = book.hooks
        return web.json_response(
            {
                "urls": [
                    {"url": r.url, "events": sorted(r.events) if r.events else "all"}
                    for r in hooks.receivers()
                    if r.address is None
                ],
                "subscriptions": [s.public() for s in book.subs.all()],
                "counters": hooks.counters.as_dict(),
                "queued": hooks.queued(),
            }
        )


def _internal_host(url: str) -> str | None:
    """Open subscriptions never target the pool's own machine or network: a loopback,
    private, link-local or unspecified IP address, or localhost, is refused (names that
    resolve to such addresses cannot be told apart here: use admin subscriptions where that
    matters)."""
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return "localhost is not allowed for open subscriptions"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_unspecified
        or (ip.is_multicast or ip.is_reserved)
    ):
        return f"{host} is an internal address, not allowed for open subscriptions"
    return None


def webhook_metrics(wiring: object, prefix: str) -> list[Metric]:
    """/metrics: the webhook deliveries (nothing while webhooks are off)."""
    book = getattr(wiring, "book", None)
    if not isinstance(book, SubscriptionBook):
        return []
    hooks = book.hooks
    c = hooks.counters
    return [
        counter(
            prefix + "webhook_deliveries_total",
            "Webhook deliveries by outcome: delivered; failed (out of attempts, or a 4xx); "
            "dropped (the oldest of a full queue, webhooks.queue_size).",
            [
                sample(c.delivered, {"outcome": "delivered"}),
                sample(c.failed, {"outcome": "failed"}),
                sample(c.dropped, {"outcome": "dropped"}),
            ],
        ),
        counter(
            prefix + "webhook_attempts_total",
            "Webhook POSTs sent (first attempts and retries).",
            c.attempts,
        ),
        counter(prefix + "webhook_retries_total", "Webhook attempts that were retried.", c.retries),
        gauge(prefix + "webhook_queued", "Webhook deliveries waiting to be sent.", hooks.queued()),
        gauge(
            prefix + "webhook_subscriptions",
            "Per-address webhook subscriptions (POST /api/webhooks).",
            len(book.subs.by_id),
        ),
    ]
