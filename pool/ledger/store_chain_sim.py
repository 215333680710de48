"""The store's ``chain_sim`` row (mixed into :class:`pool.ledger.store.Store`): the simulated
chain's state (``ChainSim.to_state`` as JSON) shared by every process of every instance writing
one store, so they all build jobs on one simulated target and count every block once.

One row (``id = 1``) with a ``version`` that every write bumps. A writer reads the row, applies
its change to that state and writes it back only if the version is still the one it read
(compare-and-set: ``UPDATE ... WHERE version = ?``, one row changed or none); when another
process wrote meanwhile, it reads again and re-applies its change to the newer state
(``pool.chain_sim_state.advance_shared``). The first process to start inserts the row
(``ON CONFLICT DO NOTHING``: one of several starting at once wins, the others read its row).
Deleting the row starts the simulation afresh at the next start.
"""

from __future__ import annotations

from pool.ledger.dialect import Connection

# after the migrations of ``pool.ledger.store_schema.MIGRATIONS`` (portable SQL)
CHAIN_SIM_MIGRATION = """
    CREATE TABLE chain_sim (
        id INTEGER PRIMARY KEY,
        version INTEGER NOT NULL,
        state TEXT NOT NULL,
        updated_at REAL NOT NULL,
        updated_by TEXT NOT NULL DEFAULT ''
    )
"""


class ChainSimRows:
    """The shared simulated chain's row; the store provides the connection and transactions."""

    @property
    def conn(self) -> Connection:
        raise NotImplementedError

    def _begin_own(self) -> None:
        raise NotImplementedError

    def chain_sim_version(self) -> int:
        """The row's version (0: no row yet)."""
        row = self.conn.execute("SELECT version FROM chain_sim WHERE id = 1").fetchone()
        return 0 if row is None else int(row[0])

    def chain_sim_row(self) -> tuple[int, str] | None:
        """``(version, state JSON)``, or None before the first process saved one."""
        row = self.conn.execute("SELECT version, state FROM chain_sim WHERE id = 1").fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def chain_sim_put(self, expected_version: int, state: str, now: float, by: str) -> bool:
        """Write ``state`` as version ``expected_version + 1`` if the row is still at
        ``expected_version`` (0: only if there is no row yet); False if another process
        wrote first (nothing is changed then)."""
        self._begin_own()
        db = self.conn
        try:
            if expected_version == 0:
                cur = db.execute(
                    "INSERT INTO chain_sim (id, version, state, updated_at, updated_by) "
                    "VALUES (1, 1, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                    (state, now, by),
                )
            else:
                cur = db.execute(
                    "UPDATE chain_sim SET version = version + 1, state = ?, updated_at = ?, "
                    "updated_by = ? WHERE id = 1 AND version = ?",
                    (state, now, by, int(expected_version)),
                )
            written = int(cur.rowcount or 0) == 1
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return written

    def chain_sim_reset(self) -> None:
        """Delete the row: the next process to start begins the simulation afresh."""
        self._begin_own()
        try:
            self.conn.execute("DELETE FROM chain_sim")
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
