"""pool.economics: hashprice, energy, break-even, share value (pure, no event loop)."""

from __future__ import annotations

import json
from decimal import Decimal
from fractions import Fraction

import pytest

from pool import economics as econ

D_AFTER = Fraction(12_586 * 10**10)  # 125.86 T, after the Feb 2026 retarget


def by_name(report: econ.EconomicsReport, name: str) -> list[econ.MachineVerdict]:
    return [m for m in report.machines if m.name == name]


def test_seeds_are_the_february_2026_figures() -> None:
    report = econ.compute()
    assert report.difficulty == econ.parse_difficulty("125.86T") == D_AFTER
    assert report.price_usd == 66_680
    assert report.fees_btc_per_block == Fraction(2, 100)
    assert report.subsidy_btc == Fraction(25, 8)


def test_hashprice_with_seeds_is_about_33_5_usd_per_ph_day() -> None:
    report = econ.compute()
    assert abs(report.hashprice_usd_per_ph_day - Fraction(335, 10)) <= Fraction(335, 10) / 20
    assert report.hashprice_usd_per_th_day == report.hashprice_usd_per_ph_day / 1000
    assert 0.03 < float(report.hashprice_usd_per_th_day) < 0.035
    # 144 * 3.145 BTC a day spread over the network's PH/s, independent of the price
    assert report.hashprice_sat_per_ph_day == report.hashprice_usd_per_ph_day / 66_680 * 10**8


def test_network_hashrate_for_125_86_t_is_about_0_90_zh_s() -> None:
    hs = econ.network_hashrate_hs(D_AFTER)
    assert hs == D_AFTER * 2**32 / 600
    assert round(float(hs) / 1e21, 2) == 0.90
    assert 890e18 < hs < 915e18  # consistent with the ~913 EH/s reported


def test_energy_per_ph_day() -> None:
    assert econ.kwh_per_ph_day(Fraction(30)) == 720
    assert econ.kwh_per_ph_day(Fraction(35, 2)) == 420
    assert econ.power_cost_usd_per_ph_day(Fraction(30), Fraction(6, 100)) == Fraction(432, 10)


def test_s19_underwater_at_6_cents_and_s21_profitable_at_5_cents() -> None:
    report = econ.compute()
    [s19] = by_name(report, "S19-class")
    [s21] = by_name(report, "S21-class")
    assert s19.power_price_usd_per_kwh == Fraction(6, 100)
    assert s19.verdict == econ.UNDERWATER and s19.profit_usd_per_ph_day < 0
    assert s21.power_price_usd_per_kwh == Fraction(5, 100)
    assert s21.verdict == econ.PROFITABLE and s21.profit_usd_per_ph_day > 0
    assert s19.power_cost_usd_per_ph_day == Fraction(432, 10)  # ~$43 per PH/day
    assert s21.power_cost_usd_per_ph_day == 21


def test_per_machine_figures() -> None:
    report = econ.compute()
    [s19] = by_name(report, "S19-class")
    # 95 TH/s at 30 J/TH = 2850 W = 68.4 kWh a day, at $0.06 = $4.104
    assert s19.power_cost_usd_per_machine_day == Fraction(4104, 1000)
    assert s19.revenue_usd_per_machine_day == report.hashprice_usd_per_ph_day * Fraction(95, 1000)
    assert s19.profit_usd_per_machine_day == (
        s19.revenue_usd_per_machine_day - s19.power_cost_usd_per_machine_day
    )
    assert s19.to_dict()["power_w_per_machine"] == 2850


@pytest.mark.parametrize("j_per_th", [Fraction(30), Fraction(35, 2), Fraction(22)])
def test_break_even_power_price_round_trip(j_per_th: Fraction) -> None:
    report = econ.compute()
    hashprice = report.hashprice_usd_per_ph_day
    price = econ.break_even_power_price(hashprice, j_per_th)
    verdict = econ.judge(econ.custom_class(j_per_th), hashprice, price)
    assert verdict.break_even_power_price_usd_per_kwh == price
    assert abs(verdict.profit_usd_per_ph_day) < Fraction(1, 100)
    assert abs(verdict.profit_usd_per_machine_day) < Fraction(1, 100)
    assert verdict.profit_usd_per_ph_day == 0  # exact with Fractions
    assert verdict.verdict == econ.PROFITABLE
    # one cent per kWh above break-even is underwater
    above = econ.judge(econ.custom_class(j_per_th), hashprice, price + Fraction(1, 100))
    assert above.verdict == econ.UNDERWATER


def test_break_even_for_s19_is_below_5_cents() -> None:
    [s19] = by_name(econ.compute(), "S19-class")
    assert Fraction(4, 100) < s19.break_even_power_price_usd_per_kwh < Fraction(5, 100)


def test_share_value_scales_exactly_as_one_over_difficulty() -> None:
    before = econ.compute(difficulty=D_AFTER / (1 - Fraction(1116, 10_000)))
    after = econ.compute(difficulty=D_AFTER)
    ratio = after.share.fpps_btc / before.share.fpps_btc
    assert ratio == 1 / (1 - Fraction(1116, 10_000))
    assert after.share.pps_sat / before.share.pps_sat == ratio
    assert round(float(ratio - 1) * 100, 2) == 12.56  # -11.16 % difficulty -> +12.56 % a share


