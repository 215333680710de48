"""PPS / FPPS credit maths (pure: no I/O, no clock).

A share of difficulty ``d`` submitted for a job whose network target is ``T`` is worth

    gross = d / D * B        with D = DIFF1_TARGET / T (the job's network difficulty)
          = d * T * B / DIFF1_TARGET
    credit = gross * (1 - fee)

``B`` is the block subsidy at the job's height (PPS) or the subsidy plus the fees of the job's
own block template (FPPS: ``coinbasevalue`` of the template the miner worked on; no trailing
average, so the miner is paid for exactly the fees the pool would have collected with that
share's block). On a simulated regtest chain ``T`` is the simulated target, so PPS pays
against the simulated difficulty.

No share is worth more than one block: the credited difficulty is ``min(d, D)``. (A share at
or above the network difficulty is itself a block; on plain regtest, where D is ~5e-10, every
share is one.) This also bounds every amount: the credits never exceed the blocks' value.

Units: every ledger amount below a whole payout is kept in **micro-satoshis** (``UNIT``:
1 unit = 10^-6 sat = 10^-14 BTC), as Python/SQLite integers. The share difficulty is a float;
floats are exact binary fractions, so the product above is computed exactly with
``fractions.Fraction`` and rounded once per share:

* ``gross_units = floor(gross)`` in units;
* ``credit_units = floor(gross * (10000 - fee_bps) / 10000)`` in units (rounded down);
* ``fee_units = gross_units - credit_units`` (the pool's fee);
* the sub-unit remainder (``gross - gross_units``, under one micro-satoshi per share) is
  neither credited nor counted as fee: it stays in the PPS reserve. A million shares leave
  at most one satoshi there, all miners together.

Payouts are in whole satoshis: ``payable_sat(units) = units // UNITS_PER_SAT``; the
sub-satoshi rest stays on the miner's balance for the next payout, so nothing is lost.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from fractions import Fraction

from pool.bitcoin.target import DIFF1_TARGET

UNITS_PER_SAT = 1_000_000
FEE_DENOMINATOR = 10_000  # fees in basis points: 100 = 1 %


class Scheme(enum.StrEnum):
    PPS = "pps"  # subsidy only
    FPPS = "fpps"  # subsidy + the fees of the job's template
    PPLNS = "pplns"  # no credit per share; a found block's reward split over a window at maturity
    SOLO = "solo"  # no credit per share; the block's coinbase pays the finder directly


@dataclass(frozen=True)
class ShareValue:
    gross: int  # units, rounded down
    credit: int  # units paid to the miner
    fee: int  # units kept by the pool


def block_value(scheme: Scheme, subsidy_sat: int, coinbase_value_sat: int) -> int:
    """B in satoshis for ``scheme``: the subsidy, or subsidy + template fees (FPPS, PPLNS
    and SOLO: the whole coinbase value is what such a block brings)."""
    if subsidy_sat < 0 or coinbase_value_sat < 0:
        raise ValueError("block values cannot be negative")
    return subsidy_sat if scheme is Scheme.PPS else coinbase_value_sat


def exact_gross_units(difficulty: float, network_target: int, block_value_sat: int) -> Fraction:
    """The exact expected value of the share, in units (a Fraction)."""
    if not difficulty > 0:
        raise ValueError(f"share difficulty must be positive, got {difficulty!r}")
    if network_target <= 0:
        raise ValueError("network target must be positive")
    ratio = min(Fraction(difficulty) * network_target / DIFF1_TARGET, Fraction(1))
    return ratio * block_value_sat * UNITS_PER_SAT


@functools.lru_cache(maxsize=4096)
def share_value(
    difficulty: float, network_target: int, block_value_sat: int, fee_bps: int
) -> ShareValue:
    """The credit for one accepted share (see the module docstring for the rounding).

    Memoised: a connection's shares repeat the same four inputs until its difficulty or the
    job changes, and the exact Fraction arithmetic is the costly part of crediting a share."""
    if not 0 <= fee_bps <= FEE_DENOMINATOR:
        raise ValueError(f"fee must be 0..{FEE_DENOMINATOR} basis points, got {fee_bps}")
    exact = exact_gross_units(difficulty, network_target, block_value_sat)
    gross = exact.numerator // exact.denominator
    net = exact * (FEE_DENOMINATOR - fee_bps) / FEE_DENOMINATOR
    credit = net.numerator // net.denominator
    return ShareValue(gross=gross, credit=credit, fee=gross - credit)


@functools.lru_cache(maxsize=4096)
def expected_blocks(difficulty: float, network_target: int) -> float:
    """min(d / D, 1): the probability that a share of difficulty d is a block (for luck)."""
    return float(min(Fraction(difficulty) * network_target / DIFF1_TARGET, Fraction(1)))


def payable_sat(units: int) -> int:
    """Whole satoshis in ``units`` (the rest stays on the balance)."""
    return units // UNITS_PER_SAT


def sat_to_units(sat: int) -> int:
    return sat * UNITS_PER_SAT


def format_btc(units: int) -> str:
    """Units as a BTC decimal string with all 14 places (exact, for APIs and logs)."""
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), 100_000_000 * UNITS_PER_SAT)
    return f"{sign}{whole}.{frac:014d}"
