"""The "Payout schemes compared" part of ``report.html`` (PURE): the earnings table, the pool's
side, the probability-of-ruin table and three inline SVG plots."""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

from pool.scenarios.html_parts import figure as _figure
from pool.scenarios.html_parts import table
from pool.scenarios.schemes_compare import SCHEMES
from pool.scenarios.schemes_report import LABELS
from pool.scenarios.svg import PALETTE, Bar, Line, bar_chart, chart

SCHEME_PLOTS = ("scheme-earnings", "scheme-pool", "pps-ruin")
COLORS = {"pps": PALETTE[0], "fpps": PALETTE[5], "pplns": PALETTE[3], "solo": PALETTE[4]}


def _btc(x: float) -> str:
    return f"{x:,.4f}"


def _table(headers: list[str], rows: list[list[str]], left: int = 1) -> str:
    return table(headers, rows, left, css_class="schemes")


def _cell(entry: Mapping[str, Any], spread: bool) -> str:
    text = _btc(entry["btc"])
    if spread and entry["spread_btc"]:
        text += f' <span class="muted">&plusmn; {_btc(entry["spread_btc"])}</span>'
    return text


def _earnings_table(section: Mapping[str, Any]) -> str:
    rows = []
    for m in section["miners"]:
        rows.append(
            [
                escape(m["miner"]),
                f"{m['work_share'] * 100:.1f}%",
                f"{m['blocks_found']} ({m['expected_blocks']:.1f})",
                *(_cell(m[s], spread=True) for s in SCHEMES),
            ]
        )
    pool = section["pool"]
    rows.append(
        [
            "<b>pool</b>",
            "",
            "",
            *(
                _btc(pool[s]["result"]["btc"])
                + (
                    f' <span class="muted">&plusmn; {_btc(pool[s]["spread_btc"])}</span>'
                    if pool[s]["spread_btc"]
                    else ""
                )
                for s in SCHEMES
            ),
        ]
    )
    return _table(
        [
            "miner",
            "work",
            "blocks (expected)",
            *(f"{LABELS[s]} BTC" for s in SCHEMES),
        ],
        rows,
    )


def _ruin_table(ruin: Mapping[str, Any]) -> str:
    rows = []
    for j, reserve in enumerate(ruin["reserves"]):
        cells = [f"{reserve['blocks']:g} ({_btc(reserve['btc'])} BTC)"]
        for i in range(len(ruin["horizons"])):
            p = ruin["probability"][i][j]
            se = ruin["standard_error"][i][j]
            cells.append(f"{p * 100:.1f} %" + (f" &plusmn; {se * 100:.1f}" if se else ""))
        rows.append(cells)
    return _table(["starting reserve: blocks (BTC)", *(h["label"] for h in ruin["horizons"])], rows)


def _plots(section: Mapping[str, Any], duration: float) -> str:
    miners = section["miners"]
    earnings = bar_chart(
        "scheme-earnings",
        "Each miner's earnings under each scheme (whiskers: +- one spread)",
        [m["miner"] for m in miners],
        [
            (
                LABELS[s],
                COLORS[s],
                [Bar(m[s]["btc"], m[s]["spread_btc"]) for m in miners],
            )
            for s in SCHEMES
        ],
        y_label="BTC",
        y_format=lambda v: f"{v:.4g}",
    )
    paths = section["pool_path_btc"]
    pool = chart(
        "scheme-pool",
        "The pool's result over the run (earned rewards it owns - credits)",
        [
            Line(LABELS["pps"], paths["pps"], COLORS["pps"], width=2.6),
            Line(LABELS["fpps"], paths["fpps"], COLORS["fpps"], dashed=True, width=1.4),
            *(Line(LABELS[s], paths[s], COLORS[s], step=True) for s in ("pplns", "solo")),
            Line("zero", [[0, 0], [duration, 0]], "#aaa", dashed=True, width=1),
        ],
        y_label="BTC",
        y_format=lambda v: f"{v:.4g}",
        x_max=duration,
        y_from_zero=False,
    )
    parts = [
        _figure(
            "scheme-earnings",
            earnings,
            "Same shares, same blocks. PPS/FPPS pay the work; PPLNS and SOLO pay the blocks "
            "and carry their luck (the whiskers).",
        ),
        _figure(
            "scheme-pool",
            pool,
            "Under PPS the pool pays every share at once and gains every block: its low point "
            "is the reserve this run needed. Under PPLNS and SOLO it only keeps the fee.",
        ),
    ]
    ruin = section.get("ruin")
    lines = []
    if ruin:
        xs = [r["blocks"] for r in ruin["reserves"]]
        lines = [
            Line(h["label"], [[x, p] for x, p in zip(xs, row, strict=True)], PALETTE[i + 1])
            for i, (h, row) in enumerate(zip(ruin["horizons"], ruin["probability"], strict=True))
        ]
    plot = chart(
        "pps-ruin",
        "PPS: probability of ruin by starting reserve",
        lines,
        x_label="starting reserve (mean block rewards)",
        y_label="probability",
        y_format=lambda v: f"{v:.2g}",
    )
    parts.append(
        _figure(
            "pps-ruin",
            plot,
            "Each line is a horizon; a reserve of 0 is ruined at once, a larger one less "
            "often, a longer horizon more often.",
        )
    )
    return "\n".join(parts)


