"""The pool's side of the webhooks: what the app calls when something happens.

Block found: a block listener of the Stratum server (bitcoind accepted the block). Block
confirmed / orphaned: the ledger's block check. Payout sent: a paid payout round (one event
with every recipient for the configured URLs, and one per address for its subscriptions).
Workers and health: ``pool.webhooks.monitor``, supervised like every background task.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any

import structlog

from pool.config import Config
from pool.ledger.payouts import RoundResult
from pool.node.submit import BlockSubmission
from pool.server.auth import Credentials
from pool.shares import ShareResult
from pool.stats import WorkerStats
from pool.webhook_subs import FILE_NAME, SubscriptionBook, Subscriptions, load
from pool.webhooks import Webhooks, block_change_events, monitor

log = structlog.get_logger("pool.webhooks")

OUTBOX_FILE = "webhooks-outbox.jsonl"  # deliveries queued at the last stop


class PoolWebhooks:
    def __init__(self, hooks: Webhooks, book: SubscriptionBook) -> None:
        self.hooks = hooks
        self.book = book

    @classmethod
    def open(cls, config: Config, data_dir: Path) -> PoolWebhooks:
        """Raises ``SubscriptionsFileError`` for a damaged subscriptions file."""
        cfg = config.webhooks
        secret = os.environ.get(cfg.secret_env, "")
        hooks = Webhooks(
            cfg,
            pool_id=cfg.pool_id or config.pool.pool_tag,
            secret=secret,
            outbox_path=data_dir / OUTBOX_FILE,
        )
        path = data_dir / FILE_NAME
        subs = Subscriptions(
            load(path),
            max_total=cfg.max_subscriptions,
            max_per_address=cfg.max_subscriptions_per_address,
        )
        return cls(hooks, SubscriptionBook(hooks, subs, path))

    async def start(self) -> None:
        await self.hooks.start()

    async def close(self) -> None:
        await self.hooks.close()

    def monitor(
        self,
        workers: Callable[[], Mapping[str, WorkerStats]],
        health: Callable[[], Awaitable[list[str]]],
    ) -> Callable[[], Coroutine[Any, Any, None]]:
        async def run() -> None:
            await monitor(self.hooks, workers, health)

        return run

    async def block_settled(
        self,
        result: ShareResult,
        creds: Credentials | None,
        now: float,
        submission: BlockSubmission,
    ) -> None:
        """A block listener of the Stratum server: block_found once bitcoind accepted it."""
        if not submission.accepted:
            return
        self.hooks.emit(
            "block_found",
            {
                "height": submission.height,
                "hash": submission.block_hash,
                "worker": creds.name if creds is not None else None,
                "status": submission.status.value,
                "found_at": now,
            },
        )

    def blocks_changed(self, changes: Iterable[str]) -> None:
        for event, data in block_change_events(changes):
            self.hooks.emit(event, data)

    def payout_round(self, result: RoundResult) -> None:
        if result.status != "paid" or not result.paid:
            return
        self.hooks.emit(
            "payout_sent",
            {
                "payout_id": result.payout_id,
                "txid": result.txid,
                "paid": dict(result.paid),
                "total_sat": sum(result.paid.values()),
            },
        )
        for address, amount in result.paid.items():
            data: dict[str, Any] = {
                "payout_id": result.payout_id,
                "txid": result.txid,
                "address": address,
                "amount_sat": amount,
            }
            self.hooks.emit("payout_sent", data, address=address, subscriptions_only=True)
