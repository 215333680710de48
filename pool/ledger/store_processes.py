"""The store's ``pool_processes`` rows (mixed into :class:`pool.ledger.store.Store`): every
Stratum process of every instance writing one store says who it is and how it is doing, every
few seconds, so any process's API can show the whole pool. A row whose heartbeat is older than
the staleness limit is a process that is down (or cut off from the store).
"""

from __future__ import annotations

import json
from typing import Any

from pool.ledger.dialect import Connection

# after the migrations of ``pool.ledger.store.MIGRATIONS`` (portable SQL)
PROCESSES_MIGRATION = """
    CREATE TABLE pool_processes (
        instance_id INTEGER NOT NULL,
        process TEXT NOT NULL,
        pid INTEGER NOT NULL,
        host TEXT NOT NULL,
        started_at REAL NOT NULL,
        heartbeat_at REAL NOT NULL,
        payout_runner INTEGER NOT NULL DEFAULT 0,
        stats TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (instance_id, process)
    )
"""


class ProcessRows:
    """Heartbeat rows; the store provides the connection and transactions."""

    @property
    def conn(self) -> Connection:
        raise NotImplementedError

    def _begin_own(self) -> None:
        raise NotImplementedError

    def heartbeat(self, row: dict[str, Any]) -> None:
        """Write this process's row (instance_id, process, pid, host, started_at,
        heartbeat_at, payout_runner, stats: a JSON-able dict), in a transaction of its own."""
        self._begin_own()
        db = self.conn
        try:
            db.execute(
                """
                INSERT INTO pool_processes (instance_id, process, pid, host, started_at,
                    heartbeat_at, payout_runner, stats)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (instance_id, process) DO UPDATE SET
                    pid = excluded.pid, host = excluded.host,
                    started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at,
                    payout_runner = excluded.payout_runner, stats = excluded.stats
                """,
                (
                    int(row["instance_id"]),
                    str(row["process"]),
                    int(row["pid"]),
                    str(row["host"]),
                    float(row["started_at"]),
                    float(row["heartbeat_at"]),
                    1 if row.get("payout_runner") else 0,
                    json.dumps(row.get("stats", {}), sort_keys=True),
                ),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def processes(self) -> list[dict[str, Any]]:
        """Every process that ever wrote a heartbeat, by instance and process."""
        rows = self.conn.execute(
            "SELECT instance_id, process, pid, host, started_at, heartbeat_at, payout_runner, "
            "stats FROM pool_processes ORDER BY instance_id, process"
        ).fetchall()
        out = []
        for r in rows:
            row = dict(r)
            row["payout_runner"] = bool(row["payout_runner"])
            try:
                row["stats"] = json.loads(row["stats"])
            except ValueError:
                row["stats"] = {}
            out.append(row)
        return out
