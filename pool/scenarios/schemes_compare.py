"""The payout schemes compared on the same run. PURE: no I/O, no clock; money in the ledger's
units (micro-satoshis, ``pool.ledger.pps.UNITS_PER_SAT``), as integers.

Input: the run's accepted shares in journal order (``RunShare``: difficulty, the job's network
target, the subsidy and coinbase value of the job's template, the miner's address) and its
found blocks (``RunBlock``: finder, reward = the template's coinbase value, status). Output:
what each miner (keyed by payout address, where the ledger keeps balances) earns under

- **PPS**: every share is credited ``pool.ledger.pps.share_value`` against the subsidy, the
  ledger's own function (on a PPS run this is, to the unit, the ledger's balances);
- **FPPS**: the same against the template's coinbase value (subsidy + its fees);
- **PPLNS**: every earned block's reward, fee deducted, split over the window of the last
  ``N`` difficulty-units of shares ending at the block's share (``pool.ledger.pplns``), with
  ``N = pplns_window_blocks x the block's network difficulty`` (the shares of about that many
  expected blocks);
- **SOLO**: every earned block's whole reward to its finder, the fee deducted (a miner who
  found none earns 0).

"Earned" blocks are the ones the ledger counts in its PPS reserve: pending or confirmed. An
orphaned or rejected block pays nobody under PPLNS and SOLO and earns the pool nothing under
PPS/FPPS (pending blocks are counted as if they will mature). One fee (the run's) applies to
every scheme, so the columns differ by the scheme alone.

The pool's side under each scheme: what it keeps of the earned rewards minus what it credits.
Under PPS/FPPS that is the reserve's result (rewards - credits, fee included), and its path
over the run (``pps_pool_path``); under PPLNS and SOLO the fee and the rounding dust.

The Monte Carlo parts (spread and probability of ruin) are in ``pool.scenarios.schemes_mc``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction

from pool.bitcoin.target import DIFF1_TARGET
from pool.ledger.pplns import pplns_credits
from pool.ledger.pps import FEE_DENOMINATOR, UNITS_PER_SAT, expected_blocks, share_value

SCHEMES = ("pps", "fpps", "pplns", "solo")
EARNED = ("pending", "confirmed")  # the block statuses the ledger's reserve counts
DEFAULT_PPLNS_WINDOW_BLOCKS = 2


@dataclass(frozen=True)
class RunShare:
    """One accepted share of the run, as the journal recorded it."""

    time: float
    address: str  # the payout address (ledger balances are per address)
    difficulty: float
    target: int  # the job's network target
    subsidy_sat: int  # the subsidy of the job's template
    coinbase_value_sat: int  # subsidy + the fees of the job's template (FPPS)
    block_hash: str | None = None  # set when the share was a block candidate

    @property
    def expected_blocks(self) -> float:
        return expected_blocks(self.difficulty, self.target)


@dataclass(frozen=True)
class RunBlock:
    """One block candidate the run submitted, with its status in the store."""

    hash: str
    height: int
    address: str  # the finder's payout address
    reward_sat: int  # the coinbase value of its template (subsidy + fees)
    status: str  # pending | confirmed | orphaned | rejected
    time: float

    @property
    def earned(self) -> bool:
        return self.status in EARNED


@dataclass(frozen=True)
class PoolSide:
    """What the pool takes in (earned block rewards it owns), pays out (credits) and keeps."""

    rewards: int
    credits: int
    fees: int  # the fee part of what it keeps (PPS: the shares' fees)

    @property
    def result(self) -> int:
        return self.rewards - self.credits


@dataclass(frozen=True)
class SchemeResult:
    earnings: dict[str, int]  # address -> units
    pool: PoolSide
    # PPLNS and SOLO: (time of the block's share, what the pool kept of it), per earned block
    kept: tuple[tuple[float, int], ...] = ()


def _add(out: dict[str, int], key: str, units: int) -> None:
    out[key] = out.get(key, 0) + units


def earned_blocks(blocks: Sequence[RunBlock]) -> list[RunBlock]:
    return [b for b in blocks if b.earned]


def per_share(
    shares: Sequence[RunShare], blocks: Sequence[RunBlock], fee_bps: int, *, full: bool
) -> SchemeResult:
    """PPS (``full`` False: against the subsidy) or FPPS (against the coinbase value): the
    ledger's ``share_value`` per share; the pool owns every earned block's reward."""
    earnings: dict[str, int] = {}
    fees = 0
    for s in shares:
        value = share_value(
            s.difficulty, s.target, s.coinbase_value_sat if full else s.subsidy_sat, fee_bps
        )
        _add(earnings, s.address, value.credit)
        fees += value.fee
    rewards = sum(b.reward_sat for b in earned_blocks(blocks)) * UNITS_PER_SAT
    return SchemeResult(earnings, PoolSide(rewards, sum(earnings.values()), fees))


def solo(blocks: Sequence[RunBlock], fee_bps: int) -> SchemeResult:
    """Every earned block's reward to its finder, less the fee (rounded down: the rest is
    the pool's)."""
    earnings: dict[str, int] = {}
    kept: list[tuple[float, int]] = []
    total = 0
    for b in earned_blocks(blocks):
        reward = b.reward_sat * UNITS_PER_SAT
        net = reward * (FEE_DENOMINATOR - fee_bps) // FEE_DENOMINATOR
        total += reward
        _add(earnings, b.address, net)
        kept.append((b.time, reward - net))
    paid = sum(earnings.values())
    return SchemeResult(earnings, PoolSide(total, paid, total - paid), tuple(kept))


