"""Scenario files (TOML) -> a validated, frozen ``ScenarioSpec``. Pure apart from reading files.

A scenario names its miners, the simulated chain (blocks per retarget period, target spacing,
scripted difficulty events), a timeline (miners join or leave at a time, after N blocks or
after N retargets) and when it ends. ``[quick]`` holds overrides for ``--quick``: its tables
are merged key by key over the file's own; arrays (``miners``, ``timeline``, ``chain.events``)
are replaced whole. Unknown keys and wrong types are errors that name the key.

    [scenario]      name (default: the file name), description
    [chain]         retarget_interval, target_spacing_seconds, clamp_factor (4),
                    initial_difficulty (0: calibrated so that the miners present at the start
                    find a block every target_spacing_seconds:
                    hashrate * (spacing - dead_time_seconds) / 2**32),
                    dead_time_seconds (0.035: hashing lost per block, see below),
                    mainnet_difficulty (0: off; >0: the start is reported as this)
    [[chain.events]] at_block (the N-th block the pool finds) | at_seconds,
                    set_difficulty | scale
    [run]           share_interval_seconds (0.1), sample_seconds (1), progress_seconds (5),
                    hashrate_window_seconds (10), max_seconds (600), fee_bps (200),
                    miner_command ("": the bundled miner), fee_share (0: transaction fees
                    in each block as a share of its subsidy, 0..0.1, pool/scenarios/fees.py)
    [end]           at_seconds | after_blocks | after_retargets, tail_seconds (0)
    [[miners]]      name, hashrate (H/s), count (1: name; N: name-1 .. name-N), start (true),
                    machine_class, command (an external miner, e.g. cpuminer)
    [[timeline]]    at_seconds | after_blocks | after_retargets, join = [...], leave = [...]
    [economics]     price_usd, subsidy_btc, fees_btc_per_block, machine_classes,
                    power_prices_usd_per_kwh, reference_difficulty_after

Dead time: after every block the miners lose some hashing: the new job's round trip (the
block's submission, a new template, the notify; ~15 ms on the 2-core development machine), the
rest of the finder's batch (the bundled miner hashes in bursts of 0.1 s of its rate; half a
burst of the finder is lost on average), and stale blocks found in between. Measured there:
~35-45 ms per block at 5 blocks/s. Each gap is therefore ``hashing time + dead time``; the
calibration subtracts it from the spacing so the periods before any change are on schedule.

Times are seconds since the pool (and its simulated chain) started. A miner command is split
like a shell line; ``{url}``, ``{user}``, ``{password}``, ``{hashrate}`` and ``{name}`` are
filled in per miner.
"""

from __future__ import annotations

import re
import string
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Any

from pool.economics import BUILTIN_CLASSES
from pool.scenarios.fees import MAX_FEE_SHARE
from pool.scenarios.tomltable import ScenarioError, Table, merge

__all__ = [
    "ChainEventSpec",
    "ChainSpec",
    "EconomicsSpec",
    "EndSpec",
    "MinerSpec",
    "RunSpec",
    "ScenarioError",
    "ScenarioSpec",
    "TimelineEntry",
    "Trigger",
    "builtin_names",
    "load",
    "parse",
]

WORKER_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
PLACEHOLDERS = frozenset({"url", "user", "password", "hashrate", "name"})
CLASS_NAMES = tuple(c.name for c in BUILTIN_CLASSES)
BUILTIN_DIR = "builtin"


@dataclass(frozen=True)
class Trigger:
    """When something happens: exactly one of the three is set."""

    at_seconds: float | None = None
    after_blocks: int | None = None
    after_retargets: int | None = None

    def describe(self) -> str:
        if self.at_seconds is not None:
            return f"at {self.at_seconds:g} s"
        if self.after_blocks is not None:
            return f"after {self.after_blocks} blocks"
        return f"after {self.after_retargets} retargets"

    def due(self, elapsed: float, blocks: int, retargets: int) -> bool:
        if self.at_seconds is not None:
            return elapsed >= self.at_seconds
        if self.after_blocks is not None:
            return blocks >= self.after_blocks
        assert self.after_retargets is not None
        return retargets >= self.after_retargets

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass(frozen=True)
class MinerSpec:
    name: str
    hashrate: float  # H/s: the bundled miner's throttle; declared for an external one
    group: str  # the [[miners]] entry's name (equal to name when count = 1)
    start: bool = True
    machine_class: str = ""
    command: str = ""  # "" = the bundled miner


