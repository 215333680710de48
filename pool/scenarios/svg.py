"""Inline SVG line charts for the HTML report. PURE: data in, markup out; no scripts, no CDN.

A chart has lines (optionally drawn as steps), vertical markers (timeline actions, retargets),
"nice" axis ticks and a legend. Every number is formatted by the caller's ``y_format``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#17becf",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
)

WIDTH, HEIGHT = 820, 300
LEFT, RIGHT, TOP, BOTTOM = 78, 16, 34, 44


@dataclass(frozen=True)
class Line:
    label: str
    points: Sequence[Sequence[float]]  # [[x, y], ...] sorted by x
    color: str
    step: bool = False
    dashed: bool = False
    width: float = 1.8


@dataclass(frozen=True)
class Marker:
    x: float
    label: str
    color: str = "#555"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [lo, hi] (steps of 1, 2 or 5 x 10^k)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    ticks = []
    value = first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < hi:
        ticks.append(round(value, 12))
    return ticks


def si(value: float, unit: str = "", digits: int = 3) -> str:
    """1234567 -> '1.23 M' (+ unit); small numbers keep ``digits`` significant digits."""
    if value == 0:
        return f"0 {unit}".strip()
    prefixes = ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))
    for scale, prefix in prefixes:
        if abs(value) >= scale:
            return f"{value / scale:.{digits}g} {prefix}{unit}".strip()
    return f"{value:.{digits}g} {unit}".strip()


def _fmt_x(x: float) -> str:
    return f"{x:g}"


def _path(
    points: Sequence[Sequence[float]],
    sx: Callable[[float], float],
    sy: Callable[[float], float],
    step: bool,
) -> str:
    coords: list[str] = []
    prev_y: float | None = None
    for x, y in points:
        px, py = sx(x), sy(y)
        if step and prev_y is not None:
            coords.append(f"{px:.1f},{prev_y:.1f}")
        coords.append(f"{px:.1f},{py:.1f}")
        prev_y = py
    return " ".join(coords)


def _frame(
    plot_id: str,
    title: str,
    yticks: Sequence[float],
    sy: Callable[[float], float],
    y_format: Callable[[float], str],
) -> list[str]:
    """The opening of a plot: ``<svg>``, its title, the plot area and the y grid with labels."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    out = [
        f'<svg class="plot" data-plot="{escape(plot_id)}" id="svg-{escape(plot_id)}" '
        f'xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fff" '
        'stroke="#ccc"/>',
    ]
    for t in yticks:
        y = sy(t)
        out.append(
            f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">'
            f"{escape(y_format(t))}</text>"
        )
    return out


def chart(
    plot_id: str,
    title: str,
    lines: Sequence[Line],
    *,
    x_label: str = "seconds since the start",
    y_label: str = "",
    y_format: Callable[[float], str] = si,
    markers: Sequence[Marker] = (),
    x_max: float | None = None,
    y_from_zero: bool = True,
) -> str:
    """One ``<svg>`` (class ``plot``, ``data-plot=plot_id``) with a polyline per non-empty line."""
    xs = [float(p[0]) for line in lines for p in line.points]
    ys = [float(p[1]) for line in lines for p in line.points]
    x_hi = max([*xs, x_max or 0.0, 1.0])
    x_lo = min([*xs, 0.0])
    y_lo = min(ys) if ys else 0.0
    y_hi = max(ys) if ys else 1.0
    if y_from_zero:
        y_lo = min(y_lo, 0.0)
    if y_hi == y_lo:
        pad = abs(y_hi) * 0.1 or 1.0
        y_lo, y_hi = y_lo - pad, y_hi + pad
    else:
        pad = (y_hi - y_lo) * 0.05
        y_hi += pad
        if not (y_from_zero and y_lo == 0):
            y_lo -= pad
    yticks = nice_ticks(y_lo, y_hi)
    y_lo, y_hi = min(yticks[0], y_lo), max(yticks[-1], y_hi)
    xticks = [t for t in nice_ticks(x_lo, x_hi, 8) if x_lo <= t <= x_hi]
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + (x - x_lo) / (x_hi - x_lo) * plot_w

    def sy(y: float) -> float:
        return TOP + plot_h - (y - y_lo) / (y_hi - y_lo) * plot_h

    out = _frame(plot_id, title, yticks, sy, y_format)
    for t in xticks:
        x = sx(t)
        out.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{TOP + plot_h}" stroke="#f3f3f3"/>'
            f'<text x="{x:.1f}" y="{TOP + plot_h + 16}" text-anchor="middle" class="tick">'
            f"{escape(_fmt_x(t))}</text>"
        )
    for m in markers:
        if not x_lo <= m.x <= x_hi:
            continue
        x = sx(m.x)
        out.append(
            f'<line class="marker" x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{TOP + plot_h}" '
            f'stroke="{m.color}" stroke-dasharray="4 3"><title>{escape(m.label)}</title></line>'
        )
    for line in lines:
        if not line.points:
            continue
        dash = ' stroke-dasharray="6 4"' if line.dashed else ""
        out.append(
            f'<polyline class="series" data-label="{escape(line.label)}" fill="none" '
            f'stroke="{line.color}" stroke-width="{line.width}"{dash} '
            f'points="{_path(line.points, sx, sy, line.step)}"/>'
        )
    if not any(line.points for line in lines):
        out.append(
            f'<text x="{LEFT + plot_w / 2}" y="{TOP + plot_h / 2}" text-anchor="middle" '
            'class="empty">no data</text>'
        )
    legend_x = LEFT
    for line in lines:
        out.append(
            f'<rect x="{legend_x}" y="10" width="12" height="12" fill="{line.color}"/>'
            f'<text x="{legend_x + 16}" y="20" class="legend">{escape(line.label)}</text>'
        )
        legend_x += 24 + 7 * len(line.label)
    out.append(
        f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 6}" text-anchor="middle" class="axis">'
        f"{escape(x_label)}</text>"
        f'<text x="14" y="{TOP + plot_h / 2}" text-anchor="middle" class="axis" '
        f'transform="rotate(-90 14 {TOP + plot_h / 2})">{escape(y_label)}</text>'
    )
    out.append("</svg>")
    return "\n".join(out)


