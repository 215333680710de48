"""The [webhooks] section of the config: its keys and its checks (pool.config uses both)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class WebhookUrlConfig:
    url: str = ""  # http:// or https://
    events: tuple[str, ...] = ()  # only these events (pool.webhooks.EVENTS); empty: every event


@dataclass(frozen=True)
class WebhooksConfig:
    enabled: bool = False
    urls: tuple[WebhookUrlConfig, ...] = ()
    pool_id: str = ""  # the "pool" field of every body; empty: pool.pool_tag
    secret_env: str = "POOL_WEBHOOK_SECRET"  # HMAC-SHA256 key for the configured URLs; unset: none
    timeout_seconds: float = 5.0  # one delivery attempt
    max_attempts: int = 5  # attempts per delivery, then it is dropped (counted)
    retry_seconds: float = 1.0  # first retry delay, doubled per failure...
    retry_max_seconds: float = 60.0  # ...up to this
    queue_size: int = 1000  # deliveries waiting per receiver; over it the oldest is dropped
    worker_offline_seconds: float = 600.0  # no accepted share this long: worker_offline
    check_seconds: float = 5.0  # workers and pool health are checked this often
    subscriptions: str = "admin"  # POST /api/webhooks: admin (token) | open (anyone) | off
    max_subscriptions: int = 1000  # per-address subscriptions in all
    max_subscriptions_per_address: int = 4  # URLs one address may subscribe


WEBHOOK_EVENTS = (  # pool.webhooks sends these
    "block_found",
    "block_confirmed",
    "block_orphaned",
    "worker_offline",
    "worker_back",
    "pool_degraded",
    "pool_healthy",
    "payout_sent",
)


def webhook_url_problem(url: str) -> str | None:
    """Why ``url`` cannot receive webhooks (None: it can): http(s) with a host only."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError as exc:
        return f"is not a URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname or any(c.isspace() for c in url):
        return "must name a host (and hold no spaces)"
    if len(url) > 2048:
        return "must be at most 2048 characters"
    return None


def validate_webhooks(
    hooks: WebhooksConfig, fail: Callable[[str, str], None], worker_idle_seconds: float
) -> None:
    """The [webhooks] checks of ``pool.config.validate``."""
    for i, target in enumerate(hooks.urls):
        problem = webhook_url_problem(target.url)
        if problem is not None:
            fail(f"webhooks.urls[{i}].url", f"{problem}, got {target.url!r}")
        for event in target.events:
            if event not in WEBHOOK_EVENTS:
                fail(
                    f"webhooks.urls[{i}].events",
                    f"has {event!r}; the events are {', '.join(WEBHOOK_EVENTS)}",
                )
    for name in (
        "max_attempts",
        "queue_size",
        "max_subscriptions",
        "max_subscriptions_per_address",
    ):
        if getattr(hooks, name) < 1:
            fail(f"webhooks.{name}", "must be at least 1")
    if not 0.1 <= hooks.timeout_seconds <= 300:
        fail("webhooks.timeout_seconds", "must be 0.1..300 seconds")
    if not 0.01 <= hooks.retry_seconds <= hooks.retry_max_seconds <= 86400:
        fail("webhooks", "needs 0.01 <= retry_seconds <= retry_max_seconds <= 86400")
    if not 0.1 <= hooks.check_seconds <= 3600:
        fail("webhooks.check_seconds", "must be 0.1..3600 seconds")
    if not hooks.worker_offline_seconds >= hooks.check_seconds:
        fail("webhooks.worker_offline_seconds", "must be at least webhooks.check_seconds")
    if not hooks.worker_offline_seconds < worker_idle_seconds:
        fail(
            "webhooks.worker_offline_seconds",
            "must be less than limits.worker_idle_seconds (a worker forgotten first is never "
            "said to be offline)",
        )
