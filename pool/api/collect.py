"""The pool's Prometheus metrics: a snapshot of the app as ``Metric`` families.

Bounded: per-worker series (hashrate, shares) are written for the ``METRICS_TOP_WORKERS``
workers with the most accepted work since the previous ranking (their recent hashrate),
ranked again at most every ``RANK_SECONDS`` so the exported set does not flap between scrapes;
``stratum_pool_metrics_workers_omitted`` says how many were left out (the pool-wide series
count every worker). Ledger numbers come from the ledger's in-memory totals. The server
caches the rendered text (``pool.api.server.METRICS_CACHE_SECONDS``).
"""

from __future__ import annotations

import heapq
from collections import Counter
from typing import TYPE_CHECKING

from pool.api.metrics import Metric, counter, gauge, sample
from pool.api.views import Views, window_name
from pool.api.webhook_routes import webhook_metrics
from pool.bitcoin import target_to_difficulty
from pool.gc_watch import gc_metrics
from pool.ledger.journal_read import DAMAGE_TOTAL
from pool.ledger.ledger import Ledger
from pool.ledger.pps import UNITS_PER_SAT
from pool.node.submit import SubmitStatus
from pool.shares import Reject
from pool.stats import PoolStats
from pool.worker_status import process_metrics

if TYPE_CHECKING:
    from pool.api.source import PoolSource

PREFIX = "stratum_pool_"
REJECT_REASONS = tuple(sorted({r.key for r in Reject} | {"other"}))
METRICS_TOP_WORKERS = 100  # workers with series of their own in /metrics
RANK_SECONDS = 10.0  # how often the top workers are chosen again


class WorkerRanking:
    """The workers that get per-worker series: the ``top`` with the most accepted work
    (difficulty) since the previous ranking, chosen again at most every ``every`` seconds.
    One pass over the workers' counters per ranking, no hashrate computed for the others."""

    def __init__(self, top: int = METRICS_TOP_WORKERS, every: float = RANK_SECONDS) -> None:
        self.top = top
        self.every = every
        self._chosen: list[str] | None = None
        self._at = 0.0
        self._work: dict[str, float] = {}

    def select(self, stats: PoolStats, now: float) -> list[str]:
        """The chosen workers' names, sorted."""
        if self._chosen is not None and 0.0 <= now - self._at < self.every:
            return self._chosen
        work = {name: w.accepted_work for name, w in stats.workers.items()}
        before = self._work
        chosen = heapq.nlargest(self.top, work, key=lambda n: work[n] - before.get(n, 0.0))
        self._chosen, self._at, self._work = sorted(chosen), now, work
        return self._chosen


