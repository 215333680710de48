"""HTML pieces both report sections use (pure: strings in, markup out)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1, css_class: str = ""
) -> str:
    """A table: headers escaped here; cells are markup already (escaped by the caller); the
    first ``left`` columns left-aligned."""
    head = "".join(
        f'<th class="{"l" if i < left else ""}">{escape(h)}</th>' for i, h in enumerate(headers)
    )
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    attr = f' class="{escape(css_class)}"' if css_class else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure(plot_id: str, svg: str, caption: str) -> str:
    return (
        f'<figure class="plot-figure" id="plot-{plot_id}">{svg}'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )
