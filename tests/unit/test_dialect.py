"""The store's SQLite SQL rewritten for PostgreSQL (pool.ledger.dialect): what changes, what
must not (literals, one-argument aggregates), and what is refused rather than guessed."""

from __future__ import annotations

import pytest

from pool.ledger.dialect import DialectError, migration_to_postgresql, to_postgresql
from pool.ledger.store import MIGRATIONS


def test_placeholders_and_percent() -> None:
    assert to_postgresql("SELECT * FROM t WHERE a = ? AND b LIKE 'x%?'") == (
        "SELECT * FROM t WHERE a = %s AND b LIKE 'x%%?'"
    )
    assert to_postgresql("SELECT 'a%'", params=False) == "SELECT 'a%'"
    assert to_postgresql("INSERT INTO t VALUES (:hash, :height)", named=True) == (
        "INSERT INTO t VALUES (%(hash)s, %(height)s)"
    )


def test_functions() -> None:
    assert to_postgresql("SELECT MAX(a) FROM t") == "SELECT MAX(a) FROM t"
    assert to_postgresql("SET x = MAX(COALESCE(t.x, 0), excluded.x)") == (
        "SET x = GREATEST(COALESCE(t.x, 0), excluded.x)"
    )
    assert to_postgresql("SELECT min(a, MAX(b, c))") == "SELECT LEAST(a, GREATEST(b, c))"
    assert to_postgresql("SELECT TOTAL(expected_blocks) FROM m") == (
        "SELECT COALESCE(SUM(expected_blocks), 0) FROM m"
    )


def test_statements() -> None:
    assert to_postgresql("BEGIN IMMEDIATE") == "BEGIN"
    assert to_postgresql("INSERT OR IGNORE INTO b (h) VALUES (?)") == (
        "INSERT INTO b (h) VALUES (%s) ON CONFLICT DO NOTHING"
    )
    with pytest.raises(DialectError, match="ON CONFLICT"):
        to_postgresql("INSERT OR REPLACE INTO b (h) VALUES (?)")


def test_migrations_get_postgresql_types() -> None:
    statements = migration_to_postgresql(MIGRATIONS[0])
    workers = next(s for s in statements if "CREATE TABLE workers" in s)
    assert "shares BIGINT NOT NULL" in workers
    assert "difficulty_sum DOUBLE PRECISION NOT NULL" in workers
    assert "INTEGER" not in " ".join(statements) and "REAL " not in " ".join(statements)
