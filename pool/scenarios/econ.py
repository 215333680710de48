"""The economics section of a scenario report. PURE (``pool.economics`` does the maths).

The simulated difficulties are mapped to mainnet-equivalent figures (the start reads as
``chain.mainnet_difficulty``), and the scenario's economic inputs (price, subsidy, fees, machine
classes and power prices) turn the difficulty before and after the key change into hashprice
and per-machine revenue, power cost and profit. The scenario's own miners are grouped by the
machine class they stand for, with the PPS credit they earned on the regtest chain.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from pool import economics as econ
from pool.scenarios.spec import EconomicsSpec


def _report(spec: EconomicsSpec, difficulty: float) -> econ.EconomicsReport:
    classes = [c for c in econ.BUILTIN_CLASSES if c.name in spec.machine_classes]
    return econ.compute(
        difficulty=Fraction(difficulty),
        price_usd=spec.price_usd,
        fees_btc_per_block=spec.fees_btc_per_block,
        subsidy_btc=spec.subsidy_btc,
        power_prices_usd_per_kwh=list(spec.power_prices_usd_per_kwh),
        machine_classes=classes,
    )


def _side(report: econ.EconomicsReport) -> dict[str, Any]:
    data = report.to_dict()
    return {
        "difficulty": data["inputs"]["difficulty"],
        "network_hashrate_eh_s": data["network_hashrate_eh_s"],
        "hashprice_usd_per_ph_day": data["hashprice_usd_per_ph_day"],
        "hashprice_usd_per_th_day": data["hashprice_usd_per_th_day"],
        "machines": data["machines"],
        "pps_value_sat_per_share": data["share_value"]["pps_value_sat"],
    }


def economics_section(
    spec: EconomicsSpec,
    *,
    before_difficulty: float,
    after_difficulty: float,
    miners: Sequence[tuple[str, str, float, float]],
) -> dict[str, Any]:
    """``miners``: (name, machine class or "", set hashrate H/s, PPS credit in satoshis)."""
    before = _report(spec, before_difficulty)
    after = _report(spec, after_difficulty)
    section: dict[str, Any] = {
        "inputs": {
            "price_usd_per_btc": float(spec.price_usd),
            "subsidy_btc_per_block": float(spec.subsidy_btc),
            "fees_btc_per_block": float(spec.fees_btc_per_block),
            "machine_classes": list(spec.machine_classes),
            "power_prices_usd_per_kwh": [float(p) for p in spec.power_prices_usd_per_kwh],
        },
        "before": _side(before),
        "after": _side(after),
        "difficulty_change": after_difficulty / before_difficulty - 1.0,
        "hashprice_change": float(
            after.hashprice_usd_per_ph_day / before.hashprice_usd_per_ph_day - 1
        ),
    }
    if spec.reference_difficulty_after is not None:
        reference = econ.compute(
            difficulty=spec.reference_difficulty_after,
            price_usd=spec.price_usd,
            fees_btc_per_block=spec.fees_btc_per_block,
            subsidy_btc=spec.subsidy_btc,
            machine_classes=[c for c in econ.BUILTIN_CLASSES if c.name in spec.machine_classes],
            power_prices_usd_per_kwh=list(spec.power_prices_usd_per_kwh),
        )
        section["reference_after"] = _side(reference)
        section["reference_change"] = float(
            spec.reference_difficulty_after / Fraction(before_difficulty) - 1
        )
    total_credit = sum(credit for *_, credit in miners) or 0.0
    total_rate = sum(rate for _, _, rate, _ in miners) or 0.0
    classes = []
    pairs = zip(before.machines, after.machines, strict=True)
    for b, a in pairs:
        own = [(n, r, c) for n, cls, r, c in miners if cls == b.name]
        credit = sum(c for *_, c in own)
        classes.append(
            {
                "name": b.name,
                "efficiency_j_per_th": float(b.j_per_th),
                "hashrate_th_s_per_machine": float(b.th_per_machine),
                "power_price_usd_per_kwh": float(b.power_price_usd_per_kwh),
                "revenue_usd_per_machine_day_before": float(b.revenue_usd_per_machine_day),
                "revenue_usd_per_machine_day_after": float(a.revenue_usd_per_machine_day),
                "power_cost_usd_per_machine_day": float(b.power_cost_usd_per_machine_day),
                "profit_usd_per_machine_day_before": float(b.profit_usd_per_machine_day),
                "profit_usd_per_machine_day_after": float(a.profit_usd_per_machine_day),
                "break_even_usd_per_kwh_before": float(b.break_even_power_price_usd_per_kwh),
                "break_even_usd_per_kwh_after": float(a.break_even_power_price_usd_per_kwh),
                "verdict_before": b.verdict,
                "verdict_after": a.verdict,
                "miners": [n for n, _, _ in own],
                "set_hashrate_hs": sum(r for _, r, _ in own),
                "hashrate_share": sum(r for _, r, _ in own) / total_rate if total_rate else 0.0,
                "credited_sat": credit,
                "credit_share": credit / total_credit if total_credit else 0.0,
            }
        )
    section["classes"] = classes
    section["unclassified_miners"] = [n for n, cls, _, _ in miners if not cls]
    return section
