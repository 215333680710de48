"""The store's payout rows (mixed into :class:`pool.ledger.store.Store`).

A payout is recorded ``pending`` before it is sent (its amounts move from each balance to the
pending column in the same transaction), then ``sent`` with its txid, ``confirmed``, or
``failed`` (never sent: the amounts go back to the balances).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pool.ledger.aggregates import Balance
from pool.ledger.dialect import Connection
from pool.ledger.pps import UNITS_PER_SAT

# Payout statuses: pending (recorded, maybe not yet sent), sent (txid known), confirmed,
# failed (never sent; its amounts went back to the balances)
PAYOUT_PENDING, PAYOUT_SENT, PAYOUT_CONFIRMED, PAYOUT_FAILED = (
    "pending",
    "sent",
    "confirmed",
    "failed",
)


class StoreError(RuntimeError):
    """The database cannot be used; the message says why."""


class StoreFault(StoreError):
    """A storage fault of a database server (PostgreSQL down, restarted, unreachable, a
    statement it refused): handled like SQLite's errors, the store degrades and recovers."""


class PayoutRows:
    """Payout methods of the store; the store provides the connection and transactions."""

    @property
    def conn(self) -> Connection:
        raise NotImplementedError

    def _begin_own(self) -> None:
        raise NotImplementedError

    def balance(self, address: str) -> Balance | None:
        raise NotImplementedError

    # -- payouts --------------------------------------------------------------------------------
    def create_payout(self, payout_id: str, items: Iterable[tuple[str, int]], now: float) -> int:
        """Record a payout as pending BEFORE it is sent: the amounts move from each balance to
        its pending column in the same transaction. Returns the total in satoshis."""
        items = list(items)
        total = sum(amount for _, amount in items)
        self._begin_own()
        db = self.conn
        try:
            db.execute(
                "INSERT INTO payouts (id, created_at, updated_at, status, total_sat) "
                "VALUES (?, ?, ?, ?, ?)",
                (payout_id, now, now, PAYOUT_PENDING, total),
            )
            for address, amount in items:
                bal = self.balance(address)
                units = amount * UNITS_PER_SAT
                if amount <= 0 or bal is None or bal.balance_units < units:
                    raise StoreError(f"payout {payout_id}: {address} cannot pay {amount} sat")
                db.execute(
                    "INSERT INTO payout_items (payout_id, address, amount_sat) VALUES (?, ?, ?)",
                    (payout_id, address, amount),
                )
                db.execute(
                    "UPDATE balances SET pending_units = pending_units + ? WHERE address = ?",
                    (units, address),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return total

    def remove_payout_item(self, payout_id: str, address: str, now: float, reason: str) -> None:
        """Take one address out of a payout that has not been sent; its amount goes back."""
        self._begin_own()
        db = self.conn
        row = db.execute(
            "SELECT amount_sat FROM payout_items WHERE payout_id = ? AND address = ?",
            (payout_id, address),
        ).fetchone()
        if row is not None:
            db.execute(
                "UPDATE balances SET pending_units = pending_units - ? WHERE address = ?",
                (row[0] * UNITS_PER_SAT, address),
            )
            db.execute(
                "DELETE FROM payout_items WHERE payout_id = ? AND address = ?",
                (payout_id, address),
            )
            db.execute(
                "UPDATE payouts SET total_sat = total_sat - ?, updated_at = ?, error = ? "
                "WHERE id = ?",
                (row[0], now, reason, payout_id),
            )
        db.execute("COMMIT")

    def finish_payout(
        self,
        payout_id: str,
        status: str,
        now: float,
        *,
        txid: str | None = None,
        error: str | None = None,
    ) -> None:
        """pending -> sent (amounts leave the balances: pending -> paid) or failed (they go
        back to the balances); sent -> confirmed."""
        self._begin_own()
        db = self.conn
        try:
            current = db.execute("SELECT status FROM payouts WHERE id = ?", (payout_id,)).fetchone()
            if current is None:
                raise StoreError(f"no payout {payout_id}")
            before = current[0]
            items = db.execute(
                "SELECT address, amount_sat FROM payout_items WHERE payout_id = ?", (payout_id,)
            ).fetchall()
            if before == PAYOUT_PENDING and status in (PAYOUT_SENT, PAYOUT_CONFIRMED):
                for address, amount in items:
                    db.execute(
                        "UPDATE balances SET pending_units = pending_units - ?, "
                        "paid_units = paid_units + ? WHERE address = ?",
                        (amount * UNITS_PER_SAT, amount * UNITS_PER_SAT, address),
                    )
            elif before == PAYOUT_PENDING and status == PAYOUT_FAILED:
                for address, amount in items:
                    db.execute(
                        "UPDATE balances SET pending_units = pending_units - ? WHERE address = ?",
                        (amount * UNITS_PER_SAT, address),
                    )
            elif not (before == PAYOUT_SENT and status == PAYOUT_CONFIRMED):
                raise StoreError(f"payout {payout_id}: cannot go from {before} to {status}")
            db.execute(
                "UPDATE payouts SET status = ?, updated_at = ?, txid = COALESCE(?, txid), "
                "error = COALESCE(?, error) WHERE id = ?",
                (status, now, txid, error, payout_id),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def payout_addresses(self, payout_id: str) -> list[str]:
        rows = self.conn.execute(
            "SELECT address FROM payout_items WHERE payout_id = ? ORDER BY address", (payout_id,)
        )
        return [str(r[0]) for r in rows]

    def payouts(
        self, statuses: Sequence[str] | None = None, limit: int = 1000, address: str | None = None
    ) -> list[dict[str, Any]]:
        where: list[str] = []
        args: list[Any] = []
        if statuses:
            where.append(f"p.status IN ({','.join('?' * len(statuses))})")
            args.extend(statuses)
        if address is not None:
            where.append("p.id IN (SELECT payout_id FROM payout_items WHERE address = ?)")
            args.append(address)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self.conn.execute(
            f"SELECT p.* FROM payouts p {clause} ORDER BY p.created_at DESC LIMIT ?",
            (*args, limit),
        ).fetchall()
        out = []
        for row in rows:
            payout = dict(row)
            payout["items"] = [
                {"address": r[0], "amount_sat": r[1]}
                for r in self.conn.execute(
                    "SELECT address, amount_sat FROM payout_items WHERE payout_id = ? "
                    "ORDER BY address",
                    (row["id"],),
                )
            ]
            out.append(payout)
        return out