def pplns_window(share: RunShare, window_blocks: Fraction) -> Fraction:
    """N in difficulty-units for a block found by ``share``: ``window_blocks`` x the network
    difficulty of its job (exact)."""
    return window_blocks * Fraction(DIFF1_TARGET, share.target)


class _Window(Sequence[tuple[str, float]]):
    """``(address, difficulty)`` of shares[start:end] without copying them."""

    def __init__(self, shares: Sequence[RunShare], start: int, end: int) -> None:
        self._shares, self._start, self._end = shares, start, end

    def __len__(self) -> int:
        return self._end - self._start

    def __getitem__(self, i: int) -> tuple[str, float]:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        s = self._shares[self._start + (i % len(self))]
        return s.address, s.difficulty

    def __reversed__(self) -> Iterator[tuple[str, float]]:
        for i in range(self._end - 1, self._start - 1, -1):
            s = self._shares[i]
            yield s.address, s.difficulty


class PplnsLog:
    """The run's shares in journal order with float prefix sums of their difficulties, so
    each block's window is found without walking the whole log (the exact walk is
    ``pool.ledger.pplns``'s, on a slice that surely holds the window)."""

    def __init__(self, shares: Sequence[RunShare]) -> None:
        self.shares = shares
        self.prefix = [0.0]
        for s in shares:
            self.prefix.append(self.prefix[-1] + s.difficulty)

    def window(self, index: int, units: Fraction) -> _Window:
        """The shares up to and including ``index`` that the window can reach (one more
        share than the float sums say is needed, so rounding cannot cut it short)."""
        need = self.prefix[index + 1] - float(units) * (1 + 1e-9)
        start = bisect.bisect_right(self.prefix, need) - 2
        return _Window(self.shares, max(start, 0), index + 1)

    def split(
        self, index: int, reward_units: int, window_blocks: Fraction, fee_bps: int
    ) -> tuple[dict[str, int], int]:
        """(credits per address, the pool's part) of a block found by share ``index``."""
        units = pplns_window(self.shares[index], window_blocks)
        split = pplns_credits(self.window(index, units), units, reward_units, fee_bps)
        return split.credits, split.pool


def pplns(
    shares: Sequence[RunShare],
    blocks: Sequence[RunBlock],
    fee_bps: int,
    window_blocks: Fraction,
    log: PplnsLog | None = None,
) -> tuple[SchemeResult, int]:
    """PPLNS over the run; also how many earned blocks had no share in the journal (their
    reward is left out: nobody to split it over)."""
    log = log or PplnsLog(shares)
    index = {s.block_hash: i for i, s in enumerate(shares) if s.block_hash}
    earnings: dict[str, int] = {}
    steps: list[tuple[float, int]] = []
    rewards = kept = missing = 0
    for b in earned_blocks(blocks):
        i = index.get(b.hash)
        if i is None:
            missing += 1
            continue
        reward = b.reward_sat * UNITS_PER_SAT
        credits, pool = log.split(i, reward, window_blocks, fee_bps)
        for key, units in credits.items():
            _add(earnings, key, units)
        rewards += reward
        kept += pool
        steps.append((shares[i].time, pool))
    result = SchemeResult(earnings, PoolSide(rewards, rewards - kept, kept), tuple(steps))
    return result, missing


