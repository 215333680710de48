"""Amounts in API answers: exact integers with an exact BTC string beside them.

``<name>_units`` (micro-satoshis, the ledger's unit), ``<name>_sat`` (whole satoshis, rounded
towards zero) and ``<name>_btc`` (all 14 places of a micro-satoshi amount, 8 of a satoshi one).
"""

from __future__ import annotations

from typing import Any

from pool.ledger.pps import UNITS_PER_SAT, format_btc
from pool.ledger.store import Balance


def units_to_sat(units: int) -> int:
    """Whole satoshis, rounded towards zero (a negative reserve stays honest)."""
    return units // UNITS_PER_SAT if units >= 0 else -((-units) // UNITS_PER_SAT)


def sat_to_btc(sat: int) -> str:
    sign = "-" if sat < 0 else ""
    whole, frac = divmod(abs(sat), 100_000_000)
    return f"{sign}{whole}.{frac:08d}"


def money(name: str, units: int) -> dict[str, Any]:
    return {
        f"{name}_units": units,
        f"{name}_sat": units_to_sat(units),
        f"{name}_btc": format_btc(units),
    }


def sat_money(name: str, sat: int) -> dict[str, Any]:
    return {f"{name}_sat": sat, f"{name}_btc": sat_to_btc(sat)}


def balance_view(balance: Balance | None) -> dict[str, Any]:
    b = balance or Balance("", 0, 0, 0)
    return {
        **money("balance", b.balance_units),
        **money("credited", b.credited_units),
        **money("paid", b.paid_units),
        **money("pending", b.pending_units),
    }


def payout_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "status": row["status"],
        "txid": row["txid"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        **sat_money("total", row["total_sat"]),
        "error": row["error"],
        "items": [
            {"address": i["address"], **sat_money("amount", i["amount_sat"])} for i in row["items"]
        ],
    }
