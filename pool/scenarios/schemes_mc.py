"""The Monte Carlo parts of the scheme comparison. PURE: no I/O, no clock; seeded
(``random.Random(seed)``), so the same inputs and seed give the same figures.

**Spread** (``resample_spread``): how much each miner's earnings over the run depend on luck.
The run's shares are replayed as they were (same miners, same difficulties, same order), and
only luck is redrawn: each share is a block with its probability ``p = min(d / D, 1)`` (an
accepted share of difficulty ``d`` has a hash uniformly below its share target, so it also
meets the network target with exactly that probability), independently, with its template's
coinbase value as the reward. Under each of ``resamples`` such block sequences every scheme
pays out; a miner's spread is the standard deviation of its earnings across them (and its
coefficient of variation, spread / mean). This measures the variance each scheme puts on the
miner for the same work, which a time-bucket measure would mix up with the miner's own
hashrate changes (a miner leaving). PPS and FPPS pay per share, whatever the blocks: their
spread is 0 by construction, and the pool's result carries the luck instead. The resampled
runs have no orphans (the real run may have some).

**Probability of ruin** (``ruin``): the pool pays PPS for the run's expected work while blocks
arrive as a Poisson process at the run's rate. Time is counted in expected blocks (one unit =
the run's mean time per expected block), money in mean block rewards ``B`` (the run's
expected reward per block, ``sum p * coinbase value / sum p``). The reserve is

    R(t) = x + N(t) - q t,    q = PPS credits of the run / (sum p * coinbase value)

(``q`` = 1 - fee when the blocks carry no fees; the fee stays in the reserve). Ruin: ``R``
goes below 0 at any time up to the horizon. ``R`` only falls between blocks, so its low
points are just before each block and at the horizon; every path is drawn once and checked
for every starting reserve ``x`` and horizon. A starting reserve of 0 is ruined at once (the
first credit comes before the first block) and a reserve above ``q x horizon`` never is.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from pool.ledger.pps import FEE_DENOMINATOR, UNITS_PER_SAT
from pool.scenarios.schemes_compare import SCHEMES, PplnsLog, RunShare

DEFAULT_SEED = 20260207
DEFAULT_PATHS = 2000
DEFAULT_RESAMPLES = 200
DEFAULT_RESERVES = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0)  # mean block rewards
DEFAULT_HORIZONS = (144.0, 1008.0)  # expected blocks (mainnet: a day, a week); + the run's
MAX_PATHS = 1_000_000
MAX_RESAMPLES = 100_000


@dataclass(frozen=True)
class Stats:
    mean: float
    std: float  # population standard deviation across the resamples

    @property
    def cv(self) -> float | None:
        return self.std / self.mean if self.mean else None


def _stats(values: Sequence[int]) -> Stats:
    """Mean and population standard deviation, exact until the final square root (the
    values are integer units: equal values have a spread of exactly 0)."""
    n = len(values)
    if n == 0:
        return Stats(0.0, 0.0)
    total = sum(values)
    squares = sum(v * v for v in values)
    variance = Fraction(n * squares - total * total, n * n)
    return Stats(float(Fraction(total, n)), math.sqrt(variance))


@dataclass
class Spread:
    resamples: int
    seed: int
    miners: dict[str, dict[str, Stats]]  # scheme -> address -> stats (units)
    pool: dict[str, Stats]  # scheme -> the pool's result (units)
    blocks: Stats  # blocks per resampled run


def resample_spread(
    shares: Sequence[RunShare],
    pps_earnings: dict[str, dict[str, int]],
    fee_bps: int,
    window_blocks: Fraction,
    *,
    resamples: int,
    seed: int,
    log: PplnsLog | None = None,
) -> Spread:
    """See the module docstring. ``pps_earnings``: scheme ("pps", "fpps") -> address ->
    units, the run's per-share credits (the same in every resample)."""
    if not 1 <= resamples <= MAX_RESAMPLES:
        raise ValueError(f"resamples must be 1..{MAX_RESAMPLES}, got {resamples}")
    rng = random.Random(seed)
    log = log or PplnsLog(shares)
    probs = [s.expected_blocks for s in shares]
    addresses = list(dict.fromkeys(s.address for s in shares))
    runs: dict[str, dict[str, list[int]]] = {
        scheme: {a: [] for a in addresses} for scheme in SCHEMES
    }
    pool_runs: dict[str, list[int]] = {scheme: [] for scheme in SCHEMES}
    block_counts: list[int] = []
    credited = {scheme: sum(pps_earnings[scheme].values()) for scheme in ("pps", "fpps")}
    # A share's PPLNS split is the same in every resample where it is a block (same window,
    # same reward): computed once per share.
    splits: dict[int, tuple[dict[str, int], int]] = {}
    for _ in range(resamples):
        found = [i for i, p in enumerate(probs) if rng.random() < p]
        block_counts.append(len(found))
        rewards = 0
        solo: dict[str, int] = {}
        plns: dict[str, int] = {}
        pplns_kept = 0
        for i in found:
            s = shares[i]
            reward = s.coinbase_value_sat * UNITS_PER_SAT
            rewards += reward
            net = reward * (FEE_DENOMINATOR - fee_bps) // FEE_DENOMINATOR
            solo[s.address] = solo.get(s.address, 0) + net
            split = splits.get(i)
            if split is None:
                split = splits[i] = log.split(i, reward, window_blocks, fee_bps)
            credits, kept = split
            for a, units in credits.items():
                plns[a] = plns.get(a, 0) + units
            pplns_kept += kept
        for a in addresses:
            runs["pps"][a].append(pps_earnings["pps"].get(a, 0))
            runs["fpps"][a].append(pps_earnings["fpps"].get(a, 0))
            runs["pplns"][a].append(plns.get(a, 0))
            runs["solo"][a].append(solo.get(a, 0))
        pool_runs["pps"].append(rewards - credited["pps"])
        pool_runs["fpps"].append(rewards - credited["fpps"])
        pool_runs["pplns"].append(pplns_kept)
        pool_runs["solo"].append(rewards - sum(solo.values()))
    return Spread(
        resamples=resamples,
        seed=seed,
        miners={sch: {a: _stats(v) for a, v in by.items()} for sch, by in runs.items()},
        pool={sch: _stats(v) for sch, v in pool_runs.items()},
        blocks=_stats(block_counts),
    )


