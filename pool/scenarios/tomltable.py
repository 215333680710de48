"""Reading TOML tables with errors that name the file and the key (used by ``spec``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any


class ScenarioError(ValueError):
    """A scenario cannot be used; the message names the file and the key."""


class Table:
    """One TOML table being read: typed getters that name the key, unknown keys refused."""

    def __init__(self, data: Any, path: str, where: str) -> None:
        if not isinstance(data, Mapping):
            raise ScenarioError(f"{where}: {path or 'the file'} must be a table")
        self.data = data
        self.path = path
        self.where = where
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def fail(self, name: str, why: str) -> ScenarioError:
        return ScenarioError(f"{self.where}: {self.key(name)} {why}")

    def raw(self, name: str) -> Any:
        self.used.add(name)
        return self.data.get(name)

    def number(
        self, name: str, default: float | None = None, *, positive: bool = False, minimum: float = 0
    ) -> float:
        value = self.raw(name)
        if value is None:
            if default is None:
                raise self.fail(name, "is required")
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(name, f"must be a number, got {value!r}")
        if not math.isfinite(value):
            raise self.fail(name, f"must be finite, got {value!r}")
        if positive and value <= 0:
            raise self.fail(name, f"must be greater than 0, got {value!r}")
        if value < minimum:
            raise self.fail(name, f"must be at least {minimum:g}, got {value!r}")
        return float(value)

    def opt_number(self, name: str, *, positive: bool = False) -> float | None:
        return None if self.data.get(name) is None else self.number(name, positive=positive)

    def integer(self, name: str, default: int | None = None, *, minimum: int = 0) -> int:
        value = self.raw(name)
        if value is None:
            if default is None:
                raise self.fail(name, "is required")
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(name, f"must be an integer, got {value!r}")
        if value < minimum:
            raise self.fail(name, f"must be at least {minimum}, got {value!r}")
        return value

    def opt_integer(self, name: str, *, minimum: int = 0) -> int | None:
        return None if self.data.get(name) is None else self.integer(name, minimum=minimum)

    def text(self, name: str, default: str = "") -> str:
        value = self.raw(name)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.fail(name, f"must be a string, got {value!r}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.fail(name, f"must be true or false, got {value!r}")
        return value

    def strings(self, name: str) -> tuple[str, ...]:
        value = self.raw(name)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(name, f"must be a list of strings, got {value!r}")
        return tuple(value)

    def exact(self, name: str, default: str | None = None) -> Fraction:
        """A number as an exact Fraction of its decimal spelling (66680, 0.02, 3.125)."""
        value = self.raw(name)
        if value is None:
            if default is None:
                raise self.fail(name, "is required")
            return Fraction(default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(name, f"must be a number, got {value!r}")
        try:
            dec = Decimal(str(value))
        except InvalidOperation:
            raise self.fail(name, f"must be a finite number, got {value!r}") from None
        if not dec.is_finite() or dec < 0:
            raise self.fail(name, f"must be a finite number >= 0, got {value!r}")
        return Fraction(dec)

    def table(self, name: str) -> Table:
        value = self.raw(name)
        return Table({} if value is None else value, self.key(name), self.where)

    def tables(self, name: str) -> list[Table]:
        value = self.raw(name)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(name, "must be an array of tables ([[...]])")
        return [Table(v, f"{self.key(name)}[{i}]", self.where) for i, v in enumerate(value)]

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            keys = ", ".join(self.key(k) for k in unknown)
            raise ScenarioError(f"{self.where}: unknown key {keys}")


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out