def test_share_value_formula_and_units() -> None:
    report = econ.compute(share_difficulty=Fraction(1024))
    share = report.share
    assert share.fpps_btc == Fraction(1024) / D_AFTER * Fraction(3145, 1000)
    assert share.pps_btc == Fraction(1024) / D_AFTER * Fraction(3125, 1000)
    assert share.fpps_sat == share.fpps_btc * 100_000_000
    assert share.fpps_usd == share.fpps_btc * 66_680
    assert share.pps_btc < share.fpps_btc
    # a whole block's worth of difficulty-D shares pays the block reward
    whole = econ.compute(share_difficulty=D_AFTER).share
    assert whole.fpps_sat == 314_500_000 and whole.pps_sat == 312_500_000
    d = share.to_dict()
    assert Fraction(d["fpps_value_sat_exact"]) == share.fpps_sat
    assert Fraction(d["pps_value_sat_exact"]) == share.pps_sat


def test_power_prices_apply_to_every_class_and_efficiency_adds_a_custom_class() -> None:
    report = econ.compute(
        efficiencies_j_per_th=[Fraction(22)],
        power_prices_usd_per_kwh=[Fraction(4, 100), Fraction(7, 100)],
    )
    names = [(m.name, m.power_price_usd_per_kwh) for m in report.machines]
    assert names == [
        (name, price)
        for name in ("S19-class", "S21-class", "custom-22")
        for price in (Fraction(4, 100), Fraction(7, 100))
    ]
    custom = by_name(report, "custom-22")[0]
    assert custom.th_per_machine == econ.CUSTOM_TH_PER_MACHINE
    assert econ.custom_class(Fraction(35, 2)).name == "custom-17.5"


def test_custom_class_without_power_price_uses_the_custom_default() -> None:
    report = econ.compute(efficiencies_j_per_th=[Fraction(15)])
    [custom] = by_name(report, "custom-15")
    assert custom.power_price_usd_per_kwh == econ.CUSTOM_POWER_PRICE_USD_PER_KWH


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("125.86T", Fraction(12_586 * 10**10)),
        ("141.6T", Fraction(1416 * 10**11)),
        ("1k", Fraction(1000)),
        ("1K", Fraction(1000)),
        ("2.5M", Fraction(2_500_000)),
        ("3G", Fraction(3 * 10**9)),
        ("0.5P", Fraction(5 * 10**14)),
        ("1E", Fraction(10**18)),
        ("125860000000000", Fraction(12_586 * 10**10)),
        ("1e3", Fraction(1000)),
        (" 0.001 ", Fraction(1, 1000)),
    ],
)
def test_parse_difficulty(text: str, expected: Fraction) -> None:
    assert econ.parse_difficulty(text) == expected


@pytest.mark.parametrize(
    "text", ["abc", "", "T", "12X", "1.2.3T", "nan", "inf", "-5T", "0", "1 T T"]
)
def test_parse_difficulty_errors_name_the_input(text: str) -> None:
    with pytest.raises(ValueError, match="difficulty") as info:
        econ.parse_difficulty(text)
    assert repr(text) in str(info.value)


def test_parse_number() -> None:
    assert econ.parse_number("66680") == 66_680
    assert econ.parse_number("0.02") == Fraction(2, 100)
    assert econ.parse_number("0") == 0
    with pytest.raises(ValueError, match="price '-1'"):
        econ.parse_number("-1", "price")
    with pytest.raises(ValueError, match="efficiency '0': must be greater than 0"):
        econ.parse_number("0", "efficiency", positive=True)
    with pytest.raises(ValueError, match="power price 'cheap'"):
        econ.parse_number("cheap", "power price")


def test_compute_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="difficulty"):
        econ.compute(difficulty=Fraction(0))
    with pytest.raises(ValueError, match="power price"):
        econ.compute(power_prices_usd_per_kwh=[Fraction(-1)])
    with pytest.raises(ValueError, match="efficiency"):
        econ.compute(efficiencies_j_per_th=[Fraction(0)])
    with pytest.raises(ValueError, match="share difficulty"):
        econ.compute(share_difficulty=Fraction(0))


def test_to_dict_is_plain_json_with_units_in_keys() -> None:
    report = econ.compute()
    data = json.loads(json.dumps(report.to_dict()))
    assert data == report.to_dict()
    assert data["hashprice_usd_per_ph_day"] == pytest.approx(33.518, abs=0.001)
    assert data["network_hashrate_hs"] == pytest.approx(9.009e20, rel=1e-3)
    assert data["inputs"]["difficulty"] == 125_860_000_000_000
    assert [m["verdict"] for m in data["machines"]] == ["underwater", "profitable"]
    assert data["machines"][0]["energy_kwh_per_ph_day"] == 720


def test_money_formatting_rounds_to_cents() -> None:
    assert econ.format_usd(Fraction(33518, 1000)) == "$33.52"
    assert econ.format_usd(Fraction(-968, 100)) == "-$9.68"
    assert econ.format_usd(Fraction(30_198_038_4, 10)) == "$30,198,038.40"
    assert econ.format_usd(Fraction(1, 1000)) == "$0.00"
    assert econ.round_to(Fraction(1, 3), 2) == Decimal("0.33")
    assert econ.format_usd_small(Fraction(335, 10_000)) == "$0.0335"
    assert econ.format_difficulty(D_AFTER) == "125.86T"


def test_text_report_is_a_readable_table() -> None:
    text = econ.format_report(econ.compute())
    assert "$33.52" in text
    assert "0.90 ZH/s" in text
    assert "125.86T" in text
    s19_line = next(line for line in text.splitlines() if line.strip().startswith("S19-class"))
    assert "underwater" in s19_line and "$43.20" in s19_line and "-$9.68" in s19_line
    s21_line = next(line for line in text.splitlines() if line.strip().startswith("S21-class"))
    assert "profitable" in s21_line and "$21.00" in s21_line
