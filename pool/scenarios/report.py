"""The scenario report builder. PURE: a ``Recording`` (what the runner saw) -> the report as
plain JSON-ready data; ``pool.scenarios.html`` renders that data as a page.

What the runner records: every block the pool found (in the order the simulated chain counted
them, with the time the chain used), every change of the simulated difficulty, every timeline
action, and a sample every ``run.sample_seconds``: cumulative accepted work and PPS credit per
miner and the pool's PPS reserve. From these the builder derives:

- hashrate series: accepted work over a sliding window (``run.hashrate_window_seconds``) times
  2**32 per second, for the pool and each miner, next to the hashrate the miners were set to;
- the difficulty steps and the blocks (cumulative) over time;
- the PPS value of a difficulty-1 share: ``target * B / DIFF1`` (``pool.ledger.pps``), exact,
  with ``B`` the block subsidy at that height (regtest halves it every 150 blocks). At every
  change of the difficulty both values are taken at the same subsidy, so their ratio is exactly
  ``new_target / old_target``: the share's value rises by ``old / new`` difficulty. The plotted
  index is that value at a fixed block reward, relative to the start (``target / start
  target``), so regtest's halvings do not hide the changes;
- the PPS reserve and each miner's credited earnings over time;
- the key change (the first retarget after the first miner left; else the first scripted event;
  else the first retarget) with the change expected from the miners' set hashrates: each gap
  of its period is expected to take ``difficulty * 2**32 / hashrate running`` seconds plus the
  scenario's ``chain.dead_time_seconds``;
- the economics section (``pool.scenarios.econ``) when the scenario has one.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

from pool.bitcoin import DIFF1_TARGET, target_to_difficulty
from pool.ledger.pps import FEE_DENOMINATOR, UNITS_PER_SAT
from pool.scenarios.econ import economics_section
from pool.scenarios.spec import ScenarioSpec

REPORT_VERSION = 1
HASHES_PER_DIFF1 = 2**32
KIND_RETARGET = "retarget"
KIND_EVENT = "event"


@dataclass
class MinerRecord:
    name: str
    group: str
    worker: str  # ADDRESS.name, as the pool knows it
    address: str
    hashrate: float  # set (bundled miner's throttle) or declared (external miner)
    share_difficulty: float
    machine_class: str = ""
    command: str = ""  # the external miner command ("" = bundled)
    spans: list[list[float | None]] = field(default_factory=list)  # [joined t, left t or None]
    exits: list[dict[str, Any]] = field(default_factory=list)  # exit code + miner's summary


@dataclass
class ActionRecord:
    t: float
    action: str  # "join" | "leave"
    miners: list[str]
    trigger: str
    blocks: int
    retargets: int


@dataclass
class Sample:
    t: float
    blocks: int
    retargets: int
    target: int
    subsidy_sat: int
    running: list[str]
    work: dict[str, float]  # cumulative accepted difficulty per miner
    credited_units: dict[str, int]  # cumulative PPS credit per miner
    reserve_units: int
    rewards_units: int
    credits_units: int
    fees_units: int


@dataclass
class BlockRecord:
    ordinal: int  # 1-based count of the blocks the simulated chain saw
    height: int
    hash: str
    miner: str
    t: float  # seconds since the start (the time the simulated chain used)
    time: float  # the same as a Unix time
    target: int  # the simulated target the block met


@dataclass
class ChangeRecord:
    kind: str  # "retarget" | "event"
    height: int
    ordinal: int  # blocks seen when it happened (a retarget: its period's last block)
    t: float
    time: float
    old_target: int
    new_target: int
    subsidy_sat: int  # subsidy of the next block (the one the new target applies to)
    actual_timespan: float | None = None
    expected_timespan: float | None = None


@dataclass
class Recording:
    scenario: ScenarioSpec
    started_at: float  # Unix time of t = 0 (the simulated chain's start)
    start_height: int  # chain height before the pool's first block
    initial_target: int
    fee_bps: int
    miners: list[MinerRecord]
    actions: list[ActionRecord] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    blocks: list[BlockRecord] = field(default_factory=list)
    changes: list[ChangeRecord] = field(default_factory=list)
    other_blocks: list[dict[str, Any]] = field(default_factory=list)  # not accepted (stale...)
    completed: bool = False
    end_reason: str = ""
    duration: float = 0.0
    out_dir: str = ""


# --- small helpers ---------------------------------------------------------------------------


def fraction_text(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def pps_value_units(target: int, subsidy_sat: int, fee_bps: int = 0) -> Fraction:
    """Exact PPS value of a difficulty-1 share in units (micro-satoshis), after ``fee_bps``."""
    gross = Fraction(target * subsidy_sat * UNITS_PER_SAT, DIFF1_TARGET)
    return gross * (FEE_DENOMINATOR - fee_bps) / FEE_DENOMINATOR


def _sat(units: Fraction | int) -> float:
    return float(Fraction(units) / UNITS_PER_SAT)


def _r(x: float, digits: int = 6) -> float:
    return float(f"{x:.{digits}g}")


def mainnet_factor(rec: Recording) -> float | None:
    """Multiply a simulated difficulty by this for the mainnet-equivalent figure."""
    if rec.scenario.chain.mainnet_difficulty <= 0:
        return None
    return rec.scenario.chain.mainnet_difficulty / target_to_difficulty(rec.initial_target)


def windowed_rates(
    times: Sequence[float], totals: Sequence[float], window: float
) -> list[list[float]]:
    """``[[t, rate]]``: the growth of ``totals`` over the last ``window`` seconds (or since the
    first sample, early on), per second, times 2**32 (work -> hashes)."""
    out: list[list[float]] = []
    j = 0
    for i, t in enumerate(times):
        while j < i and times[j + 1] <= t - window:
            j += 1
        span = t - times[j]
        if span <= 0:
            continue
        out.append([_r(t), _r((totals[i] - totals[j]) * HASHES_PER_DIFF1 / span)])
    return out


def declared_hashrate_at(rec: Recording, t: float) -> float:
    """The sum of the set hashrates of the miners running at ``t`` (a miner counts from the
    moment it joined to the moment it left)."""
    total = 0.0
    for m in rec.miners:
        for start, end in m.spans:
            assert start is not None
            if start <= t and (end is None or t < end):
                total += m.hashrate
                break
    return total


def _declared_series(rec: Recording) -> list[list[float]]:
    edges = sorted(
        {0.0, rec.duration}
        | {s for m in rec.miners for span in m.spans for s in span if s is not None}
    )
    points: list[list[float]] = []
    for t in edges:
        if t > rec.duration:
            continue
        value = declared_hashrate_at(rec, t)
        if points:
            points.append([_r(t), points[-1][1]])
        points.append([_r(t), value])
    return points


# --- the parts of the report -----------------------------------------------------------------


def _change_entry(rec: Recording, c: ChangeRecord, factor: float | None) -> dict[str, Any]:
    old_d = target_to_difficulty(c.old_target)
    new_d = target_to_difficulty(c.new_target)
    before = pps_value_units(c.old_target, c.subsidy_sat)
    after = pps_value_units(c.new_target, c.subsidy_sat)
    entry: dict[str, Any] = {
        "kind": c.kind,
        "height": c.height,
        "ordinal": c.ordinal,
        "t": _r(c.t, 9),
        "time": c.time,
        "old_difficulty": old_d,
        "new_difficulty": new_d,
        "change": new_d / old_d - 1.0,
        "old_target": f"{c.old_target:064x}",
        "new_target": f"{c.new_target:064x}",
        "actual_timespan": c.actual_timespan,
        "expected_timespan": c.expected_timespan,
        "subsidy_sat": c.subsidy_sat,
        "pps_value_before_units": fraction_text(before),
        "pps_value_after_units": fraction_text(after),
        "pps_value_before_sat": _sat(before),
        "pps_value_after_sat": _sat(after),
        "pps_value_ratio": float(after / before),
        "pps_credit_before_sat": _sat(before * (FEE_DENOMINATOR - rec.fee_bps) / FEE_DENOMINATOR),
        "pps_credit_after_sat": _sat(after * (FEE_DENOMINATOR - rec.fee_bps) / FEE_DENOMINATOR),
    }
    if factor is not None:
        entry["mainnet_old_difficulty"] = old_d * factor
        entry["mainnet_new_difficulty"] = new_d * factor
    return entry


def _series(rec: Recording, factor: float | None) -> dict[str, Any]:
    window = rec.scenario.run.hashrate_window_seconds
    times = [s.t for s in rec.samples]
    names = [m.name for m in rec.miners]
    pool_work = [sum(s.work.values()) for s in rec.samples]
    workers = {
        n: windowed_rates(times, [s.work.get(n, 0.0) for s in rec.samples], window) for n in names
    }
    # Difficulty steps: the initial target, then every change.
    steps: list[tuple[float, int]] = [(0.0, rec.initial_target)]
    steps += [(c.t, c.new_target) for c in rec.changes]
    difficulty: list[list[float]] = []
    for t, target in steps:
        d = target_to_difficulty(target)
        difficulty.append([_r(max(t, 0.0), 9), _r(d * factor if factor else d, 9)])
    end_t = max(rec.duration, steps[-1][0])
    difficulty.append([_r(end_t, 9), difficulty[-1][1]])
    # PPS value of a difficulty-1 share: at every sample and at every change.
    points: list[tuple[float, int, int]] = [(s.t, s.target, s.subsidy_sat) for s in rec.samples]
    points += [(c.t, c.new_target, c.subsidy_sat) for c in rec.changes]
    points.sort(key=lambda p: p[0])
    pps = [[_r(t, 9), _r(_sat(pps_value_units(tg, sub)), 9)] for t, tg, sub in points]
    index = [[_r(t, 9), _r(tg / rec.initial_target, 9)] for t, tg, _ in points]
    blocks = [[_r(b.t, 9), float(i + 1)] for i, b in enumerate(rec.blocks)]
    return {
        "hashrate_window_seconds": window,
        "pool_hashrate": windowed_rates(times, pool_work, window),
        "worker_hashrate": workers,
        "set_hashrate": _declared_series(rec),
        "difficulty": difficulty,
        "difficulty_is_mainnet_equivalent": factor is not None,
        "blocks": blocks,
        "pps_value_sat": pps,
        "pps_value_index": index,
        "reserve_sat": [[_r(s.t), _sat(s.reserve_units)] for s in rec.samples],
        "earnings_sat": {
            n: [[_r(s.t), _sat(s.credited_units.get(n, 0))] for s in rec.samples] for n in names
        },
    }


def _mean_hashrate(rec: Recording, t0: float, t1: float) -> float | None:
    """Pool hashrate from accepted work between the samples nearest to ``t0`` and ``t1``."""
    if len(rec.samples) < 2 or t1 <= t0:
        return None
    times = [s.t for s in rec.samples]
    i = min(bisect.bisect_left(times, t0), len(times) - 1)
    j = min(bisect.bisect_left(times, t1), len(times) - 1)
    if j <= i or times[j] <= times[i]:
        return None
    work = sum(rec.samples[j].work.values()) - sum(rec.samples[i].work.values())
    return work * HASHES_PER_DIFF1 / (times[j] - times[i])


def expected_change(rec: Recording, change: ChangeRecord) -> float | None:
    """The change Bitcoin's rule would make if every gap of the period took exactly its
    expected time, ``difficulty * 2**32 / hashrate running`` (the miners' set hashrates) plus
    the dead time after a block."""
    if change.kind != KIND_RETARGET or change.expected_timespan is None:
        return None
    n = rec.scenario.chain.retarget_interval
    dead = rec.scenario.chain.dead_time_seconds
    by_ordinal = {b.ordinal: b for b in rec.blocks}
    first = change.ordinal - n + 1
    total = 0.0
    for o in range(first, change.ordinal):
        start, nxt = by_ordinal.get(o), by_ordinal.get(o + 1)
        if start is None or nxt is None:
            return None
        running = declared_hashrate_at(rec, (start.t + nxt.t) / 2)  # who hashed this gap
        if running <= 0:
            return None
        total += target_to_difficulty(nxt.target) * HASHES_PER_DIFF1 / running + dead
    return change.expected_timespan / total - 1.0 if total > 0 else None


def _key_change(rec: Recording) -> tuple[int | None, str]:
    leaves = [a for a in rec.actions if a.action == "leave"]
    if leaves:
        blocks_then = leaves[0].blocks  # the retarget must measure a gap after the exit
        for i, c in enumerate(rec.changes):
            if c.kind == KIND_RETARGET and c.ordinal > blocks_then:
                return i, "the first retarget after the first miners left"
        return None, "no retarget after the first miners left"
    for i, c in enumerate(rec.changes):
        if c.kind == KIND_EVENT:
            return i, "the first scripted difficulty event"
    for i, c in enumerate(rec.changes):
        if c.kind == KIND_RETARGET:
            return i, "the first retarget"
    return None, "no change of the difficulty"


def _summary(rec: Recording, changes: list[dict[str, Any]], factor: float | None) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "completed": rec.completed,
        "end_reason": rec.end_reason,
        "duration_seconds": _r(rec.duration),
        "blocks": len(rec.blocks),
        "blocks_not_accepted": len(rec.other_blocks),
        "retargets": sum(c.kind == KIND_RETARGET for c in rec.changes),
        "events": sum(c.kind == KIND_EVENT for c in rec.changes),
        "start_difficulty": target_to_difficulty(rec.initial_target),
        "start_mainnet_difficulty": (
            target_to_difficulty(rec.initial_target) * factor if factor else None
        ),
    }
    if rec.samples:
        last = rec.samples[-1]
        summary["final_difficulty"] = target_to_difficulty(last.target)
        summary["reserve_sat"] = _sat(last.reserve_units)
        summary["credited_sat"] = _sat(last.credits_units)
        summary["rewards_sat"] = _sat(last.rewards_units)
    leaves = [a for a in rec.actions if a.action == "leave"]
    if leaves:
        exit_action = leaves[0]
        later = [a.t for a in rec.actions if a.t > exit_action.t]
        # From the first block on, every miner present at the start is hashing.
        earlier = [a.t for a in rec.actions if a.t < exit_action.t]
        earlier += [b.t for b in rec.blocks[:1] if b.t < exit_action.t]
        before_set = declared_hashrate_at(rec, exit_action.t - 1e-6)
        after_set = declared_hashrate_at(rec, exit_action.t + 1e-6)
        before = _mean_hashrate(rec, max(earlier, default=0.0), exit_action.t)
        after = _mean_hashrate(rec, exit_action.t, min(later, default=rec.duration))
        summary["exit"] = {
            "t": exit_action.t,
            "miners": exit_action.miners,
            "trigger": exit_action.trigger,
            "set_hashrate_before": before_set,
            "set_hashrate_after": after_set,
            "set_fraction_left": 1 - after_set / before_set if before_set else None,
            "measured_hashrate_before": before,
            "measured_hashrate_after": after,
            "measured_fraction_left": 1 - after / before if before and after else None,
        }
    index, reason = _key_change(rec)
    summary["key_change_reason"] = reason
    summary["key_change"] = None
    if index is not None:
        entry = dict(changes[index])
        entry["index"] = index
        entry["drop"] = -entry["change"]
        entry["expected_change_from_set_hashrates"] = expected_change(rec, rec.changes[index])
        summary["key_change"] = entry
    return summary


def _miners(rec: Recording) -> list[dict[str, Any]]:
    last = rec.samples[-1] if rec.samples else None
    out = []
    for m in rec.miners:
        entry = asdict(m)
        entry["accepted_work"] = last.work.get(m.name, 0.0) if last else 0.0
        entry["credited_sat"] = _sat(last.credited_units.get(m.name, 0)) if last else 0.0
        entry["blocks"] = sum(b.miner == m.name for b in rec.blocks)
        out.append(entry)
    return out


def build_report(rec: Recording) -> dict[str, Any]:
    """The whole report as JSON-ready data (``report.json``)."""
    factor = mainnet_factor(rec)
    spec = rec.scenario
    changes = [_change_entry(rec, c, factor) for c in rec.changes]
    summary = _summary(rec, changes, factor)
    report: dict[str, Any] = {
        "version": REPORT_VERSION,
        "scenario": spec.to_dict(),
        "started_at": rec.started_at,
        "out_dir": rec.out_dir,
        "chain": {
            "start_height": rec.start_height,
            "retarget_interval": spec.chain.retarget_interval,
            "target_spacing_seconds": spec.chain.target_spacing_seconds,
            "clamp_factor": spec.chain.clamp_factor,
            "initial_difficulty": target_to_difficulty(rec.initial_target),
            "initial_target": f"{rec.initial_target:064x}",
            "mainnet_difficulty": spec.chain.mainnet_difficulty or None,
            "mainnet_factor": factor,
        },
        "pool": {"scheme": "pps", "fee_bps": rec.fee_bps},
        "summary": summary,
        "miners": _miners(rec),
        "actions": [asdict(a) for a in rec.actions],
        "blocks": [
            {
                **asdict(b),
                "target": f"{b.target:064x}",
                "difficulty": target_to_difficulty(b.target),
            }
            for b in rec.blocks
        ],
        "blocks_not_accepted": rec.other_blocks,
        "retargets": changes,
        "series": _series(rec, factor),
        "samples": [{**asdict(s), "target": f"{s.target:064x}"} for s in rec.samples],
    }
    if spec.economics is not None and factor is not None:
        key = summary["key_change"]
        start = target_to_difficulty(rec.initial_target) * factor
        before = key["mainnet_old_difficulty"] if key else start
        final = summary.get("final_difficulty")
        after = key["mainnet_new_difficulty"] if key else (final * factor if final else start)
        report["economics"] = economics_section(
            spec.economics,
            before_difficulty=before,
            after_difficulty=after,
            miners=[
                (m["name"], m["machine_class"], m["hashrate"], m["credited_sat"])
                for m in report["miners"]
            ],
        )
    return report


def block_times_by_period(report: Mapping[str, Any]) -> dict[int, list[float]]:
    """Block times (Unix) grouped by retarget period (1-based), from a report's blocks."""
    n = int(report["chain"]["retarget_interval"])
    out: dict[int, list[float]] = {}
    for b in report["blocks"]:
        out.setdefault((int(b["ordinal"]) - 1) // n + 1, []).append(float(b["time"]))
    return out
