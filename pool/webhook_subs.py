"""Per-address webhook subscriptions (POST /api/webhooks), kept in DATA/webhooks.json.

A subscription sends one payout address's own events (its workers going offline and coming
back, payouts sent to it) to one http(s) URL. Each gets a random id (DELETE
/api/webhooks/{id} ends it: knowing the id is the right to) and its own random secret, which
signs its deliveries (``X-Webhook-Signature``); both are shown once, in the answer to the POST.
The file is written atomically (a crash leaves the old list or the new one) and a damaged file
stops the start with a message naming it, as the bans file does.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from pool.webhook_config import webhook_url_problem
from pool.webhooks import ADDRESS_EVENTS, Receiver, Webhooks

FILE_NAME = "webhooks.json"

log = structlog.get_logger("pool.webhooks")


class SubscriptionError(ValueError):
    """Refused: the message says why (the API answers it with ``status``)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class SubscriptionsFileError(RuntimeError):
    """The subscriptions file cannot be used; the message names it."""


@dataclass(frozen=True)
class Subscription:
    id: str
    address: str
    url: str
    secret: str
    created: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "address": self.address,
            "url": self.url,
            "secret": self.secret,
            "created": self.created,
        }

    def public(self) -> dict[str, Any]:
        """What listings show (the secret only in the answer to the POST)."""
        return {"id": self.id, "address": self.address, "url": self.url, "created": self.created}


def load(path: Path) -> dict[str, Subscription]:
    """The saved subscriptions by id (none when the file does not exist)."""
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise SubscriptionsFileError(f"{path}: cannot be read ({exc})") from exc
    try:
        data = json.loads(raw)
        subs = [Subscription(**item) for item in data["subscriptions"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise SubscriptionsFileError(
            f"{path}: not a webhook subscriptions file ({exc!r}); fix or remove it"
        ) from exc
    for sub in subs:
        problem = webhook_url_problem(sub.url)
        if problem is not None:
            raise SubscriptionsFileError(f"{path}: subscription {sub.id}: url {problem}")
    return {sub.id: sub for sub in subs}


def save(path: Path, subs: list[Subscription]) -> None:
    """Atomically: write a temporary file, fsync it, rename it over the old one."""
    tmp = path.with_name(path.name + ".tmp")
    body = json.dumps({"subscriptions": [s.to_dict() for s in subs]}, indent=1)
    with tmp.open("w") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class Subscriptions:
    """The subscriptions in memory (the caller saves them after a change)."""

    def __init__(
        self, subs: dict[str, Subscription], *, max_total: int, max_per_address: int
    ) -> None:
        self.by_id = dict(subs)
        self.max_total = max_total
        self.max_per_address = max_per_address

    def for_address(self, address: str) -> list[Subscription]:
        return [s for s in self.by_id.values() if s.address == address]

    def add(self, address: str, url: str, now: float) -> tuple[Subscription, bool]:
        """Subscribe ``url`` to ``address``'s events; (the subscription, whether it is new).
        The same address and URL again gives the existing subscription."""
        problem = webhook_url_problem(url)
        if problem is not None:
            raise SubscriptionError(f"url {problem}, got {url[:200]!r}")
        mine = self.for_address(address)
        for sub in mine:
            if sub.url == url:
                return sub, False
        if len(mine) >= self.max_per_address:
            raise SubscriptionError(
                f"address {address} has {len(mine)} subscriptions, the most allowed "
                "(webhooks.max_subscriptions_per_address): delete one first",
                status=409,
            )
        if len(self.by_id) >= self.max_total:
            raise SubscriptionError(
                f"the pool has {len(self.by_id)} subscriptions, the most allowed "
                "(webhooks.max_subscriptions)",
                status=503,
            )
        sub = Subscription(
            id=secrets.token_hex(16),
            address=address,
            url=url,
            secret=secrets.token_hex(32),
            created=now,
        )
        self.by_id[sub.id] = sub
        return sub, True

    def remove(self, sub_id: str) -> Subscription | None:
        return self.by_id.pop(sub_id, None)

    def all(self) -> list[Subscription]:
        return sorted(self.by_id.values(), key=lambda s: (s.created, s.id))


class SubscriptionBook:
    """The subscriptions, their file and their receivers kept in step (one change at a time)."""

    def __init__(self, hooks: Webhooks, subs: Subscriptions, path: Path) -> None:
        self.hooks = hooks
        self.subs = subs
        self.path = path
        self.lock = asyncio.Lock()
        for sub in subs.all():
            hooks.add_receiver(receiver_for(sub))

    async def subscribe(self, address: str, url: str, now: float) -> tuple[Subscription, bool]:
        async with self.lock:
            sub, new = self.subs.add(address, url, now)
            if new:
                try:
                    await asyncio.to_thread(save, self.path, self.subs.all())
                except OSError as exc:
                    self.subs.remove(sub.id)
                    raise SubscriptionError(
                        f"the subscription could not be saved to {self.path} ({exc})", status=500
                    ) from exc
                self.hooks.add_receiver(receiver_for(sub))
            return sub, new

    async def unsubscribe(self, sub_id: str) -> Subscription | None:
        async with self.lock:
            sub = self.subs.remove(sub_id)
            if sub is None:
                return None
            try:
                await asyncio.to_thread(save, self.path, self.subs.all())
            except OSError as exc:
                self.subs.by_id[sub.id] = sub
                raise SubscriptionError(
                    f"the subscription could not be removed from {self.path} ({exc})", status=500
                ) from exc
            self.hooks.remove_receiver(f"sub:{sub.id}")
            return sub

    async def reload(self) -> tuple[int, int]:
        """Take the file as it is now (another worker process's API changed it): receivers
        added for new subscriptions, removed for deleted ones; (added, removed). Raises
        ``SubscriptionsFileError`` for a damaged file (nothing changes then)."""
        async with self.lock:
            saved = await asyncio.to_thread(load, self.path)
            gone = [sub_id for sub_id in self.subs.by_id if sub_id not in saved]
            new = [sub for sub_id, sub in saved.items() if sub_id not in self.subs.by_id]
            for sub_id in gone:
                del self.subs.by_id[sub_id]
                self.hooks.remove_receiver(f"sub:{sub_id}")
            for sub in new:
                self.subs.by_id[sub.id] = sub
                self.hooks.add_receiver(receiver_for(sub))
            return len(new), len(gone)

    def stamp(self) -> tuple[int, int, int] | None:
        """The file's identity and change stamp (None: no file)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    async def follow(self, interval: float) -> None:
        """Reload whenever the file changes (checked every ``interval`` seconds): with several
        worker processes only the lead serves the API, and every process sends the address
        events of its own workers and payouts."""
        seen = self.stamp()
        while True:
            await asyncio.sleep(interval)
            stamp = self.stamp()
            if stamp == seen:
                continue
            try:
                added, removed = await self.reload()
            except SubscriptionsFileError as exc:
                log.warning("webhook_subscriptions_not_reloaded", error=str(exc))
            else:
                if added or removed:
                    log.info("webhook_subscriptions_reloaded", added=added, removed=removed)
            seen = stamp


def receiver_for(sub: Subscription) -> Receiver:
    return Receiver(
        key=f"sub:{sub.id}",
        url=sub.url,
        secret=sub.secret.encode(),
        events=ADDRESS_EVENTS,
        address=sub.address,
    )