def pps_pool_path(
    shares: Sequence[RunShare], blocks: Sequence[RunBlock], fee_bps: int, *, full: bool = False
) -> list[tuple[float, int]]:
    """The pool's PPS (FPPS: ``full``) result over the run, ``[(time, rewards - credits so
    far)]``: a point after every share (credits out) and every earned block (its reward in;
    at its share's time). The fee stays in it. Only the points around blocks are kept (the
    credits in between fall in a straight line)."""
    reward_at = {b.hash: b.reward_sat * UNITS_PER_SAT for b in earned_blocks(blocks)}
    path: list[tuple[float, int]] = []
    balance = 0
    for s in shares:
        value = s.coinbase_value_sat if full else s.subsidy_sat
        balance -= share_value(s.difficulty, s.target, value, fee_bps).credit
        reward = reward_at.get(s.block_hash) if s.block_hash else None
        if reward is not None:
            path.append((s.time, balance))  # the low point just before the block
            balance += reward
        path.append((s.time, balance))
    return _thin(path)


def _thin(path: list[tuple[float, int]]) -> list[tuple[float, int]]:
    """Keep the extremes: the first and last point, and every point before and after a
    rise (a block); the credits in between fall in a straight line."""
    if len(path) <= 2:
        return path
    keep = [path[0]]
    for prev, cur, nxt in zip(path, path[1:], path[2:], strict=False):
        if nxt[1] > cur[1] or cur[1] > prev[1]:
            keep.append(cur)
    keep.append(path[-1])
    return keep


@dataclass(frozen=True)
class Comparison:
    """The four schemes on one run (units)."""

    results: dict[str, SchemeResult]
    addresses: list[str]  # every address that submitted a share or found a block
    blocks_found: dict[str, int]  # earned blocks per finder
    expected_blocks: dict[str, float]  # the miner's shares' expected blocks (d / D summed)
    work: dict[str, float]  # accepted difficulty per address
    pplns_blocks_without_share: int
    fees_unknown_shares: int  # shares whose template fees were not known (FPPS at subsidy)


def compare(
    shares: Sequence[RunShare],
    blocks: Sequence[RunBlock],
    fee_bps: int,
    *,
    pplns_window_blocks: Fraction = Fraction(DEFAULT_PPLNS_WINDOW_BLOCKS),
    fees_unknown_shares: int = 0,
    log: PplnsLog | None = None,
) -> Comparison:
    if not 0 <= fee_bps <= FEE_DENOMINATOR:
        raise ValueError(f"fee must be 0..{FEE_DENOMINATOR} basis points, got {fee_bps}")
    if pplns_window_blocks <= 0:
        raise ValueError(f"the PPLNS window must be positive, got {pplns_window_blocks}")
    pplns_result, missing = pplns(shares, blocks, fee_bps, pplns_window_blocks, log)
    results = {
        "pps": per_share(shares, blocks, fee_bps, full=False),
        "fpps": per_share(shares, blocks, fee_bps, full=True),
        "pplns": pplns_result,
        "solo": solo(blocks, fee_bps),
    }
    work: dict[str, float] = {}
    expected: dict[str, float] = {}
    for s in shares:
        work[s.address] = work.get(s.address, 0.0) + s.difficulty
        expected[s.address] = expected.get(s.address, 0.0) + s.expected_blocks
    found: dict[str, int] = {}
    for b in earned_blocks(blocks):
        _add(found, b.address, 1)
    addresses = list(dict.fromkeys([*work, *(b.address for b in blocks)]))
    return Comparison(results, addresses, found, expected, work, missing, fees_unknown_shares)


def units_to_btc(units: int | float) -> float:
    return float(units) / UNITS_PER_SAT / 1e8
