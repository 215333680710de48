"""Simulated network difficulty for a regtest chain. Pure: no I/O, no asyncio, no clock.

Regtest never retargets and its target (bits ``207fffff``) lets half of all hashes through.
To rehearse difficulty drops and hashrate exits, the pool turns only shares meeting the
*simulated* target into blocks (such a block is also valid on regtest, because the simulated
target is never above regtest's). This module decides that target: it retargets with Bitcoin's
rule over a short period, and applies scripted events (``SimEvent``).

The retarget rule (mirrors Bitcoin Core's ``GetNextWorkRequired`` / ``CalculateNextWorkRequired``)
------------------------------------------------------------------------------------------------
* Periods are counted in blocks the pool found on this chain since the simulation started
  (the heights given to ``on_block`` only order the blocks and trigger height events): the
  period closes with the ``retarget_interval``-th block. Why not ``height % interval``: the
  pool's chain does not start at height 0 (a managed node mines 101 blocks first), other
  blocks may appear on a regtest chain (``generatetoaddress``) and are never fed here, and a
  restart resumes from ``to_state``; counting blocks seen makes every period a full one in all
  these cases, where height boundaries would leave a first partial period without the time of
  its first block.
* ``actual = time(last block of the period) - time(first block of the period)``. Core takes
  ``nFirstBlockTime`` from the block at height ``pindexLast->nHeight - (interval - 1)``, i.e.
  the period's own first block, so only ``interval - 1`` gaps are measured, while the expected
  timespan is ``interval * spacing`` (mainnet: 2015 gaps against ``nPowTargetTimespan`` = 14
  days = 2016 * 600 s). This off-by-one is kept on purpose: blocks exactly ``spacing`` apart
  raise the difficulty by ``interval / (interval - 1)`` (2016/2015 on mainnet, 10/9 for a
  10-block period), and the gap between two periods is never measured. With
  ``retarget_interval = 1`` no gap is measured at all: every block clamps to the fastest case.
* ``actual`` is clamped to ``[expected / clamp, expected * clamp]``; times are taken in integer
  milliseconds (``round(seconds * 1000)``) and the bounds are floored like Core's
  ``nPowTargetTimespan / 4``. For whole-second times and spacing this is exactly Core's
  arithmetic (``old * (a * 1000) // (e * 1000) == old * a // e``).
* ``new = old * actual_ms // expected_ms`` in Python integers (no 256-bit overflow, which Core
  would hit with regtest's limit; its regtest never retargets), capped at the pow limit, then
  rounded down to what compact ``bits`` can carry (Core's ``GetCompact``). Every simulated
  target is therefore a target a real header could carry, and the module reproduces real
  mainnet retargets bit for bit (see the tests: block 32256, ``1d00ffff -> 1d00d86a``).
* The pow limit is ``SIM_POW_LIMIT = 0x7fffff << 232`` (bits ``207fffff``, regtest's genesis
  target; Core's regtest ``powLimit`` is ``7fff...ff``, whose compact form is the same
  ``207fffff``), so the simulated difficulty can go below 1 but never below regtest's own
  (~4.66e-10).

Events
------
``SimEvent`` changes the difficulty once, at a height or after some seconds: ``set_difficulty``
sets the target to ``difficulty_to_target(x)``; ``scale = s`` multiplies the difficulty by
``s``: ``new_target = floor(old_target / s)`` with ``s`` taken at its exact binary value
(``old * den // num`` of ``Fraction(s)``). Both are then capped at the pow limit (at least 1)
and rounded down to compact form, like retargets. A height event fires at the first
``on_block`` whose height is ``>= at_height`` (so a skipped height or a chain already past it
still fires it, once); a time event fires at the first ``on_time`` / ``on_block`` whose time is
``>= start_time + at_seconds``. In ``on_block`` the order is: due time events (they came first
in time), then the block and its retarget if it closes a period, then height events (a scripted
``set_difficulty`` at a period's last block overrides that retarget). Each change is recorded
as a ``Retarget`` in ``history``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

from pool.bitcoin import (
    DIFF1_TARGET,
    REGTEST,
    bits_to_target,
    difficulty_to_target,
    target_to_bits,
    target_to_difficulty,
)

__all__ = [
    "MIN_DIFFICULTY",
    "SIM_POW_LIMIT",
    "ChainSim",
    "Retarget",
    "SimEvent",
    "bitcoin_retarget",
    "compact_target",
]

STATE_VERSION = 1

SIM_POW_LIMIT = bits_to_target(REGTEST.pow_limit_bits)  # 0x7fffff << 232
MIN_DIFFICULTY = DIFF1_TARGET / SIM_POW_LIMIT  # ~4.66e-10, regtest's own difficulty

KIND_RETARGET = "retarget"
KIND_EVENT = "event"


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_params(
    *, retarget_interval: int, target_spacing: float, clamp_factor: float
) -> tuple[int, Fraction]:
    """Validate the retarget parameters; returns (expected_ms, Fraction(clamp_factor))."""
    if not _is_int(retarget_interval) or retarget_interval < 1:
        raise ValueError(f"retarget_interval must be an integer >= 1, got {retarget_interval!r}")
    if not _is_number(target_spacing) or not math.isfinite(target_spacing) or target_spacing <= 0:
        raise ValueError(f"target_spacing must be a positive finite number, got {target_spacing!r}")
    if not _is_number(clamp_factor) or not math.isfinite(clamp_factor) or clamp_factor < 1:
        raise ValueError(f"clamp_factor must be a finite number >= 1, got {clamp_factor!r}")
    expected_ms = round(retarget_interval * target_spacing * 1000)
    if expected_ms < 1:
        raise ValueError(
            f"target_spacing too small: retarget_interval * target_spacing = "
            f"{retarget_interval * target_spacing!r} s is under 1 ms"
        )
    return expected_ms, Fraction(clamp_factor)


def _ms(seconds: float) -> int:
    if not _is_number(seconds) or not math.isfinite(seconds):
        raise ValueError(f"a time must be a finite number of seconds, got {seconds!r}")
    return round(seconds * 1000)


def compact_target(target: int, pow_limit: int = SIM_POW_LIMIT) -> int:
    """``target`` capped to ``[1, pow_limit]`` and rounded down to compact form (GetCompact)."""
    return bits_to_target(target_to_bits(max(1, min(target, pow_limit))))


def _retarget_ms(
    old_target: int, actual_ms: int, expected_ms: int, clamp: Fraction, pow_limit: int
) -> int:
    lo = expected_ms * clamp.denominator // clamp.numerator
    hi = expected_ms * clamp.numerator // clamp.denominator
    clamped = min(max(actual_ms, lo), hi)
    return compact_target(old_target * clamped // expected_ms, pow_limit)


def bitcoin_retarget(
    old_target: int,
    first_time: float,
    last_time: float,
    interval: int,
    spacing: float,
    clamp: float = 4.0,
    *,
    pow_limit: int = SIM_POW_LIMIT,
) -> int:
    """Core's CalculateNextWorkRequired: the target after a period whose first block came at
    ``first_time`` and last block at ``last_time`` (seconds; ``interval - 1`` gaps measured
    against ``interval * spacing``), clamped by ``clamp``, capped at ``pow_limit`` and rounded
    down to compact form. Mainnet: ``interval=2016, spacing=600,
    pow_limit=(1 << 224) - 1``."""
    if not _is_int(old_target) or old_target < 1:
        raise ValueError(f"old_target must be a positive integer, got {old_target!r}")
    expected_ms, clamp_q = _check_params(
        retarget_interval=interval, target_spacing=spacing, clamp_factor=clamp
    )
    actual_ms = _ms(last_time) - _ms(first_time)
    return _retarget_ms(old_target, actual_ms, expected_ms, clamp_q, pow_limit)


@dataclass(frozen=True)
class SimEvent:
    """A scripted difficulty change, applied once.

    Exactly one trigger: ``at_height`` (when the pool finds the block at this height, or the
    first one above it; the change applies to the next block's target) or ``at_seconds``
    (this many seconds after the simulation's ``start_time``). Exactly one change:
    ``set_difficulty`` (the new simulated difficulty) or ``scale`` (multiply the current
    difficulty: 0.8888 is an 11.12 % drop).
    """

    at_height: int | None = None
    at_seconds: float | None = None
    set_difficulty: float | None = None
    scale: float | None = None

    def __post_init__(self) -> None:
        if (self.at_height is None) == (self.at_seconds is None):
            raise ValueError("SimEvent needs exactly one of at_height and at_seconds")
        if (self.set_difficulty is None) == (self.scale is None):
            raise ValueError("SimEvent needs exactly one of set_difficulty and scale")
        if self.at_height is not None and (not _is_int(self.at_height) or self.at_height < 0):
            raise ValueError(f"at_height must be an integer >= 0, got {self.at_height!r}")
        if self.at_seconds is not None and (
            not _is_number(self.at_seconds)
            or not math.isfinite(self.at_seconds)
            or self.at_seconds < 0
        ):
            raise ValueError(f"at_seconds must be a finite number >= 0, got {self.at_seconds!r}")
        for name, value in (("set_difficulty", self.set_difficulty), ("scale", self.scale)):
            if value is not None and (
                not _is_number(value) or not math.isfinite(value) or value <= 0
            ):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")

    def apply(self, target: int) -> int:
        """The target after this event, from the target in force."""
        if self.set_difficulty is not None:
            return compact_target(difficulty_to_target(self.set_difficulty))
        assert self.scale is not None
        q = Fraction(self.scale)
        return compact_target(target * q.denominator // q.numerator)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SimEvent:
        return cls(
            at_height=data.get("at_height"),
            at_seconds=data.get("at_seconds"),
            set_difficulty=data.get("set_difficulty"),
            scale=data.get("scale"),
        )


@dataclass(frozen=True)
class Retarget:
    """One change of the simulated difficulty, for reports.

    ``height``: the block whose finding caused it (retargets and height events) or the last
    block seen when a time event fired (-1 if none yet); the new target applies from
    ``height + 1``. ``kind``: ``"retarget"`` or ``"event"``. For retargets, ``actual_timespan``
    (last minus first block time of the period, before clamping) and ``expected_timespan``
    (``interval * spacing``), in seconds; None for events.
    """

    height: int
    time: float
    old_difficulty: float
    new_difficulty: float
    kind: str
    actual_timespan: float | None = None
    expected_timespan: float | None = None

    @property
    def change(self) -> float:
        """Relative change of the difficulty: -0.1116 for an 11.16 % drop."""
        return self.new_difficulty / self.old_difficulty - 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Retarget:
        return cls(
            height=int(data["height"]),
            time=float(data["time"]),
            old_difficulty=float(data["old_difficulty"]),
            new_difficulty=float(data["new_difficulty"]),
            kind=str(data["kind"]),
            actual_timespan=_opt_float(data.get("actual_timespan")),
            expected_timespan=_opt_float(data.get("expected_timespan")),
        )


def _opt_float(x: Any) -> float | None:
    return None if x is None else float(x)


class ChainSim:
    """The simulated network difficulty of a regtest chain (see the module docstring).

    ``on_block`` for every block the pool found (heights strictly increasing; a height not above
    the last one is ignored, e.g. a replay), ``on_time`` on a timer for time events; ``target``
    is what a share must meet to become a block.
    """

    def __init__(
        self,
        *,
        initial_difficulty: float,
        retarget_interval: int,
        target_spacing: float,
        clamp_factor: float = 4.0,
        events: Sequence[SimEvent] = (),
        start_time: float,
        mainnet_difficulty: float | None = None,
    ) -> None:
        self._expected_ms, self._clamp = _check_params(
            retarget_interval=retarget_interval,
            target_spacing=target_spacing,
            clamp_factor=clamp_factor,
        )
        if (
            not _is_number(initial_difficulty)
            or not math.isfinite(initial_difficulty)
            or initial_difficulty <= 0
        ):
            raise ValueError(
                f"initial_difficulty must be a positive finite number, got {initial_difficulty!r}"
            )
        if initial_difficulty < MIN_DIFFICULTY:
            raise ValueError(
                f"initial_difficulty must be at least regtest's own difficulty "
                f"{MIN_DIFFICULTY:.6g}, got {initial_difficulty!r}"
            )
        if mainnet_difficulty is not None and (
            not _is_number(mainnet_difficulty)
            or not math.isfinite(mainnet_difficulty)
            or mainnet_difficulty <= 0
        ):
            raise ValueError(
                f"mainnet_difficulty must be a positive finite number or None, "
                f"got {mainnet_difficulty!r}"
            )
        if not _is_number(start_time) or not math.isfinite(start_time):
            raise ValueError(f"start_time must be a finite number, got {start_time!r}")
        for i, event in enumerate(events):
            if not isinstance(event, SimEvent):
                raise ValueError(f"events[{i}] must be a SimEvent, got {event!r}")
        self._initial_difficulty = float(initial_difficulty)
        self._interval = retarget_interval
        self._spacing = float(target_spacing)
        self._clamp_factor = float(clamp_factor)
        self._start_time = float(start_time)
        self._mainnet_difficulty = None if mainnet_difficulty is None else float(mainnet_difficulty)
        self._events: tuple[SimEvent, ...] = tuple(events)
        self._applied = [False] * len(self._events)
        self._initial_target = compact_target(difficulty_to_target(initial_difficulty))
        self._target = self._initial_target
        self._blocks_seen = 0
        self._last_height: int | None = None
        self._period: list[tuple[int, float]] = []  # (height, time) of this period's blocks
        self._history: list[Retarget] = []

    # -- what the pool reads ----------------------------------------------------------------------
    @property
    def target(self) -> int:
        """The current simulated target: a block's hash must be <= this."""
        return self._target

    @property
    def bits(self) -> int:
        """The current target in compact form (exact: targets are always compact)."""
        return target_to_bits(self._target)

    @property
    def difficulty(self) -> float:
        return target_to_difficulty(self._target)

    @property
    def initial_target(self) -> int:
        """The start target: ``difficulty_to_target(initial_difficulty)`` in compact form."""
        return self._initial_target

    @property
    def history(self) -> tuple[Retarget, ...]:
        return tuple(self._history)

    @property
    def blocks_seen(self) -> int:
        """Blocks fed to ``on_block`` since the simulation started (across restarts)."""
        return self._blocks_seen

    @property
    def blocks_in_period(self) -> int:
        """Blocks of the current retarget period so far (0 .. retarget_interval - 1)."""
        return len(self._period)

    @property
    def last_height(self) -> int | None:
        return self._last_height

    @property
    def retarget_interval(self) -> int:
        return self._interval

    @property
    def target_spacing(self) -> float:
        return self._spacing

    @property
    def expected_timespan(self) -> float:
        """``retarget_interval * target_spacing`` in seconds (to the millisecond)."""
        return self._expected_ms / 1000

    @property
    def clamp_factor(self) -> float:
        return self._clamp_factor

    @property
    def start_time(self) -> float:
        return self._start_time

    @property
    def initial_difficulty(self) -> float:
        return self._initial_difficulty

    @property
    def mainnet_difficulty(self) -> float | None:
        return self._mainnet_difficulty

    @property
    def events(self) -> tuple[SimEvent, ...]:
        return self._events

    @property
    def pending_events(self) -> tuple[SimEvent, ...]:
        return tuple(e for e, done in zip(self._events, self._applied, strict=True) if not done)

    def mainnet_equivalent(self, difficulty: float | None = None) -> float:
        """``difficulty`` (default: the current one) scaled so that the simulated start
        difficulty maps to ``mainnet_difficulty``: ``d * mainnet_difficulty /
        initial_difficulty``; ``d`` itself when ``mainnet_difficulty`` is None. The divisor is
        the start target's exact difficulty (the compact form of ``initial_difficulty``, equal
        to it for 1.0), so the start maps exactly to ``mainnet_difficulty``."""
        d = self.difficulty if difficulty is None else difficulty
        if self._mainnet_difficulty is None:
            return d
        return d * (self._mainnet_difficulty / target_to_difficulty(self._initial_target))

    # -- what changes it -------------------------------------------------------------------------
    def on_block(self, height: int, found_at: float) -> list[Retarget]:
        """A block the pool found at ``height`` at time ``found_at``: the changes it caused.

        Time events due by ``found_at`` come first, then the retarget if this block closes a
        period, then height events with ``at_height <= height``. A height not above the last one
        seen is ignored (only due time events are applied).
        """
        if not _is_int(height) or height < 0:
            raise ValueError(f"height must be an integer >= 0, got {height!r}")
        found_ms = _ms(found_at)
        changes = self.on_time(found_at)
        if self._last_height is not None and height <= self._last_height:
            return changes
        self._last_height = height
        self._blocks_seen += 1
        self._period.append((height, float(found_at)))
        if len(self._period) >= self._interval:
            first_ms = _ms(self._period[0][1])
            actual_ms = found_ms - first_ms
            old = self._target
            self._target = _retarget_ms(
                old, actual_ms, self._expected_ms, self._clamp, SIM_POW_LIMIT
            )
            self._period.clear()
            changes.append(
                self._record(
                    height,
                    found_at,
                    old,
                    KIND_RETARGET,
                    actual_timespan=actual_ms / 1000,
                    expected_timespan=self._expected_ms / 1000,
                )
            )
        due = [
            i
            for i, e in enumerate(self._events)
            if not self._applied[i] and e.at_height is not None and e.at_height <= height
        ]
        due.sort(key=lambda i: (self._events[i].at_height, i))
        changes.extend(self._apply_event(i, height, found_at) for i in due)
        return changes

    def on_time(self, now: float) -> list[Retarget]:
        """Apply the time events due by ``now`` (in order of due time); the changes made."""
        now_ms = _ms(now)
        start_ms = _ms(self._start_time)
        due = []
        for i, e in enumerate(self._events):
            if self._applied[i] or e.at_seconds is None:
                continue
            if start_ms + _ms(e.at_seconds) <= now_ms:
                due.append(i)
        due.sort(key=lambda i: (self._events[i].at_seconds, i))
        height = -1 if self._last_height is None else self._last_height
        return [self._apply_event(i, height, now) for i in due]

    def _apply_event(self, index: int, height: int, when: float) -> Retarget:
        old = self._target
        self._target = self._events[index].apply(old)
        self._applied[index] = True
        return self._record(height, when, old, KIND_EVENT)

    def _record(
        self,
        height: int,
        when: float,
        old_target: int,
        kind: str,
        *,
        actual_timespan: float | None = None,
        expected_timespan: float | None = None,
    ) -> Retarget:
        change = Retarget(
            height=height,
            time=float(when),
            old_difficulty=target_to_difficulty(old_target),
            new_difficulty=target_to_difficulty(self._target),
            kind=kind,
            actual_timespan=actual_timespan,
            expected_timespan=expected_timespan,
        )
        self._history.append(change)
        return change

    # -- persistence -----------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """The full state as JSON-serialisable data (targets as hex strings)."""
        return {
            "version": STATE_VERSION,
            "initial_difficulty": self._initial_difficulty,
            "retarget_interval": self._interval,
            "target_spacing": self._spacing,
            "clamp_factor": self._clamp_factor,
            "start_time": self._start_time,
            "mainnet_difficulty": self._mainnet_difficulty,
            "initial_target": f"{self._initial_target:064x}",
            "target": f"{self._target:064x}",
            "blocks_seen": self._blocks_seen,
            "last_height": self._last_height,
            "period_blocks": [[h, t] for h, t in self._period],
            "applied_events": [
                e.to_dict() for e, done in zip(self._events, self._applied, strict=True) if done
            ],
            "history": [r.to_dict() for r in self._history],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], *, events: Sequence[SimEvent] = ()) -> ChainSim:
        """Restore a ``to_state`` snapshot; the simulation continues the same retarget period.

        ``events`` is the scripted list of this run (usually the same as before). An event equal
        to one recorded as applied (matched one for one, by value) stays applied; the others are
        pending. ValueError if the state is malformed.
        """
        try:
            if state["version"] != STATE_VERSION:
                raise ValueError(f"unsupported chain simulation state version {state['version']!r}")
            sim = cls(
                initial_difficulty=state["initial_difficulty"],
                retarget_interval=state["retarget_interval"],
                target_spacing=state["target_spacing"],
                clamp_factor=state["clamp_factor"],
                events=events,
                start_time=state["start_time"],
                mainnet_difficulty=state["mainnet_difficulty"],
            )
            initial_target = int(state["initial_target"], 16)
            target = int(state["target"], 16)
            blocks_seen = state["blocks_seen"]
            last_height = state["last_height"]
            period = [(int(h), float(t)) for h, t in state["period_blocks"]]
            applied = [SimEvent.from_dict(d) for d in state["applied_events"]]
            history = [Retarget.from_dict(d) for d in state["history"]]
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed chain simulation state: {exc!r}") from exc
        if not 1 <= target <= SIM_POW_LIMIT or compact_target(target) != target:
            raise ValueError(f"state target {state['target']!r} is not a valid simulated target")
        if initial_target != sim._initial_target:
            raise ValueError("state initial_target does not match its initial_difficulty")
        if not _is_int(blocks_seen) or blocks_seen < 0:
            raise ValueError(f"state blocks_seen must be an integer >= 0, got {blocks_seen!r}")
        if last_height is not None and (not _is_int(last_height) or last_height < 0):
            raise ValueError(f"state last_height must be None or >= 0, got {last_height!r}")
        if len(period) >= sim._interval or len(period) > blocks_seen:
            raise ValueError(f"state period_blocks has {len(period)} blocks, too many")
        sim._target = target
        sim._blocks_seen = blocks_seen
        sim._last_height = last_height
        sim._period = period
        sim._history = history
        for done in applied:
            for i, event in enumerate(sim._events):
                if not sim._applied[i] and event == done:
                    sim._applied[i] = True
                    break
        return sim
