"""Prometheus text exposition format 0.0.4, written by hand (pure: no I/O, no clock).

A scrape is a list of ``Metric`` families, each with a HELP and a TYPE line followed by its
samples. What the format requires, and what ``render`` checks or does:

* metric names match ``[a-zA-Z_:][a-zA-Z0-9_:]*``; label names ``[a-zA-Z_][a-zA-Z0-9_]*`` and
  never start with ``__`` (reserved); a name appears in one family only;
* a counter's name ends in ``_total`` (the convention Prometheus and its linter expect) and its
  values are never negative;
* label values escape backslash, double quote and line feed (``\\\\``, ``\\"``, ``\\n``);
  HELP text escapes backslash and line feed;
* values: integers as written, floats as Python's shortest round-trip form, and ``NaN``,
  ``+Inf``, ``-Inf``;
* no two samples of a family carry the same label set;
* the text ends with a line feed.

Only counters and gauges are used by the pool: latency is exported as a seconds counter next to
a calls counter (average latency = rate(seconds) / rate(calls)).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

MetricKind = Literal["counter", "gauge"]
KINDS: frozenset[str] = frozenset({"counter", "gauge"})

METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class MetricError(ValueError):
    """A metric that cannot be written in the exposition format; the message names it."""


@dataclass(frozen=True)
class Sample:
    value: float
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Metric:
    name: str
    kind: MetricKind
    help: str
    samples: tuple[Sample, ...] = field(default_factory=tuple)


def sample(value: float, labels: Mapping[str, str] | None = None) -> Sample:
    """A sample; labels keep the mapping's order."""
    return Sample(value, tuple((k, str(v)) for k, v in (labels or {}).items()))


def counter(name: str, help: str, samples: Iterable[Sample] | float) -> Metric:
    return Metric(name, "counter", help, _samples(samples))


def gauge(name: str, help: str, samples: Iterable[Sample] | float) -> Metric:
    return Metric(name, "gauge", help, _samples(samples))


def _samples(samples: Iterable[Sample] | float) -> tuple[Sample, ...]:
    if isinstance(samples, int | float):
        return (Sample(samples),)
    return tuple(samples)


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _check(metric: Metric) -> None:
    if not METRIC_NAME.match(metric.name):
        raise MetricError(f"invalid metric name {metric.name!r}")
    if metric.kind not in KINDS:
        raise MetricError(f"{metric.name}: unknown metric type {metric.kind!r}")
    if metric.kind == "counter" and not metric.name.endswith("_total"):
        raise MetricError(f"counter {metric.name} must end in _total")
    seen: set[tuple[tuple[str, str], ...]] = set()
    for s in metric.samples:
        names = [k for k, _ in s.labels]
        if len(set(names)) != len(names):
            raise MetricError(f"{metric.name}: a label appears twice in {s.labels!r}")
        for name in names:
            if not LABEL_NAME.match(name) or name.startswith("__"):
                raise MetricError(f"{metric.name}: invalid label name {name!r}")
        key = tuple(sorted(s.labels))
        if key in seen:
            raise MetricError(f"{metric.name}: two samples with labels {dict(key)!r}")
        seen.add(key)
        if metric.kind == "counter" and not s.value >= 0:  # also refuses NaN
            raise MetricError(f"counter {metric.name} has the value {s.value!r}")


def render_sample(name: str, s: Sample) -> str:
    if s.labels:
        labels = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in s.labels)
        return f"{name}{{{labels}}} {format_value(s.value)}"
    return f"{name} {format_value(s.value)}"


def render(metrics: Iterable[Metric]) -> str:
    """The exposition text of ``metrics`` (families in the given order)."""
    lines: list[str] = []
    names: set[str] = set()
    for metric in metrics:
        _check(metric)
        if metric.name in names:
            raise MetricError(f"metric {metric.name} appears in two families")
        names.add(metric.name)
        lines.append(f"# HELP {metric.name} {escape_help(metric.help)}")
        lines.append(f"# TYPE {metric.name} {metric.kind}")
        lines.extend(render_sample(metric.name, s) for s in metric.samples)
    return "\n".join(lines) + "\n" if lines else ""
