"""The "schemes" section of a scenario report: PPS, FPPS, PPLNS and SOLO on the same run.
PURE (the run's shares and blocks in, JSON-ready data out); ``pool.scenarios.schemes_compare``
computes the earnings, ``pool.scenarios.schemes_mc`` the spread and the probability of ruin,
``pool.scenarios.schemes_html`` renders the section.

Money: every ``*_units`` field is an exact integer in the ledger's units (10^-6 sat);
``*_btc`` fields are the same figures as floats for reading.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from pool.ledger.pps import UNITS_PER_SAT
from pool.scenarios import schemes_mc as mc
from pool.scenarios.schemes_compare import (
    DEFAULT_PPLNS_WINDOW_BLOCKS,
    SCHEMES,
    Comparison,
    PplnsLog,
    RunBlock,
    RunShare,
    compare,
    pps_pool_path,
    units_to_btc,
)

SECTION_VERSION = 1
LABELS = {"pps": "PPS", "fpps": "FPPS", "pplns": "PPLNS", "solo": "SOLO"}
MAX_RESERVES = 50
HORIZON_LABELS = {144.0: "144 blocks (a day of mainnet)", 1008.0: "1008 blocks (a week of mainnet)"}

DEFINITIONS = {
    "pps": "each share credited d / D x subsidy x (1 - fee) (the ledger's pps.share_value)",
    "fpps": "each share credited d / D x (subsidy + the template's fees) x (1 - fee)",
    "pplns": "each earned block's reward x (1 - fee) split over the last N difficulty-units "
    "of shares ending at its share, N = pplns_window_blocks x the block's network difficulty "
    "(pool.ledger.pplns)",
    "solo": "each earned block's reward x (1 - fee) to its finder; no block, no earnings",
    "earned_blocks": "pending or confirmed (as the PPS reserve counts them); orphaned and "
    "rejected blocks pay nobody",
    "pool_result": "earned rewards the pool owns minus what it credits (the fee included)",
    "spread": "standard deviation of the earnings over resampled runs: the same shares, each "
    "a block with probability d / D (seeded); PPS/FPPS are 0 by construction",
    "ruin": "P(the PPS reserve x + rewards - credits goes below 0 by the horizon): blocks as "
    "a Poisson process at the run's rate, credits paid at the run's expected rate, the "
    "reward the run's mean; seeded",
}


@dataclass(frozen=True)
class CompareSettings:
    seed: int = mc.DEFAULT_SEED
    paths: int = mc.DEFAULT_PATHS
    resamples: int = mc.DEFAULT_RESAMPLES
    pplns_window_blocks: Fraction = Fraction(DEFAULT_PPLNS_WINDOW_BLOCKS)
    reserves: tuple[float, ...] = mc.DEFAULT_RESERVES
    horizons: tuple[float, ...] = mc.DEFAULT_HORIZONS

    def check(self) -> None:
        if not 1 <= self.paths <= mc.MAX_PATHS:
            raise ValueError(f"paths must be 1..{mc.MAX_PATHS}, got {self.paths}")
        if not 1 <= self.resamples <= mc.MAX_RESAMPLES:
            raise ValueError(f"resamples must be 1..{mc.MAX_RESAMPLES}, got {self.resamples}")
        if self.pplns_window_blocks <= 0:
            raise ValueError("the PPLNS window must be positive")
        if not 1 <= len(self.reserves) <= MAX_RESERVES:
            raise ValueError(f"1..{MAX_RESERVES} starting reserves, got {len(self.reserves)}")


def _money(units: int | float) -> dict[str, Any]:
    return {"units": units, "btc": units_to_btc(units)}


def _r(x: float, digits: int = 9) -> float:
    return float(f"{x:.{digits}g}")


def _miners(
    comparison: Comparison, spread: mc.Spread, names: Mapping[str, str]
) -> list[dict[str, Any]]:
    total_work = sum(comparison.work.values()) or 1.0
    rows = []
    for address in comparison.addresses:
        row: dict[str, Any] = {
            "miner": names.get(address, address),
            "address": address,
            "work_share": comparison.work.get(address, 0.0) / total_work,
            "expected_blocks": comparison.expected_blocks.get(address, 0.0),
            "blocks_found": comparison.blocks_found.get(address, 0),
        }
        for scheme in SCHEMES:
            units = comparison.results[scheme].earnings.get(address, 0)
            stats = spread.miners[scheme].get(address, mc.Stats(0.0, 0.0))
            row[scheme] = {
                **_money(units),
                "spread_btc": units_to_btc(stats.std),
                "resampled_mean_btc": units_to_btc(stats.mean),
                "cv": stats.cv,
            }
        rows.append(row)
    return rows


def _pool(comparison: Comparison, spread: mc.Spread) -> dict[str, Any]:
    out = {}
    for scheme in SCHEMES:
        side = comparison.results[scheme].pool
        out[scheme] = {
            "rewards_units": side.rewards,
            "credits_units": side.credits,
            "fees_units": side.fees,
            "result": _money(side.result),
            "spread_btc": units_to_btc(spread.pool[scheme].std),
            "resampled_mean_btc": units_to_btc(spread.pool[scheme].mean),
        }
    return out


def _paths(
    comparison: Comparison,
    shares: Sequence[RunShare],
    blocks: Sequence[RunBlock],
    fee_bps: int,
    origin: float,
    end: float,
) -> tuple[dict[str, list[list[float]]], int]:
    """The pool's result over time per scheme ([t, BTC]), and the PPS path's low point."""
    out: dict[str, list[list[float]]] = {}
    low = 0
    for scheme, full in (("pps", False), ("fpps", True)):
        path = pps_pool_path(shares, blocks, fee_bps, full=full)
        if scheme == "pps":
            low = min([v for _, v in path], default=0)
        out[scheme] = [[_r(t - origin), units_to_btc(v)] for t, v in path]
    for scheme in ("pplns", "solo"):
        total = 0
        points = [[0.0, 0.0]]
        for t, kept in sorted(comparison.results[scheme].kept):
            points.append([_r(t - origin), units_to_btc(total)])
            total += kept
            points.append([_r(t - origin), units_to_btc(total)])
        points.append([_r(end - origin), units_to_btc(total)])
        out[scheme] = points
    return out, low


def _ruin(
    shares: Sequence[RunShare], pps_credits: int, settings: CompareSettings, duration: float
) -> dict[str, Any] | None:
    expected = math.fsum(s.expected_blocks for s in shares)
    value = math.fsum(s.expected_blocks * s.coinbase_value_sat * UNITS_PER_SAT for s in shares)
    if expected <= 0 or value <= 0:
        return None
    mean_reward = value / expected  # units per block
    q = pps_credits / value
    horizons = sorted({_r(expected, 6), *settings.horizons})
    result = mc.ruin(
        payout_ratio=q,
        horizons=horizons,
        reserves=settings.reserves,
        paths=settings.paths,
        seed=settings.seed,
    )
    rate = duration / expected if duration > 0 else None
    return {
        "paths": result.paths,
        "seed": result.seed,
        "payout_ratio": q,
        "mean_block_reward": _money(_r(mean_reward, 15)),
        "expected_blocks_of_the_run": expected,
        "seconds_per_expected_block": rate,
        "horizons": [
            {
                "expected_blocks": h,
                "label": (
                    f"this run ({h:.4g} expected blocks)"
                    if h == _r(expected, 6)
                    else HORIZON_LABELS.get(h, f"{h:g} blocks")
                ),
                "run_seconds": h * rate if rate else None,
            }
            for h in result.horizons
        ],
        "reserves": [{"blocks": x, "btc": units_to_btc(x * mean_reward)} for x in result.reserves],
        "probability": result.probability,
        "standard_error": [[result.standard_error(p) for p in row] for row in result.probability],
    }


def schemes_section(
    shares: Sequence[RunShare],
    blocks: Sequence[RunBlock],
    *,
    fee_bps: int,
    names: Mapping[str, str],
    origin: float,
    settings: CompareSettings,
    fees_unknown_shares: int = 0,
    ledger_balances: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The section (see the module docstring). ``names``: address -> miner name; ``origin``:
    the Unix time of the report's t = 0; ``ledger_balances``: the store's credited units per
    address, to state whether PPS matches the ledger."""
    settings.check()
    log = PplnsLog(shares)
    comparison = compare(
        shares,
        blocks,
        fee_bps,
        pplns_window_blocks=settings.pplns_window_blocks,
        fees_unknown_shares=fees_unknown_shares,
        log=log,
    )
    per_share = {s: comparison.results[s].earnings for s in ("pps", "fpps")}
    spread = mc.resample_spread(
        shares,
        per_share,
        fee_bps,
        settings.pplns_window_blocks,
        resamples=settings.resamples,
        seed=settings.seed,
        log=log,
    )
    start = min([s.time for s in shares], default=origin)
    end = max([s.time for s in shares], default=origin)
    paths, low = _paths(comparison, shares, blocks, fee_bps, origin, end)
    statuses = [b.status for b in blocks]
    pps = comparison.results["pps"]
    expected = math.fsum(comparison.expected_blocks.values())
    earned = sum(comparison.blocks_found.values())
    section: dict[str, Any] = {
        "version": SECTION_VERSION,
        "definitions": DEFINITIONS,
        "settings": {
            "fee_bps": fee_bps,
            "pplns_window_blocks": float(settings.pplns_window_blocks),
            "seed": settings.seed,
            "resamples": settings.resamples,
            "paths": settings.paths,
        },
        "totals": {
            "shares": len(shares),
            "blocks_submitted": len(blocks),
            "blocks_earned": earned,
            "blocks_by_status": {s: statuses.count(s) for s in dict.fromkeys(statuses)},
            "expected_blocks": expected,
            "luck": expected / earned if earned else None,
            "seconds": end - start,
            "resampled_blocks_mean": spread.blocks.mean,
            "resampled_blocks_spread": spread.blocks.std,
            "pplns_blocks_without_share": comparison.pplns_blocks_without_share,
            "fees_unknown_shares": comparison.fees_unknown_shares,
        },
        "miners": _miners(comparison, spread, names),
        "pool": _pool(comparison, spread),
        "pool_path_btc": paths,
        "pps_reserve": {
            "result": _money(pps.pool.result),
            "ledger_reserve": _money(pps.pool.result - pps.pool.fees),
            "low": _money(low),
            "needed": _money(-low),
        },
        "ruin": _ruin(shares, pps.pool.credits, settings, end - start),
    }
    if ledger_balances is not None:
        section["pps_matches_ledger"] = all(
            ledger_balances.get(a, 0) == pps.earnings.get(a, 0)
            for a in {*ledger_balances, *pps.earnings}
        )
    return section