@dataclass
class Ruin:
    paths: int
    seed: int
    payout_ratio: float  # q
    horizons: list[float]  # expected blocks, ascending
    reserves: list[float]  # mean block rewards, ascending
    probability: list[list[float]]  # [horizon][reserve]
    low_points: list[list[float]] = field(default_factory=list)  # per horizon, sorted

    def standard_error(self, p: float) -> float:
        return math.sqrt(p * (1 - p) / self.paths)


def ruin(
    *,
    payout_ratio: float,
    horizons: Sequence[float],
    reserves: Sequence[float],
    paths: int,
    seed: int,
) -> Ruin:
    """P(the reserve goes below 0 by each horizon) for each starting reserve (module
    docstring). Horizons in expected blocks, reserves in mean block rewards."""
    if not 1 <= paths <= MAX_PATHS:
        raise ValueError(f"paths must be 1..{MAX_PATHS}, got {paths}")
    if not payout_ratio >= 0 or not math.isfinite(payout_ratio):
        raise ValueError(f"the payout ratio must be finite and >= 0, got {payout_ratio!r}")
    if not horizons or any(not h > 0 or not math.isfinite(h) for h in horizons):
        raise ValueError(f"horizons must be positive, got {list(horizons)}")
    if any(x < 0 or not math.isfinite(x) for x in reserves):
        raise ValueError(f"starting reserves cannot be negative, got {list(reserves)}")
    hs = sorted(set(horizons))
    q = payout_ratio
    rng = random.Random(seed)
    expo = rng.expovariate
    lows: list[list[float]] = [[] for _ in hs]
    for _ in range(paths):
        t = 0.0
        k = 0
        low = 0.0  # min of (reserve - x) so far
        hi = 0
        while hi < len(hs):
            arrival = t + expo(1.0)
            while hi < len(hs) and hs[hi] < arrival:  # horizon before the next block
                lows[hi].append(min(low, k - q * hs[hi]))
                hi += 1
            before = k - q * arrival  # just before the block
            if before < low:
                low = before
            k += 1
            t = arrival
    probability = []
    for row in lows:
        row.sort()
        # ruined iff x + low < 0, i.e. low < -x
        probability.append([bisect.bisect_left(row, -x) / paths for x in reserves])
    return Ruin(paths, seed, q, hs, list(reserves), probability, lows)
