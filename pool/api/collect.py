"""The pool's Prometheus metrics: a snapshot of the app as ``Metric`` families."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from pool.api.metrics import Metric, counter, gauge, sample
from pool.api.views import Views, window_name
from pool.bitcoin import target_to_difficulty
from pool.ledger.pps import UNITS_PER_SAT
from pool.ledger.store import CONFIRMED, ORPHANED, PENDING
from pool.node.submit import SubmitStatus
from pool.shares import Reject

if TYPE_CHECKING:
    from pool.app import PoolApp

PREFIX = "stratum_pool_"
REJECT_REASONS = tuple(sorted({r.key for r in Reject} | {"other"}))


def collect(app: PoolApp, views: Views, now: float) -> list[Metric]:
    p = views.parts()
    server, ledger = p.server, p.ledger
    stats, book = server.stats, server.hashrate
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
                for name in sorted(book.workers())
                if (meter := book.worker(name)) is not None
                for w in book.windows
            ],
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
                for name, w in sorted(stats.workers.items())
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
            ],
        ),
    ]
    statuses = Counter({s: 0 for s in (PENDING, CONFIRMED, ORPHANED)})
    statuses.update(b["status"] for b in ledger.store.blocks(limit=1 << 30))
    submissions = Counter({s.value: 0 for s in SubmitStatus})
    submissions.update(b.status for b in stats.blocks)
    out += [
        gauge(
            PREFIX + "blocks",
            "Blocks found by the pool (all time), by ledger status.",
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
    watcher = app._watch_task
    out.append(
        gauge(
            PREFIX + "template_watcher_up",
            "1 while the block template watcher runs.",
            int(watcher is not None and not watcher.done()),
        )
    )
    return out


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