@dataclass(frozen=True)
class TimelineEntry:
    trigger: Trigger
    join: tuple[str, ...] = ()
    leave: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChainEventSpec:
    at_block: int | None = None
    at_seconds: float | None = None
    set_difficulty: float | None = None
    scale: float | None = None


@dataclass(frozen=True)
class ChainSpec:
    retarget_interval: int
    target_spacing_seconds: float
    clamp_factor: float = 4.0
    initial_difficulty: float = 0.0
    dead_time_seconds: float = 0.035
    mainnet_difficulty: float = 0.0
    events: tuple[ChainEventSpec, ...] = ()


@dataclass(frozen=True)
class RunSpec:
    share_interval_seconds: float = 0.1
    sample_seconds: float = 1.0
    progress_seconds: float = 5.0
    hashrate_window_seconds: float = 10.0
    max_seconds: float = 600.0
    fee_bps: int = 200
    miner_command: str = ""
    fee_share: float = 0.0  # transaction fees in each block, as a share of its subsidy


@dataclass(frozen=True)
class EndSpec:
    trigger: Trigger
    tail_seconds: float = 0.0


@dataclass(frozen=True)
class EconomicsSpec:
    price_usd: Fraction
    subsidy_btc: Fraction
    fees_btc_per_block: Fraction
    machine_classes: tuple[str, ...] = CLASS_NAMES
    power_prices_usd_per_kwh: tuple[Fraction, ...] = ()
    reference_difficulty_after: Fraction | None = None


@dataclass(frozen=True)
class ScenarioSpec:
    name: str
    description: str
    source: str
    quick: bool
    chain: ChainSpec
    run: RunSpec
    end: EndSpec
    miners: tuple[MinerSpec, ...]
    timeline: tuple[TimelineEntry, ...]
    economics: EconomicsSpec | None = None

    def miner(self, name: str) -> MinerSpec:
        for m in self.miners:
            if m.name == name:
                return m
        raise KeyError(name)

    @property
    def start_hashrate(self) -> float:
        return sum(m.hashrate for m in self.miners if m.start)

    def calibrated_difficulty(self) -> float:
        """``chain.initial_difficulty``, or ``hashrate * (spacing - dead time) / 2**32`` of the
        miners present at the start: their blocks then come ``target_spacing_seconds`` apart
        (hashing time plus the dead time after each block)."""
        chain = self.chain
        if chain.initial_difficulty > 0:
            return chain.initial_difficulty
        hashing = chain.target_spacing_seconds - chain.dead_time_seconds
        return self.start_hashrate * hashing / 2**32

    def to_dict(self) -> dict[str, Any]:
        def plain(x: Any) -> Any:
            if isinstance(x, Fraction):
                return float(x)
            if isinstance(x, Trigger):
                return x.to_dict()
            if isinstance(x, tuple | list):
                return [plain(v) for v in x]
            if hasattr(x, "__dataclass_fields__"):
                return {k: plain(v) for k, v in vars(x).items()}
            return x

        out: dict[str, Any] = plain(self)
        return out


# --- reading ---------------------------------------------------------------------------------


def _trigger(t: Table) -> Trigger:
    trigger = Trigger(
        at_seconds=t.opt_number("at_seconds"),
        after_blocks=t.opt_integer("after_blocks", minimum=1),
        after_retargets=t.opt_integer("after_retargets", minimum=1),
    )
    if sum(v is not None for v in vars(trigger).values()) != 1:
        raise ScenarioError(
            f"{t.where}: {t.path} needs exactly one of at_seconds, after_blocks and after_retargets"
        )
    return trigger


def _check_command(command: str, key: str, where: str) -> None:
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(command) if f is not None}
    except ValueError as exc:
        raise ScenarioError(f"{where}: {key} is not a valid command template: {exc}") from None
    unknown = fields - PLACEHOLDERS
    if unknown:
        raise ScenarioError(
            f"{where}: {key} has unknown placeholders {sorted(unknown)}; "
            f"use {', '.join('{' + p + '}' for p in sorted(PLACEHOLDERS))}"
        )