@dataclass(frozen=True)
class Bar:
    value: float
    error: float = 0.0  # drawn as a whisker of +- error (0: none)


def bar_chart(
    plot_id: str,
    title: str,
    groups: Sequence[str],
    series: Sequence[tuple[str, str, Sequence[Bar]]],
    *,
    y_label: str = "",
    y_format: Callable[[float], str] = si,
) -> str:
    """One ``<svg>`` (class ``plot``) of grouped bars: a group per entry of ``groups`` (x),
    in each a bar per ``series`` entry ``(label, color, bars)`` (``bars[i]`` for group i), with
    an optional whisker of +- ``error``."""
    values = [b.value + s * b.error for _, _, bars in series for b in bars for s in (-1, 1)]
    y_lo = min([*values, 0.0])
    y_hi = max([*values, 0.0])
    if y_hi == y_lo:
        y_hi = y_lo + 1.0
    yticks = nice_ticks(y_lo, y_hi + (y_hi - y_lo) * 0.05)
    y_lo, y_hi = min(yticks[0], y_lo), max(yticks[-1], y_hi)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sy(y: float) -> float:
        return TOP + plot_h - (y - y_lo) / (y_hi - y_lo) * plot_h

    out = _frame(plot_id, title, yticks, sy, y_format)
    group_w = plot_w / max(len(groups), 1)
    bar_w = group_w * 0.8 / max(len(series), 1)
    zero = sy(0.0)
    for g, name in enumerate(groups):
        x0 = LEFT + g * group_w + group_w * 0.1
        for k, (label, color, bars) in enumerate(series):
            if g >= len(bars):
                continue
            bar = bars[g]
            x = x0 + k * bar_w
            top, bottom = sorted((sy(bar.value), zero))
            out.append(
                f'<rect class="bar" data-label="{escape(label)}" data-group="{escape(name)}" '
                f'x="{x + 1:.1f}" y="{top:.1f}" width="{max(bar_w - 2, 1):.1f}" '
                f'height="{max(bottom - top, 0.5):.1f}" fill="{color}">'
                f"<title>{escape(f'{name} {label}: {y_format(bar.value)}')}"
                + (f" +- {escape(y_format(bar.error))}" if bar.error else "")
                + "</title></rect>"
            )
            if bar.error:
                mid = x + bar_w / 2
                lo, hi = sy(bar.value - bar.error), sy(bar.value + bar.error)
                out.append(
                    f'<path class="whisker" d="M{mid:.1f},{lo:.1f}V{hi:.1f}'
                    f'M{mid - 3:.1f},{lo:.1f}h6M{mid - 3:.1f},{hi:.1f}h6" stroke="#222" '
                    'stroke-width="1.2" fill="none"/>'
                )
        out.append(
            f'<text x="{LEFT + (g + 0.5) * group_w:.1f}" y="{TOP + plot_h + 16}" '
            f'text-anchor="middle" class="tick">{escape(name)}</text>'
        )
    if not groups or not series:
        out.append(
            f'<text x="{LEFT + plot_w / 2}" y="{TOP + plot_h / 2}" text-anchor="middle" '
            'class="empty">no data</text>'
        )
    legend_x = LEFT
    for label, color, _ in series:
        out.append(
            f'<rect x="{legend_x}" y="10" width="12" height="12" fill="{color}"/>'
            f'<text x="{legend_x + 16}" y="20" class="legend">{escape(label)}</text>'
        )
        legend_x += 24 + 7 * len(label)
    out.append(
        f'<text x="14" y="{TOP + plot_h / 2}" text-anchor="middle" class="axis" '
        f'transform="rotate(-90 14 {TOP + plot_h / 2})">{escape(y_label)}</text>'
    )
    out.append("</svg>")
    return "\n".join(out)
