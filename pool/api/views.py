"""JSON snapshots of the pool for the HTTP API and the dashboard (read-only).

Units: hashrates in hashes per second; difficulties as share difficulties (1 = 2^32 hashes);
times as Unix seconds. Amounts come as exact integers with an exact BTC string beside them:
``<name>_units`` (micro-satoshis, the ledger's unit), ``<name>_sat`` (whole satoshis, rounded
towards zero) and ``<name>_btc`` (all 14 places of a micro-satoshi amount, 8 of a satoshi one).

Two kinds of share counts appear: ``shares`` (since this pool process started, with rejections
by reason, from the server's live counters) and ``ledger`` (all time, accepted shares only,
from the ledger store, which survives restarts).

Cost: every answer is bounded. Ledger numbers come from the ledger's in-memory totals
(``Ledger.aggregates``), never from a table scan; the few SQLite reads left (payouts, one
worker's or address's history) are bounded and run on the store's thread. Worker lists are
paged over a directory of known worker names that is rebuilt at most every ``cache_seconds``
(sooner, but at most every quarter of that, while workers or connections come and go).
Live worker state is the whole pool's: this process's merged with the other processes'
(``pool.api.live_merge``, from a snapshot the store's thread refreshes).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Protocol, cast

from pool.api.amounts import (
    balance_view,
    money,
    payout_view,
    sat_money,
    sat_to_btc,
    units_to_sat,
)
from pool.api.live_merge import (
    address_rates,
    has_address,
    is_known,
    is_online,
    live_fields,
    live_names,
    others_rate,
    rates,
    window_name,
)
from pool.api.solo_view import SoloView
from pool.bitcoin import (
    DIFF1_TARGET,
    AddressError,
    Network,
    address_to_script,
    target_to_difficulty,
)
from pool.hashrate import HASHES_PER_DIFF1, HashrateMeter
from pool.jobs import Job
from pool.ledger.aggregates import CONFIRMED, ORPHANED, PENDING, REJECTED, WorkerTotals
from pool.ledger.ledger import Ledger
from pool.ledger.pps import (
    FEE_DENOMINATOR,
    UNITS_PER_SAT,
    block_value,
    share_value,
)
from pool.ledger.shared import processes_view
from pool.ledger.store import Balance, Store
from pool.ledger.store_live import LiveSnapshot
from pool.server.auth import AuthError, parse_credentials

if TYPE_CHECKING:
    from pool.api.source import PoolSource
    from pool.server.server import StratumServer

__all__ = [  # the amount helpers, re-exported (they lived here)
    "ApiError",
    "Views",
    "balance_view",
    "minute_points",
    "money",
    "payout_view",
    "sat_money",
    "sat_to_btc",
    "units_to_sat",
    "window_name",
]

MINUTE = 60
MIN_PARTIAL_SECONDS = 5.0  # a minute bucket seen for less than this has no hashrate (too noisy)
SECONDS_PER_DAY = 86_400
CACHE_SECONDS = 1.0  # snapshots (worker directory, pages, /metrics) live this long


class ApiError(Exception):
    """An answer other than 200: the status, a message for people, and extra JSON fields."""

    def __init__(
        self, status: int, message: str, *, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "status": self.status, **self.extra}


class ChainSimView(Protocol):
    """What the API reads of ``app.chain_sim`` (``pool.chain_sim.ChainSim``)."""

    @property
    def difficulty(self) -> float: ...

    @property
    def target(self) -> int: ...

    def mainnet_equivalent(self, difficulty: float | None = None) -> float: ...


@dataclass(frozen=True)
class Parts:
    server: StratumServer
    ledger: Ledger
    network: Network

    @property
    def live(self) -> LiveSnapshot:
        """The other processes' live workers (empty with one process)."""
        return self.ledger.shared.live


@dataclass
class Directory:
    """Every known worker name, sorted: the ledger's (all time) and the live ones the ledger
    has no share of yet. A snapshot: rebuilt by ``Views.directory``."""

    names: list[str]
    live_only: list[str]  # sorted; not in the ledger
    online: int  # workers with an open connection
    key: tuple[int, ...]
    built: float  # monotonic
    _live_by_address: dict[str, list[str]] | None = field(default=None, repr=False)

    def live_of(self, address: str) -> list[str]:
        if self._live_by_address is None:
            index: dict[str, list[str]] = {}
            for name in self.live_only:
                index.setdefault(_address_of(name), []).append(name)
            self._live_by_address = index
        return self._live_by_address.get(address, [])


