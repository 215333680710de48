"""``report.html``: one self-contained page (inline CSS and SVG, no scripts, nothing fetched)
rendered from the report data of ``pool.scenarios.report``. PURE."""

from __future__ import annotations

import time
from collections.abc import Mapping
from html import escape
from typing import Any

from pool.scenarios.html_parts import figure as _figure
from pool.scenarios.html_parts import table as _table
from pool.scenarios.schemes_html import schemes_html
from pool.scenarios.svg import PALETTE, Line, Marker, chart, si

PLOTS = ("hashrate", "difficulty", "blocks", "pps-value", "pps-reserve", "earnings")

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 900px; color: #222; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; }
.muted { color: #666; } .bad { color: #b00; } .good { color: #070; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; }
th { background: #f6f6f6; } td.l, th.l { text-align: left; }
figure { margin: 18px 0; } figcaption { font-size: 12px; color: #555; }
svg.plot text { font: 11px system-ui, sans-serif; fill: #333; }
svg.plot text.axis { font-size: 12px; } svg.plot text.empty { fill: #999; font-size: 14px; }
dl.keys { display: grid; grid-template-columns: max-content auto; gap: 2px 14px; }
dl.keys dt { color: #555; } dl.keys dd { margin: 0; }
"""


def _pct(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x * 100:+.{digits}f} %"


def _num(x: float | None, unit: str = "") -> str:
    return "n/a" if x is None else si(float(x), unit)


def _usd(x: float) -> str:
    return f"-${-x:,.2f}" if x < 0 else f"${x:,.2f}"


def _markers(report: Mapping[str, Any], retargets: bool) -> list[Marker]:
    out = [
        Marker(
            float(a["t"]),
            f"{a['action']} {', '.join(a['miners'])} ({a['trigger']})",
            "#c00" if a["action"] == "leave" else "#080",
        )
        for a in report["actions"]
    ]
    if retargets:
        out += [
            Marker(float(r["t"]), f"{r['kind']} {_pct(r['change'])}", "#999")
            for r in report["retargets"]
        ]
    return out


def _plots(report: Mapping[str, Any]) -> str:
    s = report["series"]
    duration = float(report["summary"]["duration_seconds"])
    names = [m["name"] for m in report["miners"]]
    colors = {n: PALETTE[(i + 2) % len(PALETTE)] for i, n in enumerate(names)}
    actions = _markers(report, retargets=False)
    everything = _markers(report, retargets=True)
    window = s["hashrate_window_seconds"]
    start_value = s["pps_value_sat"][0][1] if s["pps_value_sat"] else 0.0
    hashrate = chart(
        "hashrate",
        "Pool and per-worker hashrate",
        [
            Line("pool (measured)", s["pool_hashrate"], PALETTE[0], width=2.4),
            Line("set hashrate", s["set_hashrate"], "#444", dashed=True),
            *(Line(n, s["worker_hashrate"][n], colors[n], width=1.2) for n in names),
        ],
        y_label="hashes per second",
        y_format=lambda v: si(v, "H/s"),
        markers=actions,
        x_max=duration,
    )
    mainnet = s["difficulty_is_mainnet_equivalent"]
    difficulty = chart(
        "difficulty",
        "Network difficulty (simulated)",
        [Line("difficulty", s["difficulty"], PALETTE[1], step=True, width=2.2)],
        y_label="difficulty (mainnet-equivalent)" if mainnet else "simulated difficulty",
        y_format=lambda v: si(v, digits=4),
        markers=everything,
        x_max=duration,
        y_from_zero=False,
    )
    blocks = chart(
        "blocks",
        "Blocks found (cumulative)",
        [Line("blocks", s["blocks"], PALETTE[2], step=True, width=2.0)],
        y_label="blocks",
        y_format=lambda v: f"{v:g}",
        markers=everything,
        x_max=duration,
    )
    pps = chart(
        "pps-value",
        "PPS value per share (at a fixed block reward, x the start value)",
        [Line("value per share", s["pps_value_index"], PALETTE[3], step=True, width=2.2)],
        y_label="x the start value",
        y_format=lambda v: f"{v:.3g}",
        markers=everything,
        x_max=duration,
        y_from_zero=False,
    )
    reserve = chart(
        "pps-reserve",
        "PPS reserve: block rewards earned minus credits and fees",
        [
            Line("reserve (sat)", s["reserve_sat"], PALETTE[4], width=2.2),
            Line("zero", [[0, 0], [duration, 0]], "#aaa", dashed=True, width=1),
        ],
        y_label="satoshis",
        y_format=si,
        markers=actions,
        x_max=duration,
        y_from_zero=False,
    )
    earnings = chart(
        "earnings",
        "Per-worker PPS earnings (cumulative credit)",
        [Line(n, s["earnings_sat"][n], colors[n]) for n in names],
        y_label="satoshis",
        y_format=si,
        markers=actions,
        x_max=duration,
    )
    return "\n".join(
        [
            _figure(
                "hashrate",
                hashrate,
                f"Accepted work over a {window:g} s window; dashed: the hashrate the miners "
                "were set to. Red/green lines: miners leaving/joining.",
            ),
            _figure("difficulty", difficulty, "Steps at every retarget and scripted event."),
            _figure("blocks", blocks, "Grey lines: difficulty changes."),
            _figure(
                "pps-value",
                pps,
                "It moves by old/new difficulty at every change. At the start a difficulty-1 "
                f"share was worth {start_value:.6g} sat before the pool fee (the simulated "
                "difficulty is far below 1); regtest's subsidy, which also sets it, halves "
                "every 150 blocks (see the table below).",
            ),
            _figure("pps-reserve", reserve, "Found blocks count while pending."),
            _figure("earnings", earnings, "PPS credit after the pool fee, per worker."),
        ]
    )


def _keys(report: Mapping[str, Any]) -> str:
    summary = report["summary"]
    chain = report["chain"]
    items = [
        ("blocks found", f"{summary['blocks']} ({summary['blocks_not_accepted']} not accepted)"),
        (
            "retarget period",
            f"{chain['retarget_interval']} blocks, {chain['target_spacing_seconds']:g} s spacing",
        ),
        ("retargets / events", f"{summary['retargets']} / {summary['events']}"),
        ("start difficulty", f"{summary['start_difficulty']:.6g} (simulated)"),
    ]
    if summary.get("start_mainnet_difficulty"):
        items.append(("shown as (mainnet)", si(summary["start_mainnet_difficulty"], digits=4)))
    exit_info = summary.get("exit")
    if exit_info:
        items.append(
            (
                "hashrate exit",
                f"{', '.join(exit_info['miners'])} at {exit_info['t']:.1f} s "
                f"({exit_info['trigger']}): set {_pct(-(exit_info['set_fraction_left'] or 0))}, "
                f"measured {_pct(-(exit_info['measured_fraction_left'] or 0), 1)}",
            )
        )
    key = summary.get("key_change")
    if key:
        cls = "good" if key["change"] < 0 else "bad"
        text = (
            f'<span class="{cls}">{_pct(key["change"])}</span> at height {key["height"]} '
            f"({escape(summary['key_change_reason'])}): {key['old_difficulty']:.6g} -> "
            f"{key['new_difficulty']:.6g}"
        )
        if key.get("mainnet_old_difficulty"):
            text += (
                f" (mainnet-equivalent {si(key['mainnet_old_difficulty'], digits=4)} -> "
                f"{si(key['mainnet_new_difficulty'], digits=4)})"
            )
        items.append(("key difficulty change", text))
        if key.get("actual_timespan") is not None:
            items.append(
                (
                    "its period",
                    f"{key['actual_timespan']:.2f} s measured vs {key['expected_timespan']:g} s "
                    f"expected; from the set hashrates: "
                    f"{_pct(key['expected_change_from_set_hashrates'])}",
                )
            )
        items.append(
            (
                "PPS value per share",
                f"x{key['pps_value_ratio']:.6f} ({key['pps_value_before_sat']:.6g} -> "
                f"{key['pps_value_after_sat']:.6g} sat per difficulty-1 share)",
            )
        )
    if "reserve_sat" in summary:
        items.append(("PPS reserve at the end", f"{summary['reserve_sat']:,.0f} sat"))
    return (
        '<dl class="keys">'
        + "".join(
            f"<dt>{escape(k)}</dt><dd>{v if k == 'key difficulty change' else escape(v)}</dd>"
            for k, v in items
        )
        + "</dl>"
    )


def _retarget_table(report: Mapping[str, Any]) -> str:
    rows = []
    for r in report["retargets"]:
        span = (
            f"{r['actual_timespan']:.2f} / {r['expected_timespan']:g}"
            if r["actual_timespan"] is not None
            else "-"
        )
        rows.append(
            [
                escape(r["kind"]),
                f"{r['t']:.1f}",
                str(r["height"]),
                f"{r['old_difficulty']:.6g}",
                f"{r['new_difficulty']:.6g}",
                _pct(r["change"]),
                span,
                f"{r['pps_value_before_sat']:.5g} -> {r['pps_value_after_sat']:.5g}",
            ]
        )
    return _table(
        ["kind", "t (s)", "height", "old", "new", "change", "timespan s", "PPS sat/diff-1 share"],
        rows,
    )


def _miner_table(report: Mapping[str, Any]) -> str:
    rows = []
    for m in report["miners"]:
        spans = ", ".join(f"{a:.1f}-{'end' if b is None else f'{b:.1f}'}" for a, b in m["spans"])
        rows.append(
            [
                escape(m["name"]),
                escape(m["machine_class"] or "-"),
                si(m["hashrate"], "H/s"),
                f"{m['share_difficulty']:.3g}",
                escape(spans or "never ran"),
                str(m["blocks"]),
                f"{m['credited_sat']:,.0f}",
            ]
        )
    return _table(
        ["miner", "class", "set hashrate", "share diff", "running (s)", "blocks", "PPS sat"], rows
    )


def _economics(report: Mapping[str, Any]) -> str:
    e = report.get("economics")
    if not e:
        return ""
    b, a = e["before"], e["after"]
    head = _table(
        ["", "difficulty", "network EH/s", "hashprice $/PH/day"],
        [
            [
                "before",
                si(b["difficulty"], digits=4),
                f"{b['network_hashrate_eh_s']:.1f}",
                _usd(b["hashprice_usd_per_ph_day"]),
            ],
            [
                "after",
                si(a["difficulty"], digits=4),
                f"{a['network_hashrate_eh_s']:.1f}",
                _usd(a["hashprice_usd_per_ph_day"]),
            ],
            *(
                [
                    [
                        "Feb 2026 (reference)",
                        si(e["reference_after"]["difficulty"], digits=4),
                        f"{e['reference_after']['network_hashrate_eh_s']:.1f}",
                        _usd(e["reference_after"]["hashprice_usd_per_ph_day"]),
                    ]
                ]
                if "reference_after" in e
                else []
            ),
        ],
    )
    rows = [
        [
            escape(c["name"]),
            f"{c['efficiency_j_per_th']:g} J/TH, ${c['power_price_usd_per_kwh']:g}/kWh",
            f"{_usd(c['revenue_usd_per_machine_day_before'])} -> "
            f"{_usd(c['revenue_usd_per_machine_day_after'])}",
            _usd(c["power_cost_usd_per_machine_day"]),
            f"{_usd(c['profit_usd_per_machine_day_before'])} -> "
            f"{_usd(c['profit_usd_per_machine_day_after'])}",
            f"{c['verdict_before']} -> {c['verdict_after']}",
            escape(", ".join(c["miners"]) or "-"),
            f"{c['credited_sat']:,.0f} ({c['credit_share'] * 100:.1f} %)",
        ]
        for c in e["classes"]
    ]
    inputs = e["inputs"]
    return (
        "<h2>Economics</h2>"
        f'<p class="muted">${inputs["price_usd_per_btc"]:,.0f} per BTC, subsidy '
        f"{inputs['subsidy_btc_per_block']:g} BTC + fees {inputs['fees_btc_per_block']:g} BTC "
        f"per block. Difficulty {_pct(e['difficulty_change'])}, hashprice "
        f"{_pct(e['hashprice_change'])}.</p>"
        + head
        + _table(
            [
                "class",
                "machine",
                "revenue $/machine/day",
                "power $/day",
                "profit $/machine/day",
                "verdict",
                "scenario miners",
                "their PPS sat",
            ],
            rows,
            left=2,
        )
    )


def render_html(report: Mapping[str, Any]) -> str:
    """The page for ``report`` (the output of ``build_report``)."""
    scenario = report["scenario"]
    summary = report["summary"]
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(report["started_at"]))
    status = (
        '<span class="good">completed</span>'
        if summary["completed"]
        else f'<span class="bad">not completed: {escape(summary["end_reason"])}</span>'
    )
    actions = _table(
        ["t (s)", "action", "miners", "trigger", "blocks", "retargets"],
        [
            [
                f"{a['t']:.1f}",
                escape(a["action"]),
                escape(", ".join(a["miners"])),
                escape(a["trigger"]),
                str(a["blocks"]),
                str(a["retargets"]),
            ]
            for a in report["actions"]
        ],
    )
    title = f"Scenario {scenario['name']}{' (quick)' if scenario['quick'] else ''}"
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{escape(title)}</title>",
            f"<style>{CSS}</style></head><body>",
            f"<h1>{escape(title)}</h1>",
            f'<p class="muted">{escape(scenario["description"])}</p>',
            f"<p>Started {started}, ran {summary['duration_seconds']:.1f} s: {status}.</p>",
            "<h2>Key figures</h2>",
            _keys(report),
            "<h2>Plots</h2>",
            _plots(report),
            "<h2>Difficulty changes</h2>",
            _retarget_table(report),
            "<h2>Miners</h2>",
            _miner_table(report),
            "<h2>Timeline</h2>",
            actions,
            schemes_html(report.get("schemes"), float(summary["duration_seconds"])),
            _economics(report),
            "</body></html>",
        ]
    )
