"""Mining economics: hashprice, energy cost, break-even power price, PPS value of a share.

PURE: no asyncio, no I/O, no clock. Every quantity is an exact ``fractions.Fraction``; floats
appear only in ``to_dict()`` (JSON numbers) and rounding only in the text formatting helpers.
The formulas are those of ``docs/economics.md``:

- network hashrate (H/s) = ``D * 2**32 / 600``
- hashprice (USD per PH/s per day) = ``144 * (subsidy + fees) * price / network_PH_per_s``
- energy (kWh per PH/s per day) = ``J_per_TH * 1000 * 86400 / 3.6e6``
- break-even power price (USD/kWh) = ``hashprice / kWh_per_PH_day``
- value of a share of difficulty ``d`` = ``d / D * B``; ``B`` = subsidy + fees (FPPS) or the
  subsidy alone (PPS), before any pool fee.

Built-in machine classes (nominal figures, not any one model's datasheet):

- ``S19-class``: 30 J/TH, 95 TH/s per machine (Antminer S19 / S19 Pro generation), judged at
  $0.06/kWh by default;
- ``S21-class``: 17.5 J/TH, 200 TH/s per machine (Antminer S21 generation), judged at
  $0.05/kWh by default.

A custom class (``custom_class``) is named ``custom-<J/TH>``, has a nominal 100 TH/s per machine
and is judged at $0.06/kWh unless power prices are given. When power prices are given, every
class is judged at each of them. A class whose profit is >= 0 is "profitable", else
"underwater".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

BLOCKS_PER_DAY = 144
SECONDS_PER_BLOCK = 600
HASHES_PER_DIFFICULTY_1 = 2**32
SATOSHI_PER_BTC = 100_000_000
SECONDS_PER_DAY = 86_400
JOULES_PER_KWH = 3_600_000
TH_PER_PH = 1000
HASHES_PER_PH = 10**15

# February 2026 seeds (docs/economics.md): after the -11.16 % retarget of Feb 7-9 2026.
DEFAULT_DIFFICULTY = "125.86T"
DEFAULT_PRICE_USD = "66680"
DEFAULT_FEES_BTC_PER_BLOCK = "0.02"
DEFAULT_SUBSIDY_BTC = "3.125"
DEFAULT_SHARE_DIFFICULTY = "1"
CUSTOM_TH_PER_MACHINE = Fraction(100)
CUSTOM_POWER_PRICE_USD_PER_KWH = Fraction(6, 100)

PROFITABLE = "profitable"
UNDERWATER = "underwater"

SI_SUFFIXES: dict[str, int] = {
    "k": 10**3,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
}


@dataclass(frozen=True)
class MachineClass:
    """A class of machines: efficiency, nominal hashrate per machine, default power price."""

    name: str
    j_per_th: Fraction
    th_per_machine: Fraction
    default_power_price_usd_per_kwh: Fraction


S19_CLASS = MachineClass("S19-class", Fraction(30), Fraction(95), Fraction(6, 100))
S21_CLASS = MachineClass("S21-class", Fraction(35, 2), Fraction(200), Fraction(5, 100))
BUILTIN_CLASSES: tuple[MachineClass, ...] = (S19_CLASS, S21_CLASS)


SEED_DIFFICULTY = Fraction(12_586 * 10**10)  # 125.86 T
SEED_PRICE_USD = Fraction(66_680)
SEED_FEES_BTC_PER_BLOCK = Fraction(2, 100)
SEED_SUBSIDY_BTC = Fraction(3125, 1000)


# --- parsing ---------------------------------------------------------------------------------


def _decimal(text: str) -> Fraction | None:
    """A finite decimal number as an exact Fraction, or None."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        return None
    return Fraction(value) if value.is_finite() else None


def parse_number(text: str, what: str = "number", *, positive: bool = False) -> Fraction:
    """A plain decimal number (``"66680"``, ``"0.02"``, ``"1e-3"``) as an exact Fraction.

    ``what`` names the input in the error message. Negative values are refused; zero too when
    ``positive``.
    """
    value = _decimal(text)
    if value is None:
        raise ValueError(f"invalid {what} {text!r}: expected a finite decimal number")
    if value < 0 or (positive and value == 0):
        bound = "greater than 0" if positive else "0 or more"
        raise ValueError(f"invalid {what} {text!r}: must be {bound}")
    return value


