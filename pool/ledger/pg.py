"""The PostgreSQL side of the ledger store: a connection shaped like ``sqlite3.Connection``.

Driver: psycopg 3, its synchronous API. The store already runs on a thread of its own
(``pool.ledger.store_thread``), one call at a time, so a blocking driver fits exactly: no
second event loop, server-side prepared statements (psycopg prepares a statement after a few
executions), ``executemany`` in pipeline mode for the per-batch upserts.

``PgConnection`` runs the store's SQL (SQLite's dialect, rewritten by ``pool.ledger.dialect``)
in autocommit mode with explicit ``BEGIN``/``COMMIT``/``ROLLBACK``, exactly as the store drives
SQLite. Rows read like ``sqlite3.Row`` (by index and by name, ``dict(row)`` works); NUMERIC
results (PostgreSQL's SUM of BIGINT) come back as int (or float when not whole).

Faults: every psycopg error becomes a ``StoreFault`` (a ``StoreError``), which the store
thread treats as a storage fault: it degrades, rolls back and re-applies the journal once the
database answers again. A connection that broke (PostgreSQL restarted, the network dropped)
is reconnected by the next statement outside a transaction: no restart of the pool.

Schema version: PostgreSQL has no ``PRAGMA user_version``; the version is the one row of
``pool_schema``. Migrations run in one transaction holding a transaction-level advisory lock,
so two pools starting at once migrate once; a database from a newer pool is refused.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from pool.ledger.dialect import migration_to_postgresql, to_postgresql
from pool.ledger.store_payouts import StoreError, StoreFault

# pg_advisory_xact_lock key of schema migrations (any fixed 64-bit number: "pool" "mig")
MIGRATION_LOCK_KEY = 0x706F6F6C_6D6967
CONNECT_TIMEOUT_SECONDS = 5


@dataclass(frozen=True)
class PgTarget:
    """Where the PostgreSQL ledger is: a libpq DSN/URL without a password, and the password
    (read from the environment variable the config names; may be empty)."""

    dsn: str
    password: str = ""

    @classmethod
    def from_env(cls, dsn: str, password_env: str) -> PgTarget:
        return cls(dsn, os.environ.get(password_env, "") if password_env else "")

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        extra: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
        if self.password:
            extra["password"] = self.password
        try:
            return psycopg.connect(self.dsn, autocommit=True, **extra, **kwargs)
        except psycopg.Error as exc:
            raise StoreFault(f"cannot connect to PostgreSQL ({describe(self.dsn)}): {exc}") from exc


def describe(dsn: str) -> str:
    """The DSN for logs and errors, without any password."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        return "<unparsable dsn>"
    info.pop("password", None)
    return " ".join(f"{k}={v}" for k, v in sorted(info.items()))


def password_in_dsn(dsn: str) -> bool:
    try:
        return "password" in psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        return False


def dsn_problem(dsn: str) -> str | None:
    """Why ``dsn`` is not a usable libpq connection string (None when it is)."""
    try:
        psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        return f"is not a libpq connection string or URL: {exc}"
    return None


class Row(tuple[Any, ...]):
    """A result row read like ``sqlite3.Row``: by index, by column name, ``keys()``."""

    _names: dict[str, int]

    def __new__(cls, values: Sequence[Any], names: dict[str, int]) -> Row:
        row = super().__new__(cls, values)
        row._names = names
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def _row_factory(cursor: Any) -> Callable[[Sequence[Any]], Row]:
    description = cursor.description or []
    names = {column.name: i for i, column in enumerate(description)}

    def make(values: Sequence[Any]) -> Row:
        return Row([_plain(v) for v in values], names)

    return make


