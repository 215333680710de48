"""Reading a finished run for the scheme comparison (I/O): the journal's share records and the
store's blocks (with their final status) and balances, turned into the pure inputs of
``pool.scenarios.schemes_compare``.

Every accepted share is in the journal with its difficulty, the job's network target, the
template's height and the value PPS credited it against (``block_value_sat``: the subsidy on a
PPS port, the coinbase value on an FPPS port). A PPS record does not carry its template's fees,
so for FPPS the coinbase value of a share's template is taken from the block found at the same
height when there is one (a regtest scenario has no transactions: every template's coinbase
value is its subsidy), else the subsidy; such shares are counted (``fees_unknown_shares``).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from pool.bitcoin import REGTEST, Network
from pool.ledger.journal_read import Damage, read_records
from pool.scenarios.schemes_compare import RunBlock, RunShare
from pool.scenarios.schemes_report import CompareSettings, schemes_section

log = structlog.get_logger("pool.scenarios")


@dataclass
class RunData:
    shares: list[RunShare]
    blocks: list[RunBlock]
    balances: dict[str, int]  # address -> credited units, as the store holds them
    journal_credits: dict[str, int]  # address -> the journal records' credits summed
    fee_bps: int | None  # the fee the records were credited with (None: no shares)
    fees_unknown_shares: int
    damaged_records: int


def read_blocks(store_path: Path) -> tuple[list[RunBlock], dict[str, int]]:
    """The store's blocks (any status) and balances."""
    db = sqlite3.connect(store_path)
    try:
        rows = db.execute(
            "SELECT hash, height, address, reward_sat, status, found_at FROM blocks "
            "ORDER BY found_at, hash"
        ).fetchall()
        balances = {
            str(a): int(u) for a, u in db.execute("SELECT address, credited_units FROM balances")
        }
    finally:
        db.close()
    blocks = [
        RunBlock(str(h), int(height), str(a), int(r), str(s), float(t))
        for h, height, a, r, s, t in rows
    ]
    return blocks, balances


def shares_from_records(
    records: list[dict[str, Any]], blocks: list[RunBlock], network: Network
) -> tuple[list[RunShare], int]:
    """(shares in journal order, how many had no known template fees)."""
    coinbase_at: dict[int, int] = {}
    for b in blocks:
        coinbase_at.setdefault(b.height, b.reward_sat)
    shares: list[RunShare] = []
    unknown = 0
    for r in records:
        height = int(r["height"])
        subsidy = network.block_subsidy(height)
        block = r.get("block")
        if r.get("scheme") == "fpps":
            coinbase = int(r["block_value_sat"])
        elif block is not None:
            coinbase = int(block["reward_sat"])
        elif height in coinbase_at:
            coinbase = coinbase_at[height]
        else:
            coinbase = subsidy
            unknown += 1
        shares.append(
            RunShare(
                time=float(r["time"]),
                address=str(r["address"]),
                difficulty=float(r["difficulty"]),
                target=int.from_bytes(r["target"], "big"),
                subsidy_sat=subsidy,
                coinbase_value_sat=coinbase,
                block_hash=str(block["hash"]) if block else None,
            )
        )
    return shares, unknown


def read_run(journal_dir: Path, store_path: Path, network: Network) -> RunData:
    damage = Damage()
    records = [r for _, r in read_records(journal_dir, damage=damage) if "difficulty" in r]
    blocks, balances = read_blocks(store_path)
    shares, unknown = shares_from_records(records, blocks, network)
    credits: dict[str, int] = {}
    for r in records:
        credits[str(r["address"])] = credits.get(str(r["address"]), 0) + int(r["credit"])
    fees = {int(r["fee_bps"]) for r in records}
    if len(fees) > 1:
        raise ValueError(f"the run's shares were credited with several fees: {sorted(fees)}")
    return RunData(
        shares=shares,
        blocks=blocks,
        balances=balances,
        journal_credits=credits,
        fee_bps=fees.pop() if fees else None,
        fees_unknown_shares=unknown,
        damaged_records=damage.corrupt,
    )


def compare_run(
    journal_dir: Path,
    store_path: Path,
    *,
    names: Mapping[str, str],
    origin: float,
    fee_bps: int,
    settings: CompareSettings,
    network: Network = REGTEST,
) -> dict[str, Any]:
    """The report's "schemes" section for a finished run (the pool stopped: its journal and
    store are complete); ``{"error": ...}`` when it cannot be computed (the rest of the report
    is still written). ``fee_bps``: the scenario's fee, used when the run has no shares."""
    started = time.monotonic()
    try:
        data = read_run(journal_dir, store_path, network)
        section = schemes_section(
            data.shares,
            data.blocks,
            fee_bps=fee_bps if data.fee_bps is None else data.fee_bps,
            names=names,
            origin=origin,
            settings=settings,
            fees_unknown_shares=data.fees_unknown_shares,
            ledger_balances=data.balances,
        )
    except Exception as exc:
        log.exception("scenario_schemes_failed", error=repr(exc))
        return {"error": repr(exc)}
    section["totals"]["damaged_journal_records"] = data.damaged_records
    section["seconds_to_compute"] = round(time.monotonic() - started, 3)
    log.info(
        "scenario_schemes_compared",
        shares=len(data.shares),
        blocks=len(data.blocks),
        seconds=section["seconds_to_compute"],
    )
    return section