def parse_difficulty(text: str, what: str = "difficulty") -> Fraction:
    """``"125.86T"`` -> 125.86e12 exactly; SI suffixes k (or K), M, G, T, P, E; plain numbers."""
    stripped = text.strip()
    multiplier = 1
    if stripped and stripped[-1] in SI_SUFFIXES:
        multiplier = SI_SUFFIXES[stripped[-1]]
        stripped = stripped[:-1]
    value = _decimal(stripped) if stripped else None
    if value is None:
        raise ValueError(
            f"invalid {what} {text!r}: expected a number with an optional SI suffix"
            " (k, M, G, T, P, E), e.g. 125.86T"
        )
    if value <= 0:
        raise ValueError(f"invalid {what} {text!r}: must be greater than 0")
    return value * multiplier


def custom_class(j_per_th: Fraction) -> MachineClass:
    """A machine class ``custom-<J/TH>`` with the nominal custom hashrate and power price."""
    if j_per_th <= 0:
        raise ValueError(f"invalid efficiency {float(j_per_th)!r} J/TH: must be greater than 0")
    return MachineClass(
        f"custom-{_plain(j_per_th)}",
        j_per_th,
        CUSTOM_TH_PER_MACHINE,
        CUSTOM_POWER_PRICE_USD_PER_KWH,
    )


# --- formulas --------------------------------------------------------------------------------


def network_hashrate_hs(difficulty: Fraction) -> Fraction:
    """Expected network hashrate in H/s: ``D * 2**32 / 600``."""
    return difficulty * HASHES_PER_DIFFICULTY_1 / SECONDS_PER_BLOCK


def hashprice_usd_per_ph_day(
    difficulty: Fraction, price_usd: Fraction, subsidy_btc: Fraction, fees_btc: Fraction
) -> Fraction:
    """USD earned per PH/s per day: ``144 * (subsidy + fees) * price / network_PH_per_s``."""
    network_ph_s = network_hashrate_hs(difficulty) / HASHES_PER_PH
    return BLOCKS_PER_DAY * (subsidy_btc + fees_btc) * price_usd / network_ph_s


def kwh_per_ph_day(j_per_th: Fraction) -> Fraction:
    """Energy of 1 PH/s for one day at ``j_per_th``: ``J_per_TH * 1000 * 86400 / 3.6e6`` kWh."""
    return j_per_th * TH_PER_PH * SECONDS_PER_DAY / JOULES_PER_KWH


def power_cost_usd_per_ph_day(j_per_th: Fraction, power_price_usd_per_kwh: Fraction) -> Fraction:
    return kwh_per_ph_day(j_per_th) * power_price_usd_per_kwh


def break_even_power_price(hashprice: Fraction, j_per_th: Fraction) -> Fraction:
    """The power price (USD/kWh) at which revenue equals the power cost."""
    return hashprice / kwh_per_ph_day(j_per_th)


def share_value_btc(
    share_difficulty: Fraction, difficulty: Fraction, reward_btc: Fraction
) -> Fraction:
    """Expected value of one share: ``d / D * B`` (before any pool fee)."""
    return share_difficulty / difficulty * reward_btc


# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MachineVerdict:
    """One machine class judged at one power price."""

    name: str
    j_per_th: Fraction
    th_per_machine: Fraction
    power_price_usd_per_kwh: Fraction
    kwh_per_ph_day: Fraction
    revenue_usd_per_ph_day: Fraction
    power_cost_usd_per_ph_day: Fraction
    profit_usd_per_ph_day: Fraction
    break_even_power_price_usd_per_kwh: Fraction
    revenue_usd_per_machine_day: Fraction
    power_cost_usd_per_machine_day: Fraction
    profit_usd_per_machine_day: Fraction
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "efficiency_j_per_th": _num(self.j_per_th),
            "hashrate_th_s_per_machine": _num(self.th_per_machine),
            "power_w_per_machine": _num(self.j_per_th * self.th_per_machine),
            "power_price_usd_per_kwh": _num(self.power_price_usd_per_kwh),
            "energy_kwh_per_ph_day": _num(self.kwh_per_ph_day),
            "revenue_usd_per_ph_day": _num(self.revenue_usd_per_ph_day),
            "power_cost_usd_per_ph_day": _num(self.power_cost_usd_per_ph_day),
            "profit_usd_per_ph_day": _num(self.profit_usd_per_ph_day),
            "break_even_power_price_usd_per_kwh": _num(self.break_even_power_price_usd_per_kwh),
            "revenue_usd_per_machine_day": _num(self.revenue_usd_per_machine_day),
            "power_cost_usd_per_machine_day": _num(self.power_cost_usd_per_machine_day),
            "profit_usd_per_machine_day": _num(self.profit_usd_per_machine_day),
            "verdict": self.verdict,
        }


