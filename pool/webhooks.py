"""Webhooks: JSON POSTs to configured URLs (and per-address subscriptions) on pool events.

Events (``EVENTS``): block_found / block_confirmed / block_orphaned, worker_offline /
worker_back, pool_degraded / pool_healthy, payout_sent. Each delivery is one POST of
``{"id", "event", "time", "pool", "data"}`` with the headers ``X-Webhook-Event``,
``X-Webhook-Id`` and, when a secret is known, ``X-Webhook-Signature: sha256=<hex>`` (HMAC-SHA256
of the body's exact bytes). The configured URLs share the secret from the environment variable
``webhooks.secret_env``; each subscription has its own (see ``pool.webhook_subs``).

Never blocking the pool: ``emit`` only appends to a queue. Every receiver has its own bounded
queue (``webhooks.queue_size``; when full the oldest delivery is dropped and counted) and its own
sender task, so a receiver that is down or slow (each attempt ends after
``webhooks.timeout_seconds``) delays only its own deliveries. A failed attempt (no answer, a
timeout, 5xx, 408 or 429) is retried after ``retry_seconds``, doubled per failure up to
``retry_max_seconds``, ``max_attempts`` attempts in all; other 4xx answers are not retried.
Deliveries still queued when the pool stops are written to the data dir (``outbox_path``,
fsynced) and queued again at the next start for the same receiver (same key and URL); those
whose receiver is gone by then are dropped and counted in the log.

Worker events: a worker that had an accepted share in this run and none for
``worker_offline_seconds`` is offline (once); its next accepted share makes it back. Workers
that never had an accepted share, and everything before the start, raise nothing: no storm at
start-up. Pool health: the same checks as /healthz every ``check_seconds``; pool_degraded when
they start failing (with the reasons), pool_healthy when they pass again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from pool.stats import WorkerStats
from pool.tasks import Backoff
from pool.webhook_config import WEBHOOK_EVENTS, WebhooksConfig

log = structlog.get_logger("pool.webhooks")

EVENTS = WEBHOOK_EVENTS
ADDRESS_EVENTS = frozenset({"worker_offline", "worker_back", "payout_sent"})
USER_AGENT = "stratum-pool-webhooks/1"
NO_RETRY_BELOW_500 = frozenset({408, 429})  # 4xx answers that are retried all the same


@dataclass(frozen=True)
class Receiver:
    """One URL: the configured ones (``address`` None) or a subscription."""

    key: str  # "config:<i>" or "sub:<id>"
    url: str
    secret: bytes
    events: frozenset[str] | None = None  # None: every event (subscriptions: ADDRESS_EVENTS)
    address: str | None = None

    def wants(self, event: str, address: str | None) -> bool:
        if self.address is not None:
            return event in ADDRESS_EVENTS and address == self.address
        return self.events is None or event in self.events


@dataclass
class Delivery:
    id: str
    event: str
    body: bytes
    attempts: int = 0


@dataclass
class Counters:
    """Totals since the start (GET /api/webhooks and /metrics show them)."""

    emitted: int = 0
    delivered: int = 0
    failed: int = 0  # gave up after max_attempts (or a 4xx)
    dropped: int = 0  # the oldest of a full queue
    retries: int = 0
    attempts: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def sign(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


@dataclass
class _Outbox:
    receiver: Receiver
    queue: deque[Delivery] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class Webhooks:
    """The senders. ``emit`` is synchronous and never waits; ``start`` and ``close`` bracket
    the background tasks."""

    def __init__(
        self,
        config: WebhooksConfig,
        *,
        pool_id: str,
        secret: str = "",
        clock: Callable[[], float] = time.time,
        outbox_path: Path | None = None,
    ) -> None:
        """``outbox_path``: where deliveries still queued at ``close`` are kept for the next
        start (None: they are lost, the log says how many)."""
        self.config = config
        self.outbox_path = outbox_path
        self.pool_id = pool_id
        self.clock = clock
        self.counters = Counters()
        self._secret = secret.encode()
        self._outboxes: dict[str, _Outbox] = {}
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        for i, target in enumerate(config.urls):
            self.add_receiver(
                Receiver(
                    key=f"config:{i}",
                    url=target.url,
                    secret=self._secret,
                    events=frozenset(target.events) or None,
                )
            )

    # -- receivers --------------------------------------------------------------------------------
    def add_receiver(self, receiver: Receiver) -> None:
        if receiver.key not in self._outboxes:
            self._outboxes[receiver.key] = _Outbox(receiver)
            if self._session is not None:
                self._start_sender(self._outboxes[receiver.key])

    def remove_receiver(self, key: str) -> None:
        box = self._outboxes.pop(key, None)
        if box is not None and box.task is not None:
            box.task.cancel()

    def receivers(self) -> list[Receiver]:
        return [box.receiver for box in self._outboxes.values()]

    def queued(self) -> int:
        return sum(len(box.queue) for box in self._outboxes.values())

    # -- events -----------------------------------------------------------------------------------
    def emit(
        self,
        event: str,
        data: Mapping[str, Any],
        *,
        address: str | None = None,
        subscriptions_only: bool = False,
    ) -> int:
        """Queue ``event`` for every receiver that wants it (``address``: whose event it is,
        for the subscriptions; ``subscriptions_only``: not for the configured URLs); returns
        how many. Never waits."""
        if event not in EVENTS:
            raise ValueError(f"unknown webhook event {event!r}")
        if self._closed:
            return 0
        boxes = [
            b
            for b in self._outboxes.values()
            if b.receiver.wants(event, address)
            and not (subscriptions_only and b.receiver.address is None)
        ]
        if not boxes:
            return 0
        self.counters.emitted += 1
        delivery_id = secrets.token_hex(12)
        body = json.dumps(
            {
                "id": delivery_id,
                "event": event,
                "time": self.clock(),
                "pool": self.pool_id,
                "data": dict(data),
            },
            separators=(",", ":"),
        ).encode()
        for box in boxes:
            if len(box.queue) >= self.config.queue_size:
                old = box.queue.popleft()
                self.counters.dropped += 1
                log.warning(
                    "webhook_dropped",
                    url=box.receiver.url,
                    hook_event=old.event,
                    id=old.id,
                    why="queue full (webhooks.queue_size)",
                )
            box.queue.append(Delivery(delivery_id, event, body))
            box.wake.set()
        return len(boxes)

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.config.timeout_seconds),
            headers={"User-Agent": USER_AGENT, "Content-Type": "application/json"},
        )
        restored = self._restore_outbox()
        for box in self._outboxes.values():
            self._start_sender(box)
        if restored:
            log.info("webhooks_restored", deliveries=restored)
        log.info(
            "webhooks_started",
            urls=[r.url for r in self.receivers() if r.address is None],
            subscriptions=sum(1 for r in self.receivers() if r.address is not None),
            signed=bool(self._secret),
        )

    def _start_sender(self, box: _Outbox) -> None:
        box.task = asyncio.create_task(self._sender(box), name=f"webhook-{box.receiver.key}")

    async def close(self) -> None:
        self._closed = True
        tasks = [b.task for b in self._outboxes.values() if b.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        lost = self.queued()
        if lost and self._keep_outbox():
            log.info("webhooks_kept_for_next_start", deliveries=lost)
        elif lost:
            log.warning("webhooks_not_delivered_at_stop", deliveries=lost)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _keep_outbox(self) -> bool:
        """Write the queued deliveries to ``outbox_path`` (whole or not at all); whether they
        were kept."""
        if self.outbox_path is None:
            return False
        rows = [
            {
                "receiver": box.receiver.key,
                "url": box.receiver.url,
                "id": d.id,
                "event": d.event,
                "body": d.body.decode(),
            }
            for box in self._outboxes.values()
            for d in box.queue
        ]
        tmp = self.outbox_path.with_name(self.outbox_path.name + ".tmp")
        try:
            self.outbox_path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, separators=(",", ":")) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.outbox_path)
        except OSError as exc:
            log.warning("webhooks_outbox_not_written", error=repr(exc))
            with contextlib.suppress(OSError):
                tmp.unlink()
            return False
        return True

    def _restore_outbox(self) -> int:
        """Queue the deliveries kept at the last stop again (before anything new); returns
        how many. A damaged file is set aside, never a reason not to start."""
        path = self.outbox_path
        if path is None or not path.exists():
            return 0
        restored = gone = 0
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
            for line in lines:
                row = json.loads(line)
                box = self._outboxes.get(str(row["receiver"]))
                if box is None or box.receiver.url != row["url"]:
                    gone += 1
                    continue
                if len(box.queue) >= self.config.queue_size:
                    self.counters.dropped += 1
                    continue
                box.queue.append(Delivery(str(row["id"]), str(row["event"]), row["body"].encode()))
                box.wake.set()
                restored += 1
            path.unlink()
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            aside = path.with_name(path.name + ".damaged")
            with contextlib.suppress(OSError):
                os.replace(path, aside)
            log.error("webhooks_outbox_unreadable", error=repr(exc), moved_to=aside.name)
        if gone:
            log.warning("webhooks_outbox_receiver_gone", deliveries=gone)
        return restored

    # -- sending ----------------------------------------------------------------------------------
    async def _sender(self, box: _Outbox) -> None:
        """One receiver's deliveries, oldest first, each retried with backoff until delivered
        or out of attempts. Runs until the pool stops."""
        cfg = self.config
        backoff = Backoff(cfg.retry_seconds, cfg.retry_max_seconds)
        while True:
            if not box.queue:
                box.wake.clear()
                await box.wake.wait()
                continue
            delivery = box.queue[0]
            try:
                outcome = await self._attempt(box.receiver, delivery)
            except Exception as exc:  # a bug must not end this receiver's deliveries
                log.exception("webhook_attempt_crashed", url=box.receiver.url, error=repr(exc))
                outcome = None
            if outcome is None:  # retry later (unless out of attempts)
                if delivery.attempts < cfg.max_attempts:
                    self.counters.retries += 1
                    await asyncio.sleep(backoff.next_delay())
                    continue
                outcome = f"gave up after {delivery.attempts} attempts"
            backoff.reset()
            if box.queue and box.queue[0] is delivery:  # (it may have been dropped meanwhile)
                box.queue.popleft()
            if outcome == "ok":
                self.counters.delivered += 1
            else:
                self.counters.failed += 1
                log.warning(
                    "webhook_failed",
                    url=box.receiver.url,
                    hook_event=delivery.event,
                    id=delivery.id,
                    why=outcome,
                )

    async def _attempt(self, receiver: Receiver, delivery: Delivery) -> str | None:
        """ "ok", a final failure's reason, or None for a failure worth retrying."""
        assert self._session is not None
        delivery.attempts += 1
        self.counters.attempts += 1
        headers = {"X-Webhook-Event": delivery.event, "X-Webhook-Id": delivery.id}
        if receiver.secret:
            headers["X-Webhook-Signature"] = sign(receiver.secret, delivery.body)
        try:
            async with self._session.post(
                receiver.url, data=delivery.body, headers=headers, allow_redirects=False
            ) as resp:
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.info(
                "webhook_attempt_failed",
                url=receiver.url,
                hook_event=delivery.event,
                attempt=delivery.attempts,
                error=type(exc).__name__,
            )
            return None
        if 200 <= status < 300:
            return "ok"
        log.info(
            "webhook_attempt_failed",
            url=receiver.url,
            hook_event=delivery.event,
            attempt=delivery.attempts,
            status=status,
        )
        if status < 500 and status not in NO_RETRY_BELOW_500:
            return f"the receiver answered {status}"
        return None