class _Result:
    """A statement's result: fetched rows (the cursor is done with) and its rowcount."""

    def __init__(self, rows: list[Row], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def fetchone(self) -> Row | None:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[Row]:
        return list(self._rows)

    def __iter__(self) -> Iterator[Row]:
        return iter(self._rows)


class PgConnection:
    """``sqlite3.Connection``'s shape over psycopg (see the module's docstring)."""

    backend = "postgresql"  # (a sqlite3.Connection has no such attribute)

    def __init__(self, target: PgTarget) -> None:
        self.target = target
        self._conn: psycopg.Connection[Any] | None = None
        self._in_tx = False

    # -- connection ------------------------------------------------------------------------
    def _connection(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is not None and conn.closed:
            conn = self._conn = None
        if conn is None:
            if self._in_tx:  # the transaction died with its connection
                raise StoreFault("the PostgreSQL connection was lost inside a transaction")
            conn = self.target.connect(row_factory=_row_factory)
            self._conn = conn
        return conn

    @property
    def in_transaction(self) -> bool:
        return self._in_tx

    def close(self) -> None:
        conn, self._conn = self._conn, None
        self._in_tx = False
        if conn is not None:
            conn.close()

    def _broken(self) -> None:
        """After an error: a connection that is no longer usable is dropped (the next
        statement outside a transaction reconnects)."""
        conn = self._conn
        if conn is None:
            return
        if conn.closed or conn.info.transaction_status == TransactionStatus.UNKNOWN:
            self._conn = None
            with contextlib.suppress(psycopg.Error):
                conn.close()

    # -- statements ------------------------------------------------------------------------
    def execute(self, sql: str, parameters: Any = ()) -> _Result:
        word = sql.strip().split(None, 1)[0].upper() if sql.strip() else ""
        if word in ("COMMIT", "ROLLBACK", "END"):
            return self._finish(word)
        params = parameters if parameters else None
        text = to_postgresql(sql, isinstance(parameters, dict), params is not None)
        try:
            conn = self._connection()
            cursor = conn.execute(text, params)
            rows = cursor.fetchall() if cursor.description is not None else []
            rowcount = cursor.rowcount
        except psycopg.Error as exc:
            self._broken()
            raise StoreFault(f"PostgreSQL: {exc}") from exc
        if word == "BEGIN":
            self._in_tx = True
        return _Result(rows, rowcount)

    def executemany(self, sql: str, parameters: Any) -> None:
        rows = list(parameters)
        if not rows:
            return
        text = to_postgresql(sql, isinstance(rows[0], dict))
        try:
            with self._connection().cursor() as cursor:
                cursor.executemany(text, rows)
        except psycopg.Error as exc:
            self._broken()
            raise StoreFault(f"PostgreSQL: {exc}") from exc

    def _finish(self, word: str) -> _Result:
        was = self._in_tx
        self._in_tx = False
        conn = self._conn
        if conn is None or conn.closed:
            self._conn = None
            if word == "ROLLBACK":  # the transaction is gone with its connection: rolled back
                return _Result([], -1)
            raise StoreFault("the PostgreSQL connection was lost before COMMIT")
        try:
            conn.execute(word)
        except psycopg.Error as exc:
            self._broken()
            if word == "ROLLBACK" and (self._conn is None or not was):
                return _Result([], -1)
            raise StoreFault(f"PostgreSQL {word}: {exc}") from exc
        return _Result([], -1)

    # -- schema ----------------------------------------------------------------------------
    def schema_version(self) -> int:
        row = self.execute("SELECT to_regclass('pool_schema') IS NOT NULL").fetchone()
        if row is None or not row[0]:
            return 0
        version = self.execute("SELECT version FROM pool_schema WHERE id = 1").fetchone()
        return 0 if version is None else int(version[0])

    def migrate(self, migrations: Sequence[str], where: str) -> None:
        """Migrate forward to ``len(migrations)`` in one transaction, under an advisory lock
        (a second pool starting at once waits, then finds the work done)."""
        latest = len(migrations)
        self.execute("BEGIN")
        try:
            self.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK_KEY,))
            self.execute(
                "CREATE TABLE IF NOT EXISTS pool_schema "
                "(id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)"
            )
            row = self.execute("SELECT version FROM pool_schema WHERE id = 1").fetchone()
            version = 0 if row is None else int(row[0])
            if version > latest:
                raise StoreError(
                    f"{where}: schema version {version} was written by a newer version of the "
                    f"pool (this one knows up to {latest}); refusing to touch it"
                )
            for number in range(version + 1, latest + 1):
                for statement in migration_to_postgresql(migrations[number - 1]):
                    self.execute(statement)
            if latest > version:
                self.execute(
                    "INSERT INTO pool_schema (id, version) VALUES (1, ?) "
                    "ON CONFLICT (id) DO UPDATE SET version = excluded.version",
                    (latest,),
                )
            self.execute("COMMIT")
        except BaseException:
            self.execute("ROLLBACK")
            raise