@dataclass(frozen=True)
class ShareValue:
    """Expected value of one share of ``share_difficulty`` (FPPS: subsidy + fees; PPS: subsidy)."""

    share_difficulty: Fraction
    fpps_btc: Fraction
    fpps_usd: Fraction
    pps_btc: Fraction
    pps_usd: Fraction

    @property
    def fpps_sat(self) -> Fraction:
        return self.fpps_btc * SATOSHI_PER_BTC

    @property
    def pps_sat(self) -> Fraction:
        return self.pps_btc * SATOSHI_PER_BTC

    def to_dict(self) -> dict[str, Any]:
        return {
            "share_difficulty": _num(self.share_difficulty),
            "fpps_value_btc": _num(self.fpps_btc),
            "fpps_value_sat": _num(self.fpps_sat),
            "fpps_value_sat_exact": _exact(self.fpps_sat),
            "fpps_value_usd": _num(self.fpps_usd),
            "pps_value_btc": _num(self.pps_btc),
            "pps_value_sat": _num(self.pps_sat),
            "pps_value_sat_exact": _exact(self.pps_sat),
            "pps_value_usd": _num(self.pps_usd),
        }


@dataclass(frozen=True)
class EconomicsReport:
    difficulty: Fraction
    price_usd: Fraction
    fees_btc_per_block: Fraction
    subsidy_btc: Fraction
    network_hashrate_hs: Fraction
    hashprice_usd_per_ph_day: Fraction
    machines: tuple[MachineVerdict, ...]
    share: ShareValue

    @property
    def reward_btc_per_block(self) -> Fraction:
        return self.subsidy_btc + self.fees_btc_per_block

    @property
    def hashprice_usd_per_th_day(self) -> Fraction:
        return self.hashprice_usd_per_ph_day / TH_PER_PH

    @property
    def hashprice_sat_per_ph_day(self) -> Fraction:
        network_ph_s = self.network_hashrate_hs / HASHES_PER_PH
        return BLOCKS_PER_DAY * self.reward_btc_per_block * SATOSHI_PER_BTC / network_ph_s

    @property
    def miners_revenue_usd_per_day(self) -> Fraction:
        return BLOCKS_PER_DAY * self.reward_btc_per_block * self.price_usd

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": {
                "difficulty": _num(self.difficulty),
                "price_usd_per_btc": _num(self.price_usd),
                "fees_btc_per_block": _num(self.fees_btc_per_block),
                "subsidy_btc_per_block": _num(self.subsidy_btc),
                "share_difficulty": _num(self.share.share_difficulty),
                "blocks_per_day": BLOCKS_PER_DAY,
            },
            "reward_btc_per_block": _num(self.reward_btc_per_block),
            "network_hashrate_hs": _num(self.network_hashrate_hs),
            "network_hashrate_eh_s": _num(self.network_hashrate_hs / 10**18),
            "miners_revenue_usd_per_day": _num(self.miners_revenue_usd_per_day),
            "hashprice_usd_per_ph_day": _num(self.hashprice_usd_per_ph_day),
            "hashprice_usd_per_th_day": _num(self.hashprice_usd_per_th_day),
            "hashprice_sat_per_ph_day": _num(self.hashprice_sat_per_ph_day),
            "machines": [m.to_dict() for m in self.machines],
            "share_value": self.share.to_dict(),
        }