# -- what raises events ---------------------------------------------------------------------------


class WorkerWatch:
    """Worker offline / back (pure: the clock is passed in). Only workers seen with an
    accepted share since this watch began count; a worker forgotten by the stats is forgotten
    here too."""

    def __init__(self, offline_seconds: float, started: float) -> None:
        self.offline_seconds = offline_seconds
        self.started = started
        self.offline: dict[str, float] = {}  # worker -> its last share when it went offline

    def check(
        self, workers: Mapping[str, WorkerStats], now: float
    ) -> list[tuple[str, dict[str, Any], str]]:
        """(event, data, address) for each change since the last check."""
        out: list[tuple[str, dict[str, Any], str]] = []
        for name in [n for n in self.offline if n not in workers]:
            del self.offline[name]
        for name, stats in workers.items():
            last = stats.last_share
            if last is None or last < self.started:
                continue
            if name in self.offline:
                if last > self.offline[name]:
                    del self.offline[name]
                    out.append(("worker_back", _worker_data(stats, now), stats.address))
            elif now - last >= self.offline_seconds:
                self.offline[name] = last
                out.append(("worker_offline", _worker_data(stats, now), stats.address))
        return out


def _worker_data(stats: WorkerStats, now: float) -> dict[str, Any]:
    assert stats.last_share is not None
    return {
        "worker": stats.name,
        "address": stats.address,
        "last_share": stats.last_share,
        "seconds_since_share": round(now - stats.last_share, 3),
        "connections": stats.connections,
    }


