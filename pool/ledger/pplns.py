"""PPLNS credit maths (pure: no I/O, no clock; integer money in the ledger's units).

PPLNS ("pay per last N shares") pays a found block's reward to the shares of a window that
ends at the block's own share and reaches back ``N`` difficulty-units: each share of
difficulty ``d`` weighs ``d``; the shares are walked from the block's share backwards (journal
order) until ``N`` units are gathered.

Rules (all exact, with ``fractions.Fraction``; share difficulties are floats, i.e. exact binary
fractions):

* **Window edge**: the oldest share of the window counts only partly when it straddles the
  window start: it weighs the part of it that is still inside, ``N - (units of the newer shares
  in the window)``. Every older share weighs 0. A block share whose own difficulty is ``>= N``
  fills the window alone (it weighs ``N``).
* **Short log**: when all the shares together weigh less than ``N`` (a new pool, or a window
  larger than the log), the whole reward goes to the shares there are, in proportion (the
  window is the whole log; nothing is held back for shares that do not exist).
* **Fee**: ``net = reward * (10000 - fee_bps) / 10000`` (exact). ``fee_units = reward -
  floor(net)`` is the pool's fee.
* **Rounding**: each key's credit is ``floor(net * weight_of_key / total_weight)``, rounded
  down once per key (a key's weights are summed exactly before rounding). The rounding
  ``remainder = floor(net) - sum(credits)`` (under one unit per key in the window) goes to the
  pool, like the fee. So ``sum(credits) + fee_units + remainder == reward`` always, and
  ``sum(credits) <= reward``.

Keys are opaque strings (the ledger uses the miner's payout address, where balances live).

Pruning: a share can fall in a future window only while the shares after it weigh less than
``N`` (every future window ends at a later share and reaches back at most ``N`` units).
``prune_before`` gives the first share that must be kept.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

from pool.ledger.pps import FEE_DENOMINATOR

Units = int | Fraction


@dataclass(frozen=True)
class Split:
    """One block's PPLNS split, in units."""

    credits: dict[str, int]  # key -> credit (rounded down); keys with a zero credit included
    fee: int  # the pool's fee: reward - floor(net)
    remainder: int  # rounding dust, to the pool: floor(net) - sum(credits)
    window: Fraction  # the total weight the split used: min(N, all shares' units)
    shares: int  # how many shares (wholly or partly) fell in the window

    @property
    def pool(self) -> int:
        """Everything the pool keeps of the reward (fee + remainder)."""
        return self.fee + self.remainder


def _check_window(window_units: Units) -> Fraction:
    n = Fraction(window_units)
    if not n > 0:
        raise ValueError(f"the PPLNS window must be positive, got {window_units!r}")
    return n


def _check_difficulty(difficulty: float | int | Fraction) -> Fraction:
    d = Fraction(difficulty)
    if not d > 0:
        raise ValueError(f"share difficulty must be positive, got {difficulty!r}")
    return d


def window_weights(
    shares: Sequence[tuple[str, float | int | Fraction]], window_units: Units
) -> tuple[dict[str, Fraction], int]:
    """Each key's weight in the window ending at the LAST share of ``shares`` (journal order,
    the block's share last), and how many shares fell in it. The weights sum to
    ``min(N, all units)``."""
    n = _check_window(window_units)
    # Exact, in integers over one common denominator ``scale`` (float difficulties have
    # power-of-two denominators, so it rarely grows): Fraction sums per share are slow.
    scale = n.denominator
    room = n.numerator  # N - gathered, over scale
    weights: dict[str, int] = {}
    count = 0
    for key, difficulty in reversed(shares):
        num, den = _ratio(difficulty)
        if scale % den:
            grow = den // math.gcd(scale, den)
            scale *= grow
            room *= grow
            for k in weights:
                weights[k] *= grow
        d = num * (scale // den)
        take = d if d < room else room
        weights[key] = weights.get(key, 0) + take
        room -= take
        count += 1
        if room <= 0:
            break
    return {k: Fraction(w, scale) for k, w in weights.items()}, count


def _ratio(difficulty: float | int | Fraction) -> tuple[int, int]:
    """A positive difficulty as an exact (numerator, denominator)."""
    if isinstance(difficulty, float):
        if not (difficulty > 0 and math.isfinite(difficulty)):
            raise ValueError(f"share difficulty must be positive, got {difficulty!r}")
        return difficulty.as_integer_ratio()
    d = _check_difficulty(difficulty)
    return d.numerator, d.denominator


def split_reward(weights: dict[str, Fraction], reward_units: int, fee_bps: int) -> Split:
    """Share ``reward_units`` out by ``weights`` (see the module docstring for the rounding)."""
    if reward_units < 0:
        raise ValueError(f"the reward cannot be negative, got {reward_units}")
    if not 0 <= fee_bps <= FEE_DENOMINATOR:
        raise ValueError(f"fee must be 0..{FEE_DENOMINATOR} basis points, got {fee_bps}")
    if any(w < 0 for w in weights.values()):
        raise ValueError("weights cannot be negative")
    net = Fraction(reward_units * (FEE_DENOMINATOR - fee_bps), FEE_DENOMINATOR)
    net_units = net.numerator // net.denominator
    total = sum(weights.values(), Fraction(0))
    if total == 0:  # nobody to pay: all of it stays with the pool
        return Split({}, reward_units - net_units, net_units, total, 0)
    credits: dict[str, int] = {}
    for key, weight in weights.items():
        exact = net * weight / total
        credits[key] = exact.numerator // exact.denominator
    return Split(
        credits=credits,
        fee=reward_units - net_units,
        remainder=net_units - sum(credits.values()),
        window=total,
        shares=0,
    )


def pplns_credits(
    shares: Sequence[tuple[str, float | int | Fraction]],
    window_units: Units,
    reward_units: int,
    fee_bps: int,
) -> Split:
    """The PPLNS split of a block: ``shares`` in journal order ending with the block's share,
    a window of ``window_units`` difficulty-units, the block's reward in units, the fee in
    basis points. Each key's credit in units, rounded down; fee and remainder to the pool."""
    weights, count = window_weights(shares, window_units)
    split = split_reward(weights, reward_units, fee_bps)
    return Split(split.credits, split.fee, split.remainder, split.window, count)


def prune_before(difficulties: Sequence[float | int | Fraction], window_units: Units) -> int:
    """Index of the oldest share that can still fall in a future window (all shares before
    it can be dropped): the newest shares weighing ``>= N`` are kept, plus nothing older,
    because every future window ends at a share not older than the newest one."""
    n = _check_window(window_units)
    gathered = Fraction(0)
    for index in range(len(difficulties) - 1, -1, -1):
        gathered += _check_difficulty(difficulties[index])
        if gathered >= n:
            return index
    return 0


def total_units(difficulties: Iterable[float | int | Fraction]) -> Fraction:
    return sum((Fraction(d) for d in difficulties), Fraction(0))