def summary_lines(section: Mapping[str, Any] | None) -> list[str]:
    """What the CLI prints about the section at the end of a run."""
    if not section:
        return []
    if "error" in section:
        return [f"schemes NOT compared: {section['error']}"]
    names = ", ".join(LABELS[s] for s in SCHEMES)
    lines = [f'schemes compared ({names}): report.json "schemes", report.html (its section)']
    reserve = section["pps_reserve"]
    ruin = section.get("ruin")
    text = f"PPS: this run needed a reserve of {reserve['needed']['btc']:.4f} BTC"
    if ruin:
        text += (
            f"; P(ruin) for {len(ruin['reserves'])} starting reserves x "
            f"{len(ruin['horizons'])} horizons, {ruin['paths']} paths, seed {ruin['seed']}"
        )
    lines.append(text)
    return lines


def _int_in(low: int, high: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low}..{high}, got {value}")
        return value

    return parse


def _window(text: str) -> Fraction:
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 1000:
        raise argparse.ArgumentTypeError(f"must be > 0 and <= 1000 blocks, got {text}")
    return value


def _reserves(text: str) -> tuple[float, ...]:
    values: list[float] = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {part.strip()!r}") from None
        if not (math.isfinite(value) and 0 <= value <= 1e6):
            raise argparse.ArgumentTypeError(f"must be 0..1000000 blocks, got {part.strip()}")
        values.append(value)
    if len(values) > MAX_RESERVES:
        raise argparse.ArgumentTypeError(f"at most {MAX_RESERVES} starting reserves")
    return tuple(sorted(set(values)))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The scheme comparison's options of ``stratum-pool scenario``."""
    group = parser.add_argument_group("scheme comparison (PPS, FPPS, PPLNS, SOLO)")
    group.add_argument(
        "--paths",
        type=_int_in(1, mc.MAX_PATHS),
        default=mc.DEFAULT_PATHS,
        help="Monte Carlo paths of the PPS probability of ruin (default: %(default)s)",
    )
    group.add_argument(
        "--resamples",
        type=_int_in(1, mc.MAX_RESAMPLES),
        default=mc.DEFAULT_RESAMPLES,
        help="resampled block sequences for each miner's spread (default: %(default)s)",
    )
    group.add_argument(
        "--seed",
        type=_int_in(0, 2**63 - 1),
        default=mc.DEFAULT_SEED,
        help="seed of both Monte Carlo parts (default: %(default)s)",
    )
    group.add_argument(
        "--pplns-window",
        type=_window,
        default=Fraction(DEFAULT_PPLNS_WINDOW_BLOCKS),
        metavar="BLOCKS",
        help="PPLNS window N in network difficulties (expected blocks) (default: 2)",
    )
    group.add_argument(
        "--reserves",
        type=_reserves,
        default=mc.DEFAULT_RESERVES,
        metavar="BLOCKS,...",
        help="starting PPS reserves to examine, in mean block rewards (default: "
        + ",".join(f"{x:g}" for x in mc.DEFAULT_RESERVES)
        + ")",
    )


def settings_from_args(args: argparse.Namespace) -> CompareSettings:
    return CompareSettings(
        seed=args.seed,
        paths=args.paths,
        resamples=args.resamples,
        pplns_window_blocks=args.pplns_window,
        reserves=args.reserves,
    )
