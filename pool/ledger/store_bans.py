"""The store's ``bans`` rows (mixed into :class:`pool.ledger.store.Store`): bans shared by every
process of every instance writing one store (worker processes on one SQLite file, instances on
one PostgreSQL), so a ban made in one process is enforced by all of them.

One row per ban target: ``kind`` (``ip`` or ``worker``: the operator's bans, permanent;
``temp_ip``: a temporary IP ban the abuse guard gave, ``until_at`` its end), ``ban_key`` (the
IP, the IPv6 /64 or the worker), ``lifted`` (1 once unbanned). Every change takes the next
``seq`` from the one-row ``ban_seq`` counter, updated in the change's transaction: the counter
row's lock serialises writers (SQLite's BEGIN IMMEDIATE, PostgreSQL's row lock held to the
commit), so seqs commit in order and a poller reading ``seq > last`` never skips a change.
"""

from __future__ import annotations

from typing import Any

from pool.ledger.dialect import Connection

BAN_KINDS = ("ip", "worker", "temp_ip")

# after the migrations of ``pool.ledger.store.MIGRATIONS`` (portable SQL)
BANS_MIGRATION = """
    CREATE TABLE bans (
        kind TEXT NOT NULL,
        ban_key TEXT NOT NULL,
        until_at REAL,
        reason TEXT NOT NULL DEFAULT '',
        set_by TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        lifted INTEGER NOT NULL DEFAULT 0,
        seq INTEGER NOT NULL,
        PRIMARY KEY (kind, ban_key)
    );
    CREATE INDEX bans_seq ON bans (seq);
    CREATE TABLE ban_seq (id INTEGER PRIMARY KEY, seq INTEGER NOT NULL);
    INSERT INTO ban_seq (id, seq) VALUES (1, 0)
"""

_UPSERT_BAN = """
    INSERT INTO bans (kind, ban_key, until_at, reason, set_by, created_at, updated_at, lifted, seq)
    VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?)
    ON CONFLICT (kind, ban_key) DO UPDATE SET
        until_at = CASE
            WHEN bans.lifted = 0 AND bans.until_at IS NOT NULL AND excluded.until_at IS NOT NULL
                AND bans.until_at > excluded.until_at THEN bans.until_at
            ELSE excluded.until_at END,
        reason = excluded.reason, set_by = excluded.set_by,
        created_at = CASE WHEN bans.lifted = 0 THEN bans.created_at ELSE excluded.created_at END,
        updated_at = excluded.updated_at, lifted = 0, seq = excluded.seq
"""
_COLUMNS = "kind, ban_key, until_at, reason, set_by, created_at, updated_at, lifted, seq"


def _check_kind(kind: str) -> None:
    if kind not in BAN_KINDS:
        raise ValueError(f"unknown ban kind {kind!r} (one of {', '.join(BAN_KINDS)})")


class BanRows:
    """Shared ban rows; the store provides the connection and transactions."""

    @property
    def conn(self) -> Connection:
        raise NotImplementedError

    def _begin_own(self) -> None:
        raise NotImplementedError

    def _next_ban_seq(self) -> int:
        db = self.conn
        db.execute("UPDATE ban_seq SET seq = seq + 1 WHERE id = 1")  # locks the counter row
        return int(db.execute("SELECT seq FROM ban_seq WHERE id = 1").fetchone()[0])

    def ban_changes(self, changes: list[dict[str, Any]], now: float) -> int:
        """Write bans and lifts (each ``{"kind", "key", "lift": bool, "until": float | None,
        "reason", "set_by"}``), in order, in one transaction of their own; the last seq."""
        for change in changes:
            _check_kind(str(change["kind"]))
        self._begin_own()
        db = self.conn
        seq = 0
        try:
            for change in changes:
                seq = self._next_ban_seq()
                kind, key = str(change["kind"]), str(change["key"])
                if change.get("lift"):
                    db.execute(
                        "UPDATE bans SET lifted = 1, set_by = ?, updated_at = ?, seq = ? "
                        "WHERE kind = ? AND ban_key = ? AND lifted = 0",
                        (str(change.get("set_by", "")), now, seq, kind, key),
                    )
                    continue
                until = change.get("until")
                db.execute(
                    _UPSERT_BAN,
                    (
                        kind,
                        key,
                        None if until is None else float(until),
                        str(change.get("reason", "")),
                        str(change.get("set_by", "")),
                        now,
                        now,
                        seq,
                    ),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return seq

    def set_ban(
        self,
        kind: str,
        key: str,
        until: float | None,
        reason: str,
        set_by: str,
        now: float,
    ) -> int:
        """Ban ``key`` (``until``: None for a permanent ban); the change's seq."""
        change = {"kind": kind, "key": key, "until": until, "reason": reason, "set_by": set_by}
        return self.ban_changes([change], now)

    def lift_ban(self, kind: str, key: str, set_by: str, now: float) -> int:
        """Lift ``key``'s ban of ``kind`` (nothing changes if it had none); the seq taken."""
        return self.ban_changes([{"kind": kind, "key": key, "lift": True, "set_by": set_by}], now)

    def bans_since(self, seq: int, limit: int = 10_000) -> list[dict[str, Any]]:
        """The rows changed after ``seq`` (bans and lifts), oldest change first, at most
        ``limit`` of them (call again from the last one's seq for more)."""
        rows = self.conn.execute(
            f"SELECT {_COLUMNS} FROM bans WHERE seq > ? ORDER BY seq LIMIT ?",
            (int(seq), int(limit)),
        ).fetchall()
        return [dict(r) | {"lifted": bool(r["lifted"])} for r in rows]

    def prune_bans(self, now: float, keep_lifted_seconds: float) -> int:
        """Forget temporary bans that ended and their lifts older than ``keep_lifted_seconds``
        (every poller has long seen them); how many rows were deleted. The operator's rows
        stay, lifted ones too (few; a stale ``bans.json`` must not bring a lifted ban back)."""
        self._begin_own()
        db = self.conn
        try:
            cur = db.execute(
                "DELETE FROM bans WHERE kind = 'temp_ip' AND (until_at < ? "
                "OR (lifted = 1 AND updated_at < ?))",
                (now - keep_lifted_seconds, now - keep_lifted_seconds),
            )
            count = int(cur.rowcount or 0)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return max(0, count)