def _chain(t: Table) -> ChainSpec:
    events = []
    for e in t.tables("events"):
        event = ChainEventSpec(
            at_block=e.opt_integer("at_block", minimum=1),
            at_seconds=e.opt_number("at_seconds"),
            set_difficulty=e.opt_number("set_difficulty", positive=True),
            scale=e.opt_number("scale", positive=True),
        )
        e.done()
        if (event.at_block is None) == (event.at_seconds is None):
            raise ScenarioError(f"{e.where}: {e.path} needs exactly one of at_block and at_seconds")
        if (event.set_difficulty is None) == (event.scale is None):
            raise ScenarioError(
                f"{e.where}: {e.path} needs exactly one of set_difficulty and scale"
            )
        events.append(event)
    spec = ChainSpec(
        retarget_interval=t.integer("retarget_interval", minimum=2),
        target_spacing_seconds=t.number("target_spacing_seconds", positive=True),
        clamp_factor=t.number("clamp_factor", 4.0, minimum=1.0),
        initial_difficulty=t.number("initial_difficulty", 0.0),
        dead_time_seconds=t.number("dead_time_seconds", 0.035),
        mainnet_difficulty=t.number("mainnet_difficulty", 0.0),
        events=tuple(events),
    )
    if spec.dead_time_seconds >= spec.target_spacing_seconds:
        raise t.fail("dead_time_seconds", "must be less than target_spacing_seconds")
    t.done()
    return spec


def _run(t: Table) -> RunSpec:
    spec = RunSpec(
        share_interval_seconds=t.number("share_interval_seconds", 0.1, positive=True),
        sample_seconds=t.number("sample_seconds", 1.0, positive=True),
        progress_seconds=t.number("progress_seconds", 5.0, positive=True),
        hashrate_window_seconds=t.number("hashrate_window_seconds", 10.0, positive=True),
        max_seconds=t.number("max_seconds", 600.0, positive=True),
        fee_bps=t.integer("fee_bps", 200),
        miner_command=t.text("miner_command"),
        fee_share=t.number("fee_share", 0.0),
    )
    if spec.fee_share > MAX_FEE_SHARE:
        raise t.fail(
            "fee_share", f"must be 0..{MAX_FEE_SHARE:g} of the subsidy, got {spec.fee_share}"
        )
    if spec.fee_bps > 10_000:
        raise t.fail("fee_bps", f"must be 0..10000 basis points, got {spec.fee_bps}")
    if spec.miner_command:
        _check_command(spec.miner_command, t.key("miner_command"), t.where)
    t.done()
    return spec


def _miners(tables: list[Table], where: str) -> tuple[MinerSpec, ...]:
    if not tables:
        raise ScenarioError(f"{where}: miners: at least one [[miners]] entry is required")
    miners: list[MinerSpec] = []
    for t in tables:
        name = t.text("name")
        if not WORKER_NAME.match(name):
            raise t.fail("name", f"must be 1-64 letters, digits, '_' or '-', got {name!r}")
        hashrate = t.number("hashrate", positive=True)
        count = t.integer("count", 1, minimum=1)
        machine_class = t.text("machine_class")
        if machine_class and machine_class not in CLASS_NAMES:
            raise t.fail("machine_class", f"must be one of {', '.join(CLASS_NAMES)}")
        command = t.text("command")
        if command:
            _check_command(command, t.key("command"), where)
        start = t.flag("start", True)
        t.done()
        names = [name] if count == 1 else [f"{name}-{i}" for i in range(1, count + 1)]
        for n in names:
            if not WORKER_NAME.match(n):
                raise t.fail("name", f"gives the worker name {n!r}, longer than 64 characters")
            miners.append(MinerSpec(n, hashrate, name, start, machine_class, command))
    seen: set[str] = set()
    for m in miners:
        if m.name in seen:
            raise ScenarioError(f"{where}: miners: the name {m.name!r} is used twice")
        seen.add(m.name)
    return tuple(miners)


def _resolve_names(
    names: Sequence[str], miners: Sequence[MinerSpec], key: str, where: str
) -> tuple[str, ...]:
    out: list[str] = []
    for name in names:
        found = [m.name for m in miners if m.name == name] or [
            m.name for m in miners if m.group == name
        ]
        if not found:
            raise ScenarioError(f"{where}: {key} names no miner or group {name!r}")
        out.extend(n for n in found if n not in out)
    return tuple(out)


def _timeline(tables: list[Table], miners: Sequence[MinerSpec]) -> tuple[TimelineEntry, ...]:
    entries = []
    for t in tables:
        trigger = _trigger(t)
        join = _resolve_names(t.strings("join"), miners, t.key("join"), t.where)
        leave = _resolve_names(t.strings("leave"), miners, t.key("leave"), t.where)
        t.done()
        if not join and not leave:
            raise ScenarioError(f"{t.where}: {t.path} needs join or leave (a list of miners)")
        entries.append(TimelineEntry(trigger, join, leave))
    return tuple(entries)


