"""The ledger's totals in memory (pure: no I/O, no clock, no asyncio).

The store (SQLite, on a thread of its own) is the durable copy; ``Aggregates`` is what the
pool reads on its event loop: per-worker and per-address totals, found blocks, the pool's
per-minute work (hashrate history, luck) and the PPS reserve inputs. It is loaded from the
store at start (``Store.load_aggregates``) and then kept equal to it: every batch of shares
the store applies comes back as a ``BatchDelta`` and is merged here, every block or balance
the store changes comes back as its new row. Reading it never touches SQLite and costs
nothing per stored row.

Equality with the store is exact for every integer and for the per-worker float sums (the
store adds the same ``BatchDelta`` sums to the same stored values, in the same order). The
pool-wide per-minute floats are summed in another order than SQLite's ``SUM`` and may differ
in the last bits.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from pool.ledger.pps import UNITS_PER_SAT
from pool.ledger.schemes import SCHEMES, BlockOwner

# Block statuses: pending (found; the chain decides), confirmed (block_maturity deep),
# orphaned (not on the best chain), rejected (bitcoind refused it: it never counts)
PENDING, CONFIRMED, ORPHANED, REJECTED = "pending", "confirmed", "orphaned", "rejected"
BLOCK_STATUSES = (PENDING, CONFIRMED, ORPHANED, REJECTED)
LUCK_WINDOWS = {"1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0}
MINUTE = 60
# Pool-wide minutes kept in memory: the longest history the API serves (7 days) plus the hour
# the longest luck window may start in.
KEEP_MINUTES = 7 * 24 * 60 + 60


@dataclass(frozen=True)
class Checkpoint:
    segment: int
    offset: int


@dataclass(frozen=True)
class ShareRecord:
    """The part of a journal record the store aggregates (built by the ledger)."""

    time: float
    worker: str
    address: str
    difficulty: float
    expected_blocks: float
    credit_units: int
    fee_units: int
    block_hash: str | None = None
    block_height: int | None = None
    block_reward_sat: int | None = None
    network_difficulty: float | None = None
    share_difficulty: float = 0.0  # what the share's hash achieved (0: unknown, older records)
    scheme: str = ""  # the port's payout scheme ("" in records from before schemes per port)
    fee_bps: int = 0
    # pplns shares: the window (difficulty-units) of a block found now (from the record's
    # block entry for a block, else factor x the share's network difficulty: for pruning)
    pplns_window: Fraction | None = None


# Blocks whose reward is not the PPS reserve's: PPLNS (split over its window at maturity) and
# SOLO (the coinbase paid the finder).
NOT_RESERVE_SCHEMES = tuple(
    name for name, payout in SCHEMES.items() if payout.block_owner is not BlockOwner.RESERVE
)


@dataclass(frozen=True)
class Balance:
    address: str
    credited_units: int
    paid_units: int
    pending_units: int

    @property
    def balance_units(self) -> int:
        return self.credited_units - self.paid_units - self.pending_units


@dataclass(frozen=True, slots=True)
class WorkerTotals:
    """A worker's all-time ledger totals (a ``workers`` row), or a batch's addition to them."""

    name: str
    address: str
    shares: int
    difficulty_sum: float
    credit_units: int
    fee_units: int
    first_share: float | None
    last_share: float | None

    def plus(self, more: WorkerTotals) -> WorkerTotals:
        """These totals with a batch's added (what the store's upsert computes)."""
        return WorkerTotals(
            self.name,
            more.address,
            self.shares + more.shares,
            self.difficulty_sum + more.difficulty_sum,
            self.credit_units + more.credit_units,
            self.fee_units + more.fee_units,
            self.first_share,
            max(self.last_share or 0.0, more.last_share or 0.0),
        )

    def as_row(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "address": self.address,
            "shares": self.shares,
            "difficulty_sum": self.difficulty_sum,
            "credit_units": self.credit_units,
            "fee_units": self.fee_units,
            "first_share": self.first_share,
            "last_share": self.last_share,
        }


@dataclass(slots=True)
class MinuteTotals:
    """Shares in one minute, of one worker in a batch (the store's ``share_minutes`` row) or
    of the whole pool (in memory; ``credit_units`` is not kept there)."""

    shares: int = 0
    difficulty_sum: float = 0.0
    expected_blocks: float = 0.0
    credit_units: int = 0


@dataclass
class BatchDelta:
    """What applying a batch of share records adds (computed once, used by the store's SQL
    and by ``Aggregates.merge``)."""

    workers: dict[str, WorkerTotals] = field(default_factory=dict)
    credits: dict[str, int] = field(default_factory=dict)  # address -> credited units
    minutes: dict[tuple[int, str], MinuteTotals] = field(default_factory=dict)
    shares: int = 0
    credit_units: int = 0
    fee_units: int = 0
    blocks: list[dict[str, Any]] = field(default_factory=list)  # rows the store inserted

    @classmethod
    def of(cls, records: Iterable[ShareRecord]) -> BatchDelta:
        delta = cls()
        workers: dict[str, list[Any]] = {}
        for rec in records:
            w = workers.get(rec.worker)
            if w is None:
                workers[rec.worker] = [
                    rec.address,
                    1,
                    rec.difficulty,
                    rec.credit_units,
                    rec.fee_units,
                    rec.time,
                    rec.time,
                ]
            else:
                w[0] = rec.address
                w[1] += 1
                w[2] += rec.difficulty
                w[3] += rec.credit_units
                w[4] += rec.fee_units
                if rec.time > w[6]:
                    w[6] = rec.time
            delta.credits[rec.address] = delta.credits.get(rec.address, 0) + rec.credit_units
            key = (int(rec.time // MINUTE), rec.worker)
            m = delta.minutes.get(key)
            if m is None:
                m = delta.minutes[key] = MinuteTotals()
            m.shares += 1
            m.difficulty_sum += rec.difficulty
            m.expected_blocks += rec.expected_blocks
            m.credit_units += rec.credit_units
            delta.shares += 1
            delta.credit_units += rec.credit_units
            delta.fee_units += rec.fee_units
        delta.workers = {
            name: WorkerTotals(name, w[0], w[1], w[2], w[3], w[4], w[5], w[6])
            for name, w in workers.items()
        }
        return delta


@dataclass(frozen=True)
class Reserve:
    rewards_earned_units: int  # pending + confirmed blocks (orphans excluded)
    rewards_confirmed_units: int
    credits_units: int
    fees_units: int

    @property
    def reserve_units(self) -> int:
        return self.rewards_earned_units - self.credits_units - self.fees_units


def block_order(row: Mapping[str, Any]) -> tuple[int, float, str]:
    """Newest first: height, then time found, then hash (as ``Store.blocks`` sorts)."""
    return (-int(row["height"]), -float(row["found_at"]), str(row["hash"]))


class Aggregates:
    """The ledger's totals in memory, owned by the event loop (see the module docstring)."""

    def __init__(self) -> None:
        self.workers: dict[str, WorkerTotals] = {}
        self.balances: dict[str, Balance] = {}
        self.blocks: dict[str, dict[str, Any]] = {}
        self.shares = 0
        self.credit_units = 0
        self.fee_units = 0
        self.expected_all = 0.0  # expected blocks of every share ever (luck "all")
        self.version = 0  # bumped on every change
        self._names: list[str] = []
        self._names_sorted = True
        self._by_address: dict[str, list[str]] = {}
        self._unsorted_addresses: set[str] = set()
        self._minutes: dict[int, MinuteTotals] = {}  # pool-wide, ascending minutes
        self._hours: dict[int, float] = {}  # expected blocks per hour, ascending
        self._blocks_sorted: list[dict[str, Any]] | None = None

    @classmethod
    def from_rows(
        cls,
        workers: Iterable[WorkerTotals],
        balances: Iterable[Balance],
        blocks: Iterable[Mapping[str, Any]],
        minutes: Iterable[tuple[int, MinuteTotals]],
        expected_all: float,
    ) -> Aggregates:
        agg = cls()
        for w in workers:
            agg._add_worker(w)
            agg.shares += w.shares
            agg.credit_units += w.credit_units
            agg.fee_units += w.fee_units
        agg.balances = {b.address: b for b in balances}
        agg.blocks = {str(b["hash"]): dict(b) for b in blocks}
        for minute, totals in sorted(minutes, key=lambda m: m[0]):
            agg._add_minute(minute, totals)
        agg.expected_all = expected_all
        return agg

    # -- changes ---------------------------------------------------------------------------------
    def merge(self, delta: BatchDelta) -> None:
        """A batch the store applied."""
        for name, more in delta.workers.items():
            old = self.workers.get(name)
            if old is None:
                self._add_worker(more)
            else:
                self.workers[name] = old.plus(more)
        for address, units in delta.credits.items():
            b = self.balances.get(address)
            self.balances[address] = (
                Balance(address, units, 0, 0)
                if b is None
                else Balance(address, b.credited_units + units, b.paid_units, b.pending_units)
            )
        pool: dict[int, MinuteTotals] = {}
        for (minute, _), m in delta.minutes.items():
            p = pool.get(minute)
            if p is None:
                p = pool[minute] = MinuteTotals()
            p.shares += m.shares
            p.difficulty_sum += m.difficulty_sum
            p.expected_blocks += m.expected_blocks
        for minute in sorted(pool):
            self._add_minute(minute, pool[minute])
            self.expected_all += pool[minute].expected_blocks
        self.shares += delta.shares
        self.credit_units += delta.credit_units
        self.fee_units += delta.fee_units
        for row in delta.blocks:
            self.set_block(row)
        self.version += 1

    def set_block(self, row: Mapping[str, Any]) -> None:
        """A block row as the store now has it (new or changed)."""
        self.blocks[str(row["hash"])] = dict(row)
        self._blocks_sorted = None
        self.version += 1

    def set_balances(self, balances: Iterable[Balance]) -> None:
        """Balances as the store now has them (after a payout changed them)."""
        for b in balances:
            self.balances[b.address] = b
        self.version += 1

    def _add_worker(self, w: WorkerTotals) -> None:
        self.workers[w.name] = w
        if self._names and w.name < self._names[-1]:
            self._names_sorted = False
        self._names.append(w.name)
        names = self._by_address.setdefault(w.address, [])
        if names and w.name < names[-1]:
            self._unsorted_addresses.add(w.address)  # sorted when read
        names.append(w.name)

    def _add_minute(self, minute: int, more: MinuteTotals) -> None:
        m = self._minutes.get(minute)
        if m is None:
            last = next(reversed(self._minutes), None)
            self._minutes[minute] = MinuteTotals(
                more.shares, more.difficulty_sum, more.expected_blocks
            )
            if last is not None and minute < last:  # out of order (a clock step): re-sort
                self._minutes = dict(sorted(self._minutes.items()))
            self._prune_minutes()
        else:
            m.shares += more.shares
            m.difficulty_sum += more.difficulty_sum
            m.expected_blocks += more.expected_blocks
        hour = minute // 60
        if hour in self._hours:
            self._hours[hour] += more.expected_blocks
        else:
            last_hour = next(reversed(self._hours), None)
            self._hours[hour] = more.expected_blocks
            if last_hour is not None and hour < last_hour:
                self._hours = dict(sorted(self._hours.items()))

    def _prune_minutes(self) -> None:
        newest = next(reversed(self._minutes))
        while len(self._minutes) > 1:
            oldest = next(iter(self._minutes))
            if oldest >= newest - KEEP_MINUTES:
                break
            del self._minutes[oldest]
        newest_hour = newest // 60
        while len(self._hours) > 1:
            oldest = next(iter(self._hours))
            if oldest >= newest_hour - KEEP_MINUTES // 60 - 1:
                break
            del self._hours[oldest]

    # -- reads -----------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every worker with a share in the ledger, sorted (do not modify the list)."""
        if not self._names_sorted:
            self._names.sort()
            self._names_sorted = True
        return self._names

    def workers_of(self, address: str) -> Sequence[str]:
        """The ledger's workers of ``address``, sorted (do not modify the list)."""
        names = self._by_address.get(address)
        if names is None:
            return ()
        if address in self._unsorted_addresses:
            names.sort()
            self._unsorted_addresses.discard(address)
        return names

    def totals(self) -> dict[str, int]:
        return {
            "shares": self.shares,
            "credit_units": self.credit_units,
            "fee_units": self.fee_units,
        }

    def block_counts(self) -> Counter[str]:
        """Blocks by status (every status present, 0 when none)."""
        counts = Counter({s: 0 for s in BLOCK_STATUSES})
        counts.update(str(b["status"]) for b in self.blocks.values())
        return counts

    def rewards_sat(self) -> dict[str, int]:
        out = dict.fromkeys(BLOCK_STATUSES, 0)
        for b in self.blocks.values():
            status = str(b["status"])
            out[status] = out.get(status, 0) + int(b["reward_sat"])
        return out

    def reserve(self) -> Reserve:
        """The PPS reserve: blocks found on PPS/FPPS ports against the PPS/FPPS credits and
        fees. PPLNS and SOLO blocks are not in it (their rewards are the window's or the
        finder's) and their shares carry no credit, so they add no PPS liability."""
        rewards = dict.fromkeys(BLOCK_STATUSES, 0)
        for b in self.blocks.values():
            if b.get("scheme") not in NOT_RESERVE_SCHEMES:
                rewards[str(b["status"])] = rewards.get(str(b["status"]), 0) + int(b["reward_sat"])
        return Reserve(
            rewards_earned_units=(rewards[PENDING] + rewards[CONFIRMED]) * UNITS_PER_SAT,
            rewards_confirmed_units=rewards[CONFIRMED] * UNITS_PER_SAT,
            credits_units=self.credit_units,
            fees_units=self.fee_units,
        )

    def recent_blocks(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` blocks, any status (as ``Store.blocks``)."""
        if self._blocks_sorted is None:
            self._blocks_sorted = sorted(self.blocks.values(), key=block_order)
        return self._blocks_sorted[:limit]

    def pool_minutes(self, since_minute: int) -> list[dict[str, Any]]:
        """Pool-wide shares per minute from ``since_minute`` (as ``Store.minutes``)."""
        rows = []
        for minute in reversed(self._minutes):
            if minute < since_minute:
                break
            m = self._minutes[minute]
            rows.append(
                {
                    "minute": minute,
                    "shares": m.shares,
                    "difficulty_sum": m.difficulty_sum,
                    "expected_blocks": m.expected_blocks,
                }
            )
        rows.reverse()
        return rows

    def expected_blocks_since(self, since: float) -> float:
        """Expected blocks of the shares from the minute of ``since`` on (whole hours from
        the hour buckets, the partial first hour from the minute buckets)."""
        first = int(since // MINUTE)
        first_hour = -(-first // 60)  # the first hour that starts at or after ``first``
        total = 0.0
        for minute in range(first, first_hour * 60):
            m = self._minutes.get(minute)
            if m is not None:
                total += m.expected_blocks
        for hour in reversed(self._hours):
            if hour < first_hour:
                break
            total += self._hours[hour]
        return total

    def blocks_found_since(self, since: float) -> int:
        """Blocks found from ``since`` on; refused (rejected) ones never count."""
        return sum(
            1 for b in self.blocks.values() if b["status"] != REJECTED and b["found_at"] >= since
        )

    def luck(self, now: float) -> dict[str, dict[str, float | int | None]]:
        """Per window: expected blocks, blocks found, luck = expected / found (see
        ``Ledger.luck``)."""
        out: dict[str, dict[str, float | int | None]] = {}
        for name, span in LUCK_WINDOWS.items():
            since = now - span
            expected = self.expected_blocks_since(since)
            found = self.blocks_found_since(since)
            out[name] = {
                "expected_blocks": expected,
                "found_blocks": found,
                "luck": expected / found if found else None,
            }
        found = self.blocks_found_since(0.0)
        out["all"] = {
            "expected_blocks": self.expected_all,
            "found_blocks": found,
            "luck": self.expected_all / found if found else None,
        }
        return out
