"""The Prometheus text renderer (pure), checked with a strict parser of format 0.0.4, and the
API's pure helpers (amounts, per-minute hashrate points).

``parse_exposition`` is also used by the integration test of ``/metrics``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pool.api.metrics import (
    CONTENT_TYPE,
    Metric,
    MetricError,
    Sample,
    counter,
    escape_label_value,
    format_value,
    gauge,
    render,
    sample,
)
from pool.api.views import minute_points, money, sat_to_btc, units_to_sat

# -- a strict parser of the text exposition format 0.0.4 ----------------------------------------

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
VALUE = re.compile(r"^(?:[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|NaN|[+-]Inf)$")
SAMPLE_LINE = re.compile(rf"^({NAME})(?:\{{(.*)\}})? (\S+)(?: (-?\d+))?$")
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}
SUFFIXES = {"summary": ("_sum", "_count"), "histogram": ("_sum", "_count", "_bucket")}


class ParseError(ValueError):
    pass


@dataclass
class Family:
    name: str
    type: str = "untyped"
    help: str | None = None
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def value(self, **labels: str) -> float:
        found = [v for _, lab, v in self.samples if lab == labels]
        if len(found) != 1:
            raise KeyError(f"{self.name}{labels}: {len(found)} samples")
        return found[0]


def _unescape(text: str, allowed: str, line_no: int) -> str:
    out = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            if i + 1 >= len(text) or text[i + 1] not in allowed:
                raise ParseError(f"line {line_no}: bad escape in {text!r}")
            out.append({"\\": "\\", "n": "\n", '"': '"'}[text[i + 1]])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _labels(raw: str, line_no: int) -> dict[str, str]:
    labels: dict[str, str] = {}
    i = 0
    while i < len(raw):
        m = re.compile(rf"({LABEL})=\"").match(raw, i)
        if not m:
            raise ParseError(f"line {line_no}: bad label at {raw[i:]!r}")
        name = m.group(1)
        if name.startswith("__"):
            raise ParseError(f"line {line_no}: reserved label name {name}")
        if name in labels:
            raise ParseError(f"line {line_no}: label {name} twice")
        j = m.end()
        value = []
        while True:
            if j >= len(raw):
                raise ParseError(f"line {line_no}: unterminated label value")
            if raw[j] == "\\":
                value.append(raw[j : j + 2])
                j += 2
            elif raw[j] == '"':
                break
            elif raw[j] == "\n":
                raise ParseError(f"line {line_no}: raw line feed in a label value")
            else:
                value.append(raw[j])
                j += 1
        labels[name] = _unescape("".join(value), '\\n"', line_no)
        j += 1
        if j < len(raw):
            if raw[j] != ",":
                raise ParseError(f"line {line_no}: expected ',' at {raw[j:]!r}")
            j += 1
        i = j
    return labels


def _family_of(name: str, families: dict[str, Family]) -> Family:
    if name in families:
        return families[name]
    for fam in families.values():
        if any(name == fam.name + s for s in SUFFIXES.get(fam.type, ())):
            return fam
    raise ParseError(f"sample {name} has no # TYPE line before it")


def parse_exposition(text: str) -> dict[str, Family]:
    """Families by name. Strict: TYPE before samples, one HELP/TYPE per name, families
    contiguous, no duplicate series, valid names, escapes and values, a final line feed."""
    if text and not text.endswith("\n"):
        raise ParseError("the text must end with a line feed")
    families: dict[str, Family] = {}
    done: set[str] = set()
    current: str | None = None
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for no, line in enumerate(text.split("\n")[:-1], 1):
        if not line:
            continue
        if line.startswith("#"):
            m = re.match(rf"^# (HELP|TYPE) ({NAME})(?: (.*))?$", line)
            if not m:
                continue  # a plain comment
            kind, name, rest = m.group(1), m.group(2), m.group(3) or ""
            if name in done:
                raise ParseError(f"line {no}: {name} appears again after another family")
            fam = families.setdefault(name, Family(name))
            if current is not None and current != name:
                done.add(current)
            current = name
            if kind == "HELP":
                if fam.help is not None:
                    raise ParseError(f"line {no}: second HELP for {name}")
                fam.help = _unescape(rest, "\\n", no)
            else:
                if rest not in TYPES:
                    raise ParseError(f"line {no}: unknown type {rest!r}")
                if fam.samples or fam.type != "untyped":
                    raise ParseError(f"line {no}: TYPE for {name} after its samples or twice")
                fam.type = rest
            continue
        m = SAMPLE_LINE.match(line)
        if not m:
            raise ParseError(f"line {no}: not a sample: {line!r}")
        name, raw_labels, raw_value = m.group(1), m.group(2), m.group(3)
        fam = _family_of(name, families)
        if fam.name in done:
            raise ParseError(f"line {no}: samples of {fam.name} are not contiguous")
        if current is not None and current != fam.name:
            done.add(current)
        current = fam.name
        labels = _labels(raw_labels, no) if raw_labels else {}
        if not VALUE.match(raw_value):
            raise ParseError(f"line {no}: bad value {raw_value!r}")
        key = (name, tuple(sorted(labels.items())))
        if key in seen:
            raise ParseError(f"line {no}: duplicate series {key}")
        seen.add(key)
        fam.samples.append((name, labels, float(raw_value)))
    return families


# -- the renderer -------------------------------------------------------------------------------


def test_counter_and_gauge_render_exactly() -> None:
    text = render(
        [
            counter(
                "pool_shares_total",
                "Shares by result.",
                [sample(3, {"result": "accepted"}), sample(1, {"result": "rejected"})],
            ),
            gauge("pool_hashrate", "Hashes per second.", 1234.5),
        ]
    )
    assert text == (
        "# HELP pool_shares_total Shares by result.\n"
        "# TYPE pool_shares_total counter\n"
        'pool_shares_total{result="accepted"} 3\n'
        'pool_shares_total{result="rejected"} 1\n'
        "# HELP pool_hashrate Hashes per second.\n"
        "# TYPE pool_hashrate gauge\n"
        "pool_hashrate 1234.5\n"
    )
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_label_values_and_help_are_escaped() -> None:
    nasty = 'a\\b"c\nd'
    text = render([gauge("g", 'help with \\ and\nnewline and "quotes"', [sample(1, {"w": nasty})])])
    assert 'g{w="a\\\\b\\"c\\nd"} 1\n' in text
    assert '# HELP g help with \\\\ and\\nnewline and "quotes"\n' in text
    families = parse_exposition(text)
    assert families["g"].samples == [("g", {"w": nasty}, 1.0)]
    assert families["g"].help == 'help with \\ and\nnewline and "quotes"'
    assert escape_label_value("plain") == "plain"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (42, "42"),
        (True, "1"),
        (0.5, "0.5"),
        (1e-05, "1e-05"),
        (1.5e20, "1.5e+20"),
        (float("nan"), "NaN"),
        (float("inf"), "+Inf"),
        (float("-inf"), "-Inf"),
    ],
)
def test_values(value: float, text: str) -> None:
    assert format_value(value) == text
    assert VALUE.match(text)


def test_counters_must_end_in_total_and_not_go_negative() -> None:
    with pytest.raises(MetricError, match="must end in _total"):
        render([counter("pool_shares", "x", 1)])
    with pytest.raises(MetricError, match="has the value"):
        render([counter("pool_shares_total", "x", -1)])
    with pytest.raises(MetricError, match="has the value"):
        render([counter("pool_shares_total", "x", float("nan"))])
    # a gauge may be anything
    assert "g NaN\n" in render([gauge("g", "x", float("nan"))])


@pytest.mark.parametrize(
    "metric",
    [
        gauge("1bad", "x", 1),
        gauge("bad-name", "x", 1),
        gauge("g", "x", [sample(1, {"bad-label": "v"})]),
        gauge("g", "x", [sample(1, {"__reserved": "v"})]),
        gauge("g", "x", [Sample(1, (("a", "1"), ("a", "2")))]),
        gauge("g", "x", [sample(1, {"a": "1"}), sample(2, {"a": "1"})]),
        Metric("g", "histogram", "x", (Sample(1),)),  # type: ignore[arg-type]
    ],
)
def test_invalid_metrics_are_refused(metric: Metric) -> None:
    with pytest.raises(MetricError):
        render([metric])


def test_a_name_in_two_families_is_refused() -> None:
    with pytest.raises(MetricError, match="two families"):
        render([gauge("g", "x", 1), gauge("g", "y", 2)])


def test_label_order_does_not_make_a_new_series() -> None:
    with pytest.raises(MetricError, match="two samples"):
        render(
            [gauge("g", "x", [sample(1, {"a": "1", "b": "2"}), sample(2, {"b": "2", "a": "1"})])]
        )


def test_empty_scrape_and_family_without_samples() -> None:
    assert render([]) == ""
    text = render([gauge("g", "nothing yet", [])])
    assert text == "# HELP g nothing yet\n# TYPE g gauge\n"
    assert parse_exposition(text)["g"].samples == []


@given(
    st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True),
        st.text(max_size=30),
        max_size=4,
    ),
    st.floats(allow_nan=False),
)
def test_round_trip_through_the_strict_parser(labels: dict[str, str], value: float) -> None:
    text = render([gauge("pool_g", "help", [sample(value, labels)])])
    [(_, parsed, parsed_value)] = parse_exposition(text)["pool_g"].samples
    assert parsed == labels
    assert parsed_value == value or (math.isinf(value) and parsed_value == value)


# -- the parser is strict (so a passing /metrics test means something) --------------------------


@pytest.mark.parametrize(
    "text",
    [
        "g 1",  # no final line feed
        "g 1\n",  # no TYPE
        "# TYPE g gauge\ng one\n",  # bad value
        '# TYPE g gauge\ng{a="\\x"} 1\n',  # bad escape
        '# TYPE g gauge\ng{a="1",a="2"} 1\n',  # label twice
        '# TYPE g gauge\ng{a="1"} 1\ng{a="1"} 2\n',  # duplicate series
        "# TYPE g gauge\n# TYPE g counter\ng 1\n",  # TYPE twice
        "# TYPE g gauge\n# TYPE h gauge\ng 1\n# TYPE g2 gauge\nh 1\ng 2\n",  # not contiguous
        "# TYPE g wrong\ng 1\n",  # unknown type
        '# TYPE g gauge\ng{__name="x"} 1\n',  # reserved label
    ],
)
def test_parser_rejects(text: str) -> None:
    with pytest.raises(ParseError):
        parse_exposition(text)


# -- the API's pure helpers (pool/api/views.py) --------------------------------------------------


def test_amounts() -> None:
    assert sat_to_btc(1) == "0.00000001"
    assert sat_to_btc(-150_000_000) == "-1.50000000"
    assert units_to_sat(1_999_999) == 1 and units_to_sat(-1_999_999) == -1  # towards zero
    assert money("balance", 123_456_789) == {
        "balance_units": 123_456_789,
        "balance_sat": 123,
        "balance_btc": "0.00000123456789",
    }


def test_minute_points() -> None:
    m = 29_000_000  # a minute number
    rows = [
        {"minute": m - 3, "shares": 2, "difficulty_sum": 0.5},  # an earlier run: a whole minute
        {"minute": m, "shares": 3, "difficulty_sum": 1.0},  # this run's first minute, from :45
        {"minute": m, "shares": 1, "difficulty_sum": 0.5},  # (a second worker)
        {"minute": m + 2, "shares": 4, "difficulty_sum": 2.0},  # the current minute, 30 s in
    ]
    started, now = m * 60 + 45.0, (m + 2) * 60 + 30.0
    points = minute_points(rows, now, started)
    assert [(p["time"] // 60, p["shares"], p["seconds"], p["partial"]) for p in points] == [
        (m - 3, 2, 60, False),
        (m - 2, 0, 60, False),  # zero-filled: no shares that minute
        (m - 1, 0, 60, False),
        (m, 4, 15.0, True),
        (m + 1, 0, 60, False),
        (m + 2, 4, 30.0, True),
    ]
    assert points[3]["hashrate"] == 1.5 * 2**32 / 15
    assert points[5]["hashrate"] == 2.0 * 2**32 / 30
    # a minute seen for under 5 s has no rate (too noisy), but its shares are kept...
    early = minute_points(rows, (m + 2) * 60 + 3.0, started)
    assert (early[-1]["time"] // 60, early[-1]["shares"], early[-1]["hashrate"]) == (m + 2, 4, None)
    assert sum(p["shares"] for p in early) == sum(r["shares"] for r in rows)
    # ...and such a minute without shares is left out
    quiet = [r for r in rows if r["minute"] != m + 2]
    assert [p["time"] // 60 for p in minute_points(quiet, (m + 2) * 60 + 3.0, started)][-1] == m + 1
    # the run's first minute seen for 2 s, with shares: kept, no rate
    first = minute_points(rows, now, m * 60 + 58.0)
    assert [(p["shares"], p["seconds"], p["hashrate"]) for p in first if p["time"] // 60 == m] == [
        (4, 2.0, None)
    ]
    assert minute_points([], now, started) == []


# -- which workers get series of their own (pool/api/collect.py) ----------------------------------


def test_worker_ranking_takes_the_most_recent_work_and_holds_between_rankings() -> None:
    from pool.api.collect import WorkerRanking
    from pool.stats import PoolStats

    stats = PoolStats()
    for i in range(10):
        stats.worker(f"w{i}", "a").accepted_work = 100.0 + i  # w9 did the most so far
    ranking = WorkerRanking(top=3, every=10.0)
    assert ranking.select(stats, 0.0) == ["w7", "w8", "w9"]
    # since then only w0 and w1 worked: they lead the next ranking, not the all-time best
    stats.workers["w0"].accepted_work += 50.0
    stats.workers["w1"].accepted_work += 40.0
    stats.workers["w5"].accepted_work += 1.0
    stats.worker("new", "a").accepted_work = 45.0
    assert ranking.select(stats, 5.0) == ["w7", "w8", "w9"]  # held until `every` has passed
    assert ranking.select(stats, 10.0) == ["new", "w0", "w1"]
    assert len(WorkerRanking(top=100).select(stats, 0.0)) == 11  # fewer workers than the top