def _economics(t: Table, chain: ChainSpec) -> EconomicsSpec | None:
    if not t.data:
        return None
    classes = t.strings("machine_classes") or CLASS_NAMES
    for c in classes:
        if c not in CLASS_NAMES:
            raise t.fail(
                "machine_classes", f"has {c!r}; built-in classes: {', '.join(CLASS_NAMES)}"
            )
    prices = []
    raw_prices = t.raw("power_prices_usd_per_kwh") or []
    if not isinstance(raw_prices, list):
        raise t.fail("power_prices_usd_per_kwh", "must be a list of numbers")
    for i, _ in enumerate(raw_prices):
        item = Table({"p": raw_prices[i]}, t.key(f"power_prices_usd_per_kwh[{i}]"), t.where)
        prices.append(item.exact("p"))
    reference = None
    if t.data.get("reference_difficulty_after") is not None:
        reference = t.exact("reference_difficulty_after")
        if reference <= 0:
            raise t.fail("reference_difficulty_after", "must be greater than 0")
    spec = EconomicsSpec(
        price_usd=t.exact("price_usd", "66680"),
        subsidy_btc=t.exact("subsidy_btc", "3.125"),
        fees_btc_per_block=t.exact("fees_btc_per_block", "0.02"),
        machine_classes=classes,
        power_prices_usd_per_kwh=tuple(prices),
        reference_difficulty_after=reference,
    )
    t.done()
    if chain.mainnet_difficulty <= 0:
        raise ScenarioError(
            f"{t.where}: [economics] needs chain.mainnet_difficulty (the mainnet difficulty the "
            "simulated start stands for)"
        )
    return spec


def parse(data: Mapping[str, Any], *, where: str, default_name: str, quick: bool) -> ScenarioSpec:
    """A scenario from parsed TOML. ``quick``: apply its ``[quick]`` overrides."""
    if quick:
        overrides = data.get("quick")
        if overrides is None:
            raise ScenarioError(f"{where}: no [quick] section, so there is no --quick variant")
        if not isinstance(overrides, Mapping):
            raise ScenarioError(f"{where}: quick must be a table")
        if "quick" in overrides or "scenario" in overrides:
            raise ScenarioError(f"{where}: quick may not override [scenario] or [quick]")
        data = merge(data, overrides)
    root = Table(data, "", where)
    root.raw("quick")  # read (above) only when asked for
    info = root.table("scenario")
    name = info.text("name", default_name)
    description = info.text("description")
    info.done()
    chain = _chain(root.table("chain"))
    run = _run(root.table("run"))
    miners = _miners(root.tables("miners"), where)
    if run.miner_command:
        miners = tuple(
            m if m.command else MinerSpec(**{**vars(m), "command": run.miner_command})
            for m in miners
        )
    timeline = _timeline(root.tables("timeline"), miners)
    end_table = root.table("end")
    if not end_table.data:
        raise ScenarioError(f"{where}: [end] is required (at_seconds, after_blocks or ...)")
    end = EndSpec(_trigger(end_table), end_table.number("tail_seconds", 0.0))
    end_table.done()
    economics = _economics(root.table("economics"), chain)
    root.done()
    spec = ScenarioSpec(
        name=name,
        description=description,
        source=where,
        quick=quick,
        chain=chain,
        run=run,
        end=end,
        miners=miners,
        timeline=timeline,
        economics=economics,
    )
    if chain.initial_difficulty <= 0 and spec.start_hashrate <= 0:
        raise ScenarioError(
            f"{where}: chain.initial_difficulty is 0 (calibrate from the miners present at the "
            "start) but every miner has start = false"
        )
    return spec


def builtin_names() -> list[str]:
    folder = resources.files(__package__).joinpath(BUILTIN_DIR)
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def load(name_or_file: str, *, quick: bool = False) -> ScenarioSpec:
    """A built-in scenario by name, or a TOML file (a path, or anything ending in .toml)."""
    path = Path(name_or_file)
    if name_or_file.endswith(".toml") or "/" in name_or_file or path.is_file():
        where = str(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ScenarioError(f"{where}: no such scenario file") from None
        except OSError as exc:
            raise ScenarioError(f"{where}: cannot read it: {exc}") from None
        default_name = path.stem
    else:
        names = builtin_names()
        if name_or_file not in names:
            raise ScenarioError(
                f"unknown scenario {name_or_file!r}: the built-ins are {', '.join(names)} "
                "(or give a TOML file)"
            )
        where = f"built-in scenario {name_or_file}"
        resource = resources.files(__package__).joinpath(BUILTIN_DIR, f"{name_or_file}.toml")
        text = resource.read_text()
        default_name = name_or_file
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{where}: not valid TOML: {exc}") from None
    return parse(data, where=where, default_name=default_name, quick=quick)
