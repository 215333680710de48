"""One SQL text for both ledger backends: the store writes SQLite's dialect, this module
rewrites it for PostgreSQL at run time (cached per statement).

What is rewritten (the store's SQL and its migrations stay the SQLite text, byte for byte):

* ``?`` placeholders -> ``%s``; ``:name`` placeholders (with a dict of parameters) ->
  ``%(name)s``; a literal ``%`` -> ``%%`` (psycopg's placeholders start with ``%``);
* column types of migrations: ``INTEGER`` -> ``BIGINT`` (SQLite's integers are 64-bit),
  ``REAL`` -> ``DOUBLE PRECISION``;
* scalar ``MAX(a, b)`` / ``MIN(a, b)`` (two or more arguments) -> ``GREATEST`` / ``LEAST``
  (the one-argument aggregates stay);
* ``TOTAL(x)`` -> ``COALESCE(SUM(x), 0)``;
* ``INSERT OR IGNORE INTO ...`` -> ``INSERT INTO ... ON CONFLICT DO NOTHING``;
* ``BEGIN IMMEDIATE`` -> ``BEGIN``.

What the store's SQL must do itself (no faithful rewrite exists): name the table in
``ON CONFLICT (...) DO UPDATE SET n = t.n + excluded.n`` (PostgreSQL calls a bare ``n`` there
ambiguous), and write upserts, not ``INSERT OR REPLACE``.

``PRAGMA`` has no PostgreSQL form: the store keeps its schema version in a table there
(``pool.ledger.pg``). Anything this module cannot rewrite faithfully (``INSERT OR REPLACE``)
is refused with a clear error rather than guessed at.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

SQLITE, POSTGRESQL = "sqlite", "postgresql"
BACKENDS = (SQLITE, POSTGRESQL)


class Cursor(Protocol):
    """What the store uses of a cursor (sqlite3.Cursor and psycopg's both fit)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """What the store uses of a connection (sqlite3.Connection and ``PgConnection`` fit).
    Transactions are explicit ``BEGIN``/``COMMIT``/``ROLLBACK`` statements."""

    @property
    def in_transaction(self) -> bool: ...

    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...

    def executemany(self, sql: str, parameters: Any, /) -> Any: ...

    def close(self) -> None: ...


_TYPES = (
    (re.compile(r"\bINTEGER\b", re.IGNORECASE), "BIGINT"),
    (re.compile(r"\bREAL\b", re.IGNORECASE), "DOUBLE PRECISION"),
)
_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
_FUNC = re.compile(r"\b(MAX|MIN|TOTAL)\s*\(", re.IGNORECASE)
_INSERT_OR_IGNORE = re.compile(r"\bINSERT\s+OR\s+IGNORE\s+INTO\b", re.IGNORECASE)
_INSERT_OR_REPLACE = re.compile(r"\bINSERT\s+OR\s+REPLACE\b", re.IGNORECASE)
_BEGIN_IMMEDIATE = re.compile(r"^\s*BEGIN\s+IMMEDIATE\s*$", re.IGNORECASE)


class DialectError(ValueError):
    """SQL the PostgreSQL dialect cannot rewrite faithfully."""


def _close_paren(sql: str, start: int) -> int:
    """Index of the ``)`` matching the ``(`` at ``start - 1``; commas at depth 0 counted."""
    depth = 0
    quote: str | None = None
    for i in range(start, len(sql)):
        c = sql[i]
        if quote is not None:
            if c == quote:
                quote = None
            continue
        if c in "'\"":
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            if depth == 0:
                return i
            depth -= 1
    raise DialectError(f"unbalanced parentheses in SQL: {sql!r}")


def _top_level_commas(body: str) -> int:
    depth = commas = 0
    for c in body:
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "," and depth == 0:
            commas += 1
    return commas


def _functions(sql: str) -> str:
    out: list[str] = []
    pos = 0
    while (m := _FUNC.search(sql, pos)) is not None:
        name = m.group(1).upper()
        end = _close_paren(sql, m.end())
        body = _functions(sql[m.end() : end])
        out.append(sql[pos : m.start()])
        if name == "TOTAL":
            out.append(f"COALESCE(SUM({body}), 0)")
        elif _top_level_commas(body) > 0:
            out.append(f"{'GREATEST' if name == 'MAX' else 'LEAST'}({body})")
        else:
            out.append(f"{m.group(1)}({body})")
        pos = end + 1
    out.append(sql[pos:])
    return "".join(out)


@functools.lru_cache(maxsize=1024)
def to_postgresql(sql: str, named: bool = False, params: bool = True) -> str:
    """``sql`` (SQLite's dialect, as the store writes it) in PostgreSQL's. ``params``: whether
    it is sent with parameters (psycopg sends a statement without any as it is: no ``%%``)."""
    if _BEGIN_IMMEDIATE.match(sql):
        return "BEGIN"
    if _INSERT_OR_REPLACE.search(sql):
        raise DialectError(
            "INSERT OR REPLACE has no faithful PostgreSQL form: write "
            f"INSERT ... ON CONFLICT (...) DO UPDATE instead: {sql.strip()[:120]!r}"
        )
    text = sql.replace("%", "%%") if params else sql
    if _INSERT_OR_IGNORE.search(text):
        text = _INSERT_OR_IGNORE.sub("INSERT INTO", text).rstrip().rstrip(";")
        text += " ON CONFLICT DO NOTHING"
    text = _functions(text)
    if not params:
        return text
    if named:
        text = _NAMED.sub(r"%(\1)s", text)
    return _placeholders(text)


def _placeholders(sql: str) -> str:
    """``?`` -> ``%s`` outside string literals."""
    out: list[str] = []
    quote: str | None = None
    for c in sql:
        if quote is not None:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "?":
            out.append("%s")
            continue
        out.append(c)
    return "".join(out)


def migration_to_postgresql(script: str) -> list[str]:
    """A migration (``;``-separated SQLite DDL) with PostgreSQL's column types (the rest of
    the rewriting is ``to_postgresql``'s, when each statement runs)."""
    statements = []
    for statement in split_script(script):
        for pattern, replacement in _TYPES:
            statement = pattern.sub(replacement, statement)
        statements.append(statement)
    return statements


def split_script(script: str) -> Sequence[str]:
    """A migration's statements, as SQLite runs them."""
    return [s for s in script.split(";") if s.strip()]