class Views:
    def __init__(self, app: PoolSource, *, cache_seconds: float = CACHE_SECONDS) -> None:
        self.app = app
        self.cache_seconds = cache_seconds
        self._directory: Directory | None = None
        self.solo = SoloView(cache_seconds)  # best shares and SOLO workers

    def parts(self) -> Parts:
        app = self.app
        if app.server is None or app.ledger is None or app.network is None:
            raise ApiError(503, "the pool is starting or stopping")
        return Parts(app.server, app.ledger, app.network)

    @property
    def chain_sim(self) -> ChainSimView | None:
        return cast("ChainSimView | None", getattr(self.app, "chain_sim", None))

    # -- input ------------------------------------------------------------------------------------
    def check_address(self, address: str) -> str:
        network = self.parts().network
        try:
            address_to_script(address, network)
        except AddressError as exc:
            raise ApiError(
                400, f"{address!r} is not a valid {network.name} address: {exc}", address=address
            ) from None
        return address

    def check_worker(self, name: str) -> str:
        """A worker name as the pool writes it: ``ADDRESS`` or ``ADDRESS.worker``."""
        network = self.parts().network
        try:
            creds = parse_credentials(name, "", network)
        except AuthError as exc:
            raise ApiError(400, f"{name!r} is not a worker name: {exc}", worker=name) from None
        return creds.name

    # -- pool -------------------------------------------------------------------------------------
    def pool(self, now: float) -> dict[str, Any]:
        p = self.parts()
        stats = p.server.stats
        job = p.server.jobs.current
        ledger = p.ledger.aggregates
        block_counts = ledger.block_counts()
        reserve = ledger.reserve()
        luck = ledger.luck(now)
        return {
            "time": now,
            "chain": p.network.name,
            "started": p.server.hashrate.pool.started,
            "hashrate": rates(p.server.hashrate.pool, p.server.hashrate.windows, now),
            "miners": len(p.server.sessions),
            "stratum_ports": p.server.port_list,  # each: port, name, tls (and its fingerprint)
            "workers": self.directory(p).online,
            "shares": {
                "accepted": stats.accepted,
                "rejected": dict(stats.rejected),
                "rejected_total": sum(stats.rejected.values()),
                "accepted_difficulty": stats.accepted_work,
            },
            "network": self.network(job, p.network),
            "blocks": {
                # found: every block the chain may hold or held (refused ones are not found)
                "found": sum(block_counts[s] for s in (PENDING, CONFIRMED, ORPHANED)),
                "pending": block_counts[PENDING],
                "confirmed": block_counts[CONFIRMED],
                "orphaned": block_counts[ORPHANED],
                "rejected": block_counts[REJECTED],
                "submitted": len(stats.blocks),
            },
            "pps": self.pps(job, p),
            "reserve": {
                **money("reserve", reserve.reserve_units),
                **money("rewards_earned", reserve.rewards_earned_units),
                **money("rewards_confirmed", reserve.rewards_confirmed_units),
                **money("credits", reserve.credits_units),
                **money("fees", reserve.fees_units),
            },
            # "luck" (kept for old clients) holds expected / found: that is effort, and
            # "effort" says so (100 % = average, below 100 % = lucky)
            "luck": luck,
            "effort": effort_view(luck),
            "ledger": {"shares": ledger.shares},
            **self.solo.pool_fields(p.server, now),  # best_share, solo
            **processes_view(p.ledger, now),
        }

    def network(self, job: Job | None, network: Network) -> dict[str, Any]:
        sim = self.chain_sim
        simulated: dict[str, Any] | None = None
        if sim is not None:
            simulated = {
                "difficulty": sim.difficulty,
                "mainnet_equivalent": sim.mainnet_equivalent(),
            }
        elif self.app.config.chain.simulation.enabled and job is not None:
            difficulty = target_to_difficulty(job.block_target)
            simulated = {"difficulty": difficulty, "mainnet_equivalent": difficulty}
        return {
            "chain": network.name,
            "height": job.height if job else None,  # the height being mined
            "difficulty": target_to_difficulty(job.template.target) if job else None,
            # what a share must meet to be a block: the simulated target when it is on
            "block_difficulty": target_to_difficulty(job.block_target) if job else None,
            "simulated": simulated,
        }

    def pps(self, job: Job | None, p: Parts) -> dict[str, Any] | None:
        """The PPS rate on the current job. ``value``: the credit per unit of share
        difficulty, after the pool fee, for shares below the block difficulty (a share of
        difficulty d earns d * value). ``share_credit``: what a difficulty-1 share is really
        credited: no share earns more than one block, so when the block difficulty is below 1
        (``capped``; plain regtest, low simulated difficulties) it is one block's value after
        the fee, and ``value`` is a rate nothing is paid at for a difficulty-1 share."""
        if job is None:
            return None
        fee = self.app.config.ledger.fee_bps
        value_sat = self._block_value(job, p)
        gross = self._rate(job, value_sat)
        credit = gross * (FEE_DENOMINATOR - fee) / FEE_DENOMINATOR
        share = share_value(1.0, job.block_target, value_sat, fee)
        return {
            "scheme": p.ledger.scheme.value,
            "fee_bps": fee,
            **sat_money("block_value", value_sat),
            "block_difficulty": target_to_difficulty(job.block_target),
            "share_difficulty": 1.0,
            **money("gross", gross.numerator // gross.denominator),
            **money("value", credit.numerator // credit.denominator),
            **money("share_credit", share.credit),
            "capped": job.block_target > DIFF1_TARGET,
        }

    @staticmethod
    def _rate(job: Job, value_sat: int) -> Fraction:
        """Gross units per unit of share difficulty: B / D (exact)."""
        return Fraction(job.block_target * value_sat * UNITS_PER_SAT, DIFF1_TARGET)

    def _block_value(self, job: Job, p: Parts) -> int:
        subsidy = p.network.block_subsidy(job.height)
        return block_value(p.ledger.scheme, subsidy, job.template.coinbase_value)

    def per_day_units(self, hashrate: float, p: Parts) -> int | None:
        """PPS credit a steady ``hashrate`` earns in a day on the current job (units)."""
        job = p.server.jobs.current
        if job is None:
            return None
        fee = self.app.config.ledger.fee_bps
        exact = (
            self._rate(job, self._block_value(job, p))
            * (FEE_DENOMINATOR - fee)
            / FEE_DENOMINATOR
            * Fraction(hashrate)
            * SECONDS_PER_DAY
            / HASHES_PER_DIFF1
        )
        return exact.numerator // exact.denominator

    # -- workers ----------------------------------------------------------------------------------
    def directory(self, p: Parts) -> Directory:
        """The worker directory, rebuilt when older than ``cache_seconds``, or than a quarter
        of that when workers or connections were added or removed since. A rebuild is a few
        set operations and one sort over the names (C loops)."""
        ledger = p.ledger.aggregates
        stats, book = p.server.stats, p.server.hashrate
        key = (
            id(ledger),
            len(ledger.workers),
            len(stats.workers),
            book.worker_count,  # a count: copying 20 000 names per request was the cost
            len(p.server.sessions),
            p.live.version,
        )
        mono = time.monotonic()
        d = self._directory
        if d is not None:
            age = mono - d.built
            if 0.0 <= age < self.cache_seconds and (d.key == key or age < self.cache_seconds / 4):
                return d
        live, online = live_names(p.server, p.live)  # every process's
        live_only = sorted(live - ledger.workers.keys())
        names = ledger.names() + live_only
        if live_only:
            names.sort()  # two sorted runs: merged in linear time
        self._directory = Directory(names, live_only, online, key, mono)
        return self._directory

    def workers_page(self, offset: int, limit: int) -> tuple[dict[str, Any], list[str]]:
        """A page of the directory: ``limit`` names from ``offset`` in name order, and the
        page's fields (the total known, the next offset); ``workers(now, names)`` renders them."""
        names = self.directory(self.parts()).names
        page = names[offset : offset + limit]
        end = offset + len(page)
        return {
            "total": len(names),
            "offset": offset,
            "limit": limit,
            "count": len(page),
            "next_offset": end if end < len(names) else None,
        }, page

    def workers(self, now: float, names: Iterable[str]) -> list[dict[str, Any]]:
        p = self.parts()
        ledger = p.ledger.aggregates
        return [
            self._worker(
                p, name, now, ledger.workers.get(name), ledger.balances.get(_address_of(name))
            )
            for name in names
        ]

    def worker(self, name: str, now: float) -> dict[str, Any]:
        p = self.parts()
        name = self.check_worker(name)
        ledger = p.ledger.aggregates
        stored = ledger.workers.get(name)
        if stored is None and not is_known(p.server, p.live, name):
            raise ApiError(404, f"unknown worker: {name}", worker=name)
        return self._worker(p, name, now, stored, ledger.balances.get(_address_of(name)))

    def _worker(
        self,
        p: Parts,
        name: str,
        now: float,
        stored: WorkerTotals | None,
        balance: Balance | None,
    ) -> dict[str, Any]:
        address, _, short = name.partition(".")
        live = live_fields(p.server, p.live, name, now)  # merged over every process
        live_last = live.pop("live_last_share")
        last = [t for t in (live_last, stored and stored.last_share) if t]
        hashrate = live["hashrate"]
        return {
            "name": name,
            "address": address,
            "worker": short,
            **live,  # online, connections, hashrate, difficulty, shares, blocks
            "last_share": max(last) if last else None,
            "ledger": {
                "shares": stored.shares if stored else 0,
                "difficulty_sum": stored.difficulty_sum if stored else 0.0,
                **money("earned", stored.credit_units if stored else 0),
                "first_share": stored.first_share if stored else None,
                "last_share": stored.last_share if stored else None,
            },
            "balance": balance_view(balance),
            **self.solo.worker_fields(p.server, name, hashrate),  # best_share, solo
        }

    # -- addresses --------------------------------------------------------------------------------
    async def address(
        self, address: str, now: float, offset: int = 0, limit: int = 100
    ) -> tuple[dict[str, Any], list[str]]:
        """The address's page without its workers, and the names of the workers to show
        (``limit`` from ``offset``; ``workers(now, names)`` renders them)."""
        p = self.parts()
        address = self.check_address(address)
        names = self.address_workers(p, address)
        balance = p.ledger.aggregates.balances.get(address)
        payouts = await p.ledger.store.run(Store.payouts, address=address, limit=100)
        if (
            not names
            and balance is None
            and not has_address(p.server, p.live, address)
            and not payouts
        ):
            raise ApiError(404, f"unknown address: {address} (no shares from it)", address=address)
        hashrate = address_rates(p.server, p.live, address, now)  # every process's
        per_day = self.per_day_units(hashrate.get("1h", 0.0), p)
        page = names[offset : offset + limit]
        return {
            "time": now,
            "address": address,
            "hashrate": hashrate,
            **balance_view(balance),
            "estimate_per_day": money("value", per_day) if per_day is not None else None,
            "workers_total": len(names),
            "workers_online": sum(1 for n in names if is_online(p.server, p.live, n)),
            "workers_offset": offset,
            **self.solo.address_fields(p.server, address, hashrate),  # best_share, solo
            "payouts": [
                {
                    **payout_view(row),
                    **sat_money(
                        "amount",
                        sum(i["amount_sat"] for i in row["items"] if i["address"] == address),
                    ),
                }
                for row in payouts
            ],
        }, page

    def address_workers(self, p: Parts, address: str) -> list[str]:
        """The address's workers, sorted: the ledger's and the live ones."""
        names = list(p.ledger.aggregates.workers_of(address))
        live = self.directory(p).live_of(address)
        if live:
            names = sorted(names + live)
        return names

    # -- blocks and payouts -----------------------------------------------------------------------
    def blocks(self, limit: int) -> dict[str, Any]:
        p = self.parts()
        rows = p.ledger.aggregates.recent_blocks(limit)
        return {
            "blocks": [
                {
                    "hash": b["hash"],
                    "height": b["height"],
                    "worker": b["worker"],
                    "address": b["address"],
                    **sat_money("reward", b["reward_sat"]),
                    "network_difficulty": b["network_difficulty"],
                    "found_at": b["found_at"],
                    "status": b["status"],
                    "confirmations": b["confirmations"],
                    "updated_at": b["updated_at"],
                    "scheme": b.get("scheme") or p.ledger.scheme.value,  # pps fpps pplns solo
                }
                for b in rows
            ],
            # every block submission of this process, refused ones too (newest first)
            "submissions": [
                {
                    "hash": s.hash,
                    "height": s.height,
                    "worker": s.worker,
                    "status": s.status,
                    "reason": s.reason,
                    "time": s.time,
                }
                for s in reversed(p.server.stats.blocks[-limit:])
            ],
        }

    async def payouts(self, limit: int, address: str | None) -> dict[str, Any]:
        p = self.parts()
        if address is not None:
            address = self.check_address(address)
        rows = await p.ledger.store.run(Store.payouts, limit=limit, address=address)
        return {"payouts": [payout_view(r) for r in rows]}

    # -- history ----------------------------------------------------------------------------------
    async def history(
        self,
        now: float,
        minutes: int,
        *,
        worker: str | None = None,
        address: str | None = None,
        samples: Iterable[tuple[float, float]] = (),
    ) -> dict[str, Any]:
        """Hashrate per minute from the ledger's share buckets (zero-filled, the current minute
        pro rata), the live 1-minute rate, and (for the pool) recent samples of it."""
        p = self.parts()
        since = int(now // MINUTE) - minutes + 1
        store = p.ledger.store
        meter: HashrateMeter | None
        rows: list[dict[str, Any]]
        others = 0.0  # the other processes' live rate of this worker or address
        if worker is not None:
            worker = self.check_worker(worker)
            rows = await store.run(Store.minutes, since, worker=worker)
            meter = p.server.hashrate.worker(worker)
            others, samples = others_rate(p.live, MINUTE, worker=worker), ()
        elif address is not None:
            address = self.check_address(address)
            rows = await store.run(Store.address_minutes, since, address)
            meter = p.server.hashrate.address(address)
            others, samples = others_rate(p.live, MINUTE, address=address), ()
        else:
            rows = p.ledger.aggregates.pool_minutes(since)
            meter = p.server.hashrate.pool
        started = p.server.hashrate.pool.started
        return {
            "time": now,
            "minutes": minutes,
            "points": minute_points(rows, now, started),
            "live": {
                "time": now,
                "hashrate": (meter.hashrate(MINUTE, now) if meter else 0.0) + others,
            },
            "samples": [{"time": t, "hashrate": h} for t, h in samples if t >= since * MINUTE],
        }


def effort_view(
    luck: dict[str, dict[str, float | int | None]],
) -> dict[str, dict[str, float | int | None]]:
    """Effort per window: the work done over the work expected for the blocks found
    (expected blocks / found blocks; 1 = average, below 1 = lucky, None before a block)."""
    return {
        name: {
            "expected_blocks": w["expected_blocks"],
            "found_blocks": w["found_blocks"],
            "effort": w["luck"],
        }
        for name, w in luck.items()
    }


def minute_points(rows: Iterable[dict[str, Any]], now: float, started: float) -> list[Any]:
    """One point per minute from the first with shares to the current one. A minute this
    process only saw part of (its start, the current minute) is divided by the part seen."""
    work: dict[int, float] = {}
    shares: dict[int, int] = {}
    for row in rows:
        minute = int(row["minute"])
        work[minute] = work.get(minute, 0.0) + float(row["difficulty_sum"])
        shares[minute] = shares.get(minute, 0) + int(row["shares"])
    if not work:
        return []
    current = int(now // MINUTE)
    points = []
    for minute in range(min(work), current + 1):
        start, end = minute * MINUTE, (minute + 1) * MINUTE
        # minutes of an earlier run count whole; this run's first and current minute pro rata
        seconds = min(end, now) - (start if end <= started else max(start, started))
        too_short = seconds < MIN_PARTIAL_SECONDS
        if too_short and not shares.get(minute):
            continue
        points.append(
            {
                "time": start,
                "seconds": round(max(seconds, 0.0), 3),
                "shares": shares.get(minute, 0),
                "difficulty_sum": work.get(minute, 0.0),
                # under MIN_PARTIAL_SECONDS the rate is too noisy to state (None), but the
                # shares stay in the point: the points always add up to the ledger's totals
                "hashrate": None
                if too_short
                else work.get(minute, 0.0) * HASHES_PER_DIFF1 / seconds,
                "partial": seconds < MINUTE,
            }
        )
    return points


def _address_of(name: str) -> str:
    return name.partition(".")[0]