class HealthWatch:
    """pool_degraded / pool_healthy on changes of the /healthz verdict (the first check only
    says something when the pool is degraded)."""

    def __init__(self) -> None:
        self.healthy: bool | None = None

    def check(self, reasons: list[str]) -> tuple[str, dict[str, Any]] | None:
        healthy = not reasons
        was, self.healthy = self.healthy, healthy
        if healthy == was or (was is None and healthy):
            return None
        if healthy:
            return "pool_healthy", {"reasons": []}
        return "pool_degraded", {"reasons": list(reasons)}


def block_change_events(changes: Iterable[str]) -> list[tuple[str, dict[str, Any]]]:
    """The ledger's ``hash:old->new`` block changes as block_confirmed / block_orphaned."""
    out: list[tuple[str, dict[str, Any]]] = []
    for change in changes:
        block_hash, _, move = change.partition(":")
        old, _, new = move.partition("->")
        event = {"confirmed": "block_confirmed", "orphaned": "block_orphaned"}.get(new)
        if event is not None:
            out.append((event, {"hash": block_hash, "from": old, "status": new}))
    return out


async def monitor(
    hooks: Webhooks,
    workers: Callable[[], Mapping[str, WorkerStats]],
    health: Callable[[], Awaitable[list[str]]],
    *,
    clock: Callable[[], float] = time.time,
) -> None:
    """Every ``check_seconds``: worker offline / back and pool health. Runs until cancelled."""
    cfg = hooks.config
    watch = WorkerWatch(cfg.worker_offline_seconds, clock())
    healthy = HealthWatch()
    while True:
        await asyncio.sleep(cfg.check_seconds)
        for event, data, address in watch.check(workers(), clock()):
            hooks.emit(event, data, address=address)
        try:
            change = healthy.check(await health())
        except Exception as exc:  # the check itself failed: that is no verdict
            log.warning("webhook_health_check_failed", error=repr(exc))
            continue
        if change is not None:
            hooks.emit(change[0], change[1])