def judge(
    machine: MachineClass, hashprice: Fraction, power_price_usd_per_kwh: Fraction
) -> MachineVerdict:
    """Revenue, power cost and profit of ``machine`` at ``power_price_usd_per_kwh``."""
    kwh = kwh_per_ph_day(machine.j_per_th)
    cost = kwh * power_price_usd_per_kwh
    profit = hashprice - cost
    ph_per_machine = machine.th_per_machine / TH_PER_PH
    return MachineVerdict(
        name=machine.name,
        j_per_th=machine.j_per_th,
        th_per_machine=machine.th_per_machine,
        power_price_usd_per_kwh=power_price_usd_per_kwh,
        kwh_per_ph_day=kwh,
        revenue_usd_per_ph_day=hashprice,
        power_cost_usd_per_ph_day=cost,
        profit_usd_per_ph_day=profit,
        break_even_power_price_usd_per_kwh=break_even_power_price(hashprice, machine.j_per_th),
        revenue_usd_per_machine_day=hashprice * ph_per_machine,
        power_cost_usd_per_machine_day=cost * ph_per_machine,
        profit_usd_per_machine_day=profit * ph_per_machine,
        verdict=PROFITABLE if profit >= 0 else UNDERWATER,
    )


def compute(
    *,
    difficulty: Fraction = SEED_DIFFICULTY,
    price_usd: Fraction = SEED_PRICE_USD,
    fees_btc_per_block: Fraction = SEED_FEES_BTC_PER_BLOCK,
    subsidy_btc: Fraction = SEED_SUBSIDY_BTC,
    efficiencies_j_per_th: Iterable[Fraction] = (),
    power_prices_usd_per_kwh: Sequence[Fraction] = (),
    share_difficulty: Fraction = Fraction(1),
    machine_classes: Sequence[MachineClass] = BUILTIN_CLASSES,
) -> EconomicsReport:
    """The whole report. Defaults: the February 2026 seeds and the built-in machine classes.

    Each ``efficiencies_j_per_th`` entry adds a class ``custom-<J/TH>``. With no power prices,
    each class is judged at its default power price; otherwise at every given price.
    """
    if difficulty <= 0:
        raise ValueError(f"invalid difficulty {float(difficulty)!r}: must be greater than 0")
    if share_difficulty <= 0:
        raise ValueError(
            f"invalid share difficulty {float(share_difficulty)!r}: must be greater than 0"
        )
    for name, value in (
        ("price", price_usd),
        ("fees per block", fees_btc_per_block),
        ("subsidy", subsidy_btc),
        *(("power price", p) for p in power_prices_usd_per_kwh),
    ):
        if value < 0:
            raise ValueError(f"invalid {name} {float(value)!r}: must be 0 or more")
    classes = [*machine_classes, *(custom_class(e) for e in efficiencies_j_per_th)]
    hashprice = hashprice_usd_per_ph_day(difficulty, price_usd, subsidy_btc, fees_btc_per_block)
    verdicts = tuple(
        judge(machine, hashprice, price)
        for machine in classes
        for price in (power_prices_usd_per_kwh or [machine.default_power_price_usd_per_kwh])
    )
    fpps = share_value_btc(share_difficulty, difficulty, subsidy_btc + fees_btc_per_block)
    pps = share_value_btc(share_difficulty, difficulty, subsidy_btc)
    share = ShareValue(share_difficulty, fpps, fpps * price_usd, pps, pps * price_usd)
    return EconomicsReport(
        difficulty=difficulty,
        price_usd=price_usd,
        fees_btc_per_block=fees_btc_per_block,
        subsidy_btc=subsidy_btc,
        network_hashrate_hs=network_hashrate_hs(difficulty),
        hashprice_usd_per_ph_day=hashprice,
        machines=verdicts,
        share=share,
    )


# --- formatting ------------------------------------------------------------------------------


def _num(value: Fraction) -> int | float:
    """A JSON number: an int when exact, else the nearest float."""
    return value.numerator if value.denominator == 1 else float(value)


def _exact(value: Fraction) -> str:
    return (
        str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
    )


def round_to(value: Fraction, places: int) -> Decimal:
    """``value`` rounded half-even to ``places`` decimals, exactly (no float on the way)."""
    scaled = round(value * 10**places)
    return Decimal(scaled).scaleb(-places)