def collect(
    app: PoolSource, views: Views, now: float, ranking: WorkerRanking | None = None
) -> list[Metric]:
    p = views.parts()
    server, ledger = p.server, p.ledger.aggregates
    stats, book = server.stats, server.hashrate
    chosen = (ranking or WorkerRanking()).select(stats, now)
    out: list[Metric] = [
        gauge(
            PREFIX + "info",
            "Constant 1; the labels say which chain the pool mines.",
            [sample(1, {"chain": p.network.name})],
        ),
        gauge(
            PREFIX + "start_time_seconds",
            "When the Stratum server started (Unix seconds).",
            book.pool.started,
        ),
        gauge(
            PREFIX + "hashrate_hashes_per_second",
            "Pool hashrate from accepted shares over a sliding window.",
            [sample(book.pool.hashrate(w, now), {"window": window_name(w)}) for w in book.windows],
        ),
        gauge(
            PREFIX + "worker_hashrate_hashes_per_second",
            "Per-worker hashrate from accepted shares over a sliding window.",
            [
                sample(meter.hashrate(w, now), {"worker": name, "window": window_name(w)})
                for name in chosen
                if (meter := book.worker(name)) is not None
                for w in book.windows
            ],
        ),
        gauge(
            PREFIX + "metrics_workers_omitted",
            f"Workers without per-worker series here (only the {METRICS_TOP_WORKERS} with the "
            "most recent accepted work have them).",
            max(0, len(stats.workers) - len(chosen)),
        ),
    ]
    rejected = Counter({reason: 0 for reason in REJECT_REASONS})
    rejected.update(stats.rejected)
    out += [
        counter(
            PREFIX + "shares_total",
            "Shares judged since the start, by result.",
            [
                sample(stats.accepted, {"result": "accepted"}),
                sample(sum(stats.rejected.values()), {"result": "rejected"}),
            ],
        ),
        counter(
            PREFIX + "shares_rejected_total",
            "Rejected shares since the start, by reason.",
            [sample(n, {"reason": reason}) for reason, n in sorted(rejected.items())],
        ),
        counter(
            PREFIX + "accepted_difficulty_total",
            "Sum of the difficulty of accepted shares since the start (x 2^32 = hashes).",
            stats.accepted_work,
        ),
        counter(
            PREFIX + "worker_shares_total",
            "Shares judged since the start, by worker and result.",
            [
                sample(n, {"worker": name, "result": result})
                for name in chosen
                if (w := stats.workers.get(name)) is not None
                for result, n in (("accepted", w.accepted), ("rejected", sum(w.rejected.values())))
            ],
        ),
        gauge(PREFIX + "connections", "Open Stratum connections.", len(server.sessions)),
        gauge(
            PREFIX + "workers_online",
            "Authorized workers with at least one open connection.",
            sum(1 for w in stats.workers.values() if w.connections > 0),
        ),
        gauge(
            PREFIX + "bans",
            "Banned IPs and workers.",
            [
                sample(len(server.banned_ips), {"kind": "ip"}),
                sample(len(server.banned_workers), {"kind": "worker"}),
                sample(len(server.temp_bans()), {"kind": "ip_temporary"}),
            ],
        ),
    ]
    statuses = ledger.block_counts()
    submissions = Counter({s.value: 0 for s in SubmitStatus})
    submissions.update(b.status for b in stats.blocks)
    out += [
        gauge(
            PREFIX + "blocks",
            "Blocks found by the pool (all time), by ledger status (rejected: bitcoind refused "
            "it).",
            [sample(n, {"status": s}) for s, n in sorted(statuses.items())],
        ),
        counter(
            PREFIX + "block_submissions_total",
            "Block candidates submitted to bitcoind since the start, by outcome.",
            [sample(n, {"status": s}) for s, n in sorted(submissions.items())],
        ),
    ]
    out += _chain(views)
    reserve = ledger.reserve()
    out += [
        gauge(
            PREFIX + "ledger_backlog_records",
            "Shares journaled (acknowledged) but not yet applied to the ledger store.",
            p.ledger.store.backlog,
        ),
        counter(
            PREFIX + "ledger_applied_records_total",
            "Shares applied to the ledger store since the start.",
            p.ledger.store.applied,
        ),
    ]
    out += _ledger_health(p.ledger)
    out += [
        gauge(
            PREFIX + "reserve_satoshis",
            "PPS reserve: block rewards earned minus credits and fees.",
            reserve.reserve_units / UNITS_PER_SAT,
        ),
        gauge(
            PREFIX + "ledger_satoshis",
            "Ledger totals (all time).",
            [
                sample(reserve.rewards_earned_units / UNITS_PER_SAT, {"kind": "rewards_earned"}),
                sample(
                    reserve.rewards_confirmed_units / UNITS_PER_SAT, {"kind": "rewards_confirmed"}
                ),
                sample(reserve.credits_units / UNITS_PER_SAT, {"kind": "credits"}),
                sample(reserve.fees_units / UNITS_PER_SAT, {"kind": "fees"}),
            ],
        ),
    ]
    rpc = app.rpc
    if rpc is not None:
        out += [
            counter(
                PREFIX + "bitcoind_rpc_calls_total",
                "Successful bitcoind RPC calls.",
                rpc.calls,
            ),
            counter(
                PREFIX + "bitcoind_rpc_errors_total",
                "Failed bitcoind RPC attempts, by kind.",
                [sample(n, {"kind": kind}) for kind, n in sorted(rpc.errors.items())],
            ),
            counter(
                PREFIX + "bitcoind_rpc_latency_seconds_total",
                "Time spent in successful bitcoind RPC calls (divide by the calls).",
                rpc.latency_total,
            ),
        ]
    out += _node_metrics(app)
    out += _new_block_metrics(app)
    out += webhook_metrics(getattr(app, "webhooks", None), PREFIX)
    out += process_metrics(app, PREFIX)  # several worker processes: their restarts
    out += gc_metrics(PREFIX)  # the collector's pauses (they stall the loop)
    tasks = getattr(app, "tasks", None)
    if tasks is not None and tasks.states:
        out.append(
            counter(
                PREFIX + "task_restarts_total",
                "Background tasks restarted after they died, by task.",
                [sample(s.restarts, {"task": n}) for n, s in sorted(tasks.states.items())],
            )
        )
    watcher = app.watcher_task
    out.append(
        gauge(
            PREFIX + "template_watcher_up",
            "1 while the block template watcher runs.",
            int(watcher is not None and not watcher.done()),
        )
    )
    return out