def schemes_html(section: Mapping[str, Any] | None, duration: float) -> str:
    """The part for ``report["schemes"]`` ("" when the report has none)."""
    if not section:
        return ""
    if "error" in section:
        return (
            "<h2>Payout schemes compared</h2>"
            f'<p class="bad">Not computed: {escape(str(section["error"]))}</p>'
        )
    settings = section["settings"]
    totals = section["totals"]
    reserve = section["pps_reserve"]
    intro = (
        f'<p class="muted">The run\'s {totals["shares"]} shares and {totals["blocks_earned"]} '
        f"earned blocks ({totals['blocks_submitted']} submitted: "
        f"{escape(', '.join(f'{n} {s}' for s, n in totals['blocks_by_status'].items()))}; "
        f"{totals['expected_blocks']:.1f} expected) paid out under each scheme, with the "
        f"run's fee of {settings['fee_bps'] / 100:g} % for all of them; PPLNS window "
        f"{settings['pplns_window_blocks']:g} x the network difficulty. Spread: the standard "
        f"deviation over {settings['resamples']} resampled runs of the same shares (seed "
        f"{settings['seed']}).</p>"
    )
    fees = section.get("fee_traffic") or {}
    if all(m["fpps"]["units"] == m["pps"]["units"] for m in section["miners"]):
        intro += (
            '<p class="muted">FPPS equals PPS here: the templates of the run carried no '
            "transaction fees (a regtest chain without transactions; a scenario's "
            "<code>[run] fee_share</code> adds them).</p>"
        )
    elif fees.get("transactions"):
        intro += (
            f'<p class="muted">Transaction fees: one wallet transaction per block paying '
            f"{fees['fee_share'] * 100:g} % of the subsidy ({fees['transactions']} sent, "
            f"<code>[run] fee_share</code>); FPPS pays them from the templates, PPS does "
            "not.</p>"
        )
    ruin = section.get("ruin")
    ruin_text = ""
    if ruin:
        horizon = ruin["horizons"]
        ruin_text = (
            "<h3>PPS reserve and probability of ruin</h3>"
            f"<p>This run's PPS result: {_btc(reserve['result']['btc'])} BTC (the ledger's "
            f"reserve, fees taken out: {_btc(reserve['ledger_reserve']['btc'])} BTC); its low "
            f"point {_btc(reserve['low']['btc'])} BTC, so a starting reserve of "
            f"{_btc(reserve['needed']['btc'])} BTC would have kept it above 0.</p>"
            f'<p class="muted">Monte Carlo: {ruin["paths"]} paths, seed {ruin["seed"]}; blocks '
            f"arrive as a Poisson process at the run's rate (one per "
            f"{ruin['seconds_per_expected_block'] or 0:.3g} s of this run), the pool credits "
            f"{ruin['payout_ratio']:.4f} of each expected block's reward (mean "
            f"{_btc(ruin['mean_block_reward']['btc'])} BTC) continuously; ruin = the reserve "
            f"goes below 0 at any time up to the horizon ({len(horizon)} horizons, in expected "
            "blocks). &plusmn; one standard error.</p>" + _ruin_table(ruin)
        )
    return "\n".join(
        [
            "<h2>Payout schemes compared</h2>",
            intro,
            _earnings_table(section),
            _plots(section, duration),
            ruin_text,
        ]
    )