def _plain(value: Fraction) -> str:
    """Shortest exact decimal text of a value parsed from decimal input (``17.5``, ``20``)."""
    return format(round_to(value, 12).normalize(), "f")


def format_usd(value: Fraction) -> str:
    """USD to the cent: ``$1,234.57``, ``-$4.10``."""
    cents = round_to(value, 2)
    sign = "-" if cents < 0 else ""
    return f"{sign}${abs(cents):,.2f}"


def format_usd_small(value: Fraction, places: int = 4) -> str:
    """Sub-cent USD quantities (per TH/s per day, per kWh): ``$0.0335``."""
    amount = round_to(value, places)
    sign = "-" if amount < 0 else ""
    return f"{sign}${abs(amount):,.{places}f}"


def format_difficulty(difficulty: Fraction) -> str:
    """``125.86e12`` -> ``125.86T``: the largest SI suffix that leaves a value >= 1."""
    for suffix in ("E", "P", "T", "G", "M", "k"):
        scale = SI_SUFFIXES[suffix]
        if difficulty >= scale:
            return f"{float(difficulty / scale):.6g}{suffix}"
    return f"{float(difficulty):.6g}"


def format_report(report: EconomicsReport) -> str:
    """The readable text table of ``stratum-pool economics``."""
    share = report.share
    lines = [
        "Network",
        f"  difficulty                {format_difficulty(report.difficulty)}",
        f"  network hashrate          {float(report.network_hashrate_hs / 10**18):,.2f} EH/s"
        f" ({float(report.network_hashrate_hs / 10**21):.2f} ZH/s)",
        f"  BTC price                 {format_usd(report.price_usd)}",
        f"  reward per block          {_plain(report.subsidy_btc)} BTC subsidy"
        f" + {_plain(report.fees_btc_per_block)} BTC fees",
        f"  miners' revenue per day   {format_usd(report.miners_revenue_usd_per_day)}"
        f" ({BLOCKS_PER_DAY} blocks)",
        "",
        "Hashprice",
        f"  per PH/s per day          {format_usd(report.hashprice_usd_per_ph_day)}"
        f" ({float(report.hashprice_sat_per_ph_day):,.0f} sat)",
        f"  per TH/s per day          {format_usd_small(report.hashprice_usd_per_th_day)}",
        "",
        "Machines (per PH/s per day, and per machine per day)",
    ]
    header = (
        f"  {'class':<16} {'J/TH':>6} {'TH/s':>6} {'$/kWh':>7} {'kWh/PH-d':>9}"
        f" {'rev/PH-d':>10} {'power/PH-d':>11} {'profit/PH-d':>12} {'break-even':>11}"
        f" {'rev/mach':>9} {'power/mach':>11} {'profit/mach':>12}  verdict"
    )
    lines.append(header)
    for m in report.machines:
        lines.append(
            f"  {m.name:<16} {_plain(m.j_per_th):>6} {_plain(m.th_per_machine):>6}"
            f" {format_usd_small(m.power_price_usd_per_kwh, 3):>7}"
            f" {float(m.kwh_per_ph_day):>9,.1f}"
            f" {format_usd(m.revenue_usd_per_ph_day):>10}"
            f" {format_usd(m.power_cost_usd_per_ph_day):>11}"
            f" {format_usd(m.profit_usd_per_ph_day):>12}"
            f" {format_usd_small(m.break_even_power_price_usd_per_kwh):>11}"
            f" {format_usd(m.revenue_usd_per_machine_day):>9}"
            f" {format_usd(m.power_cost_usd_per_machine_day):>11}"
            f" {format_usd(m.profit_usd_per_machine_day):>12}  {m.verdict}"
        )
    lines += [
        "  (break-even: the power price in $/kWh at which the profit is zero)",
        "",
        f"Value of one share of difficulty {_plain(share.share_difficulty)} (before pool fee)",
        f"  FPPS (subsidy + fees)     {float(share.fpps_btc):.6e} BTC"
        f" = {float(share.fpps_sat):.6e} sat = ${float(share.fpps_usd):.6e}",
        f"  PPS (subsidy only)        {float(share.pps_btc):.6e} BTC"
        f" = {float(share.pps_sat):.6e} sat = ${float(share.pps_usd):.6e}",
    ]
    return "\n".join(lines)