def _node_metrics(app: PoolSource) -> list[Metric]:
    """The managed node's restarts and the found blocks still being submitted."""
    out: list[Metric] = []
    node = getattr(app, "node", None)
    if node is not None:
        out.append(
            counter(
                PREFIX + "bitcoind_restarts_total",
                "Times the managed bitcoind died while the pool ran and was started again.",
                node.restarts,
            )
        )
    submitter = getattr(app, "submitter", None)
    if submitter is not None:
        out += [
            gauge(
                PREFIX + "blocks_submitting",
                "Found blocks bitcoind has not settled yet (retried until it does).",
                len(submitter.pending),
            ),
            counter(
                PREFIX + "block_submit_retries_total",
                "Block submissions asked again because bitcoind did not answer.",
                submitter.retries,
            ),
        ]
    return out


def _new_block_metrics(app: PoolSource) -> list[Metric]:
    """Which source announced each new block; the ZMQ feed's state."""
    watcher = getattr(app, "watcher", None)
    if watcher is None:
        return []
    out = [
        counter(
            PREFIX + "new_blocks_total",
            "New blocks seen since the start, by the source that announced them first (zmq, "
            "longpoll, poll, submit: the pool's own block, restart, refresh, start).",
            [sample(n, {"source": src}) for src, n in watcher.new_blocks.items()],
        )
    ]
    feed = watcher.zmq
    if feed is not None:
        out += [
            gauge(
                PREFIX + "zmq_connected",
                "1 while the ZMQ hashblock subscription is connected to bitcoind.",
                int(feed.connected),
            ),
            counter(
                PREFIX + "zmq_messages_total",
                "ZMQ hashblock messages received, by kind (ok, malformed).",
                [
                    sample(feed.messages, {"kind": "ok"}),
                    sample(feed.bad_messages, {"kind": "malformed"}),
                ],
            ),
            counter(
                PREFIX + "zmq_missed_messages_total",
                "ZMQ hashblock messages lost (gaps in bitcoind's sequence numbers).",
                feed.sequence.missed,
            ),
            counter(
                PREFIX + "zmq_reconnects_total",
                "Times the ZMQ subscription connected again after losing bitcoind.",
                max(0, feed.connects - 1),
            ),
        ]
    return out


def _ledger_health(ledger: Ledger) -> list[Metric]:
    """Storage faults: the degraded state, its transitions, blocks waiting, corrupt records."""
    health = ledger.health()
    return [
        gauge(
            PREFIX + "ledger_degraded",
            "1 while a storage fault degrades the ledger (journal: shares refused; store: "
            "shares journaled, applied on recovery).",
            int(health["degraded"] is not None),
        ),
        counter(
            PREFIX + "ledger_storage_failures_total",
            "Storage faults that degraded the ledger, by part (journal, store).",
            [
                sample(health["journal_failures"], {"part": "journal"}),
                sample(health["store_failures"], {"part": "store"}),
            ],
        ),
        counter(
            PREFIX + "ledger_storage_recoveries_total",
            "Recoveries from a storage fault without a restart, by part (journal, store).",
            [
                sample(health["journal_recoveries"], {"part": "journal"}),
                sample(health["store_recoveries"], {"part": "store"}),
            ],
        ),
        gauge(
            PREFIX + "payout_runner",
            "1 in the one process (of every process and instance) running payouts.",
            int(bool(health.get("payout_runner"))),
        ),
        gauge(
            PREFIX + "ledger_unrecorded_blocks",
            "Found blocks the store has not taken yet (kept and retried).",
            health["unrecorded_blocks"],
        ),
        counter(
            PREFIX + "journal_corrupt_records_total",
            "Corrupt journal stretches skipped while reading (their shares are not credited).",
            DAMAGE_TOTAL.corrupt,
        ),
    ]


def _chain(views: Views) -> list[Metric]:
    p = views.parts()
    job = p.server.jobs.current
    if job is None:
        return []
    out = [
        gauge(PREFIX + "height", "Height of the block being mined.", job.height),
        gauge(
            PREFIX + "network_difficulty",
            "Difficulty of the chain's own target.",
            target_to_difficulty(job.template.target),
        ),
        gauge(
            PREFIX + "block_difficulty",
            "Difficulty a share must meet to be a block (the simulated one when it is on).",
            target_to_difficulty(job.block_target),
        ),
    ]
    sim = views.chain_sim
    if sim is not None:
        out.append(
            gauge(PREFIX + "simulated_difficulty", "Simulated network difficulty.", sim.difficulty)
        )
    pps = views.pps(job, p)
    if pps is not None:
        out.append(
            gauge(
                PREFIX + "pps_value_per_difficulty_satoshis",
                "PPS credit per unit of share difficulty on the current job, after the fee "
                "(one share earns at most one block).",
                pps["value_units"] / UNITS_PER_SAT,
            )
        )
    return out
