"""The ledger's payout schemes per port (a mixin of ``Ledger``).

Each Stratum port names its scheme (``[[stratum.ports]] scheme``; "" = ``[ledger] scheme``).
The server hands the ledger the accepted shares of one read with the scheme of the connection's
port (all shares of one read come from one connection, so from one port); the journal records
carry it. What each scheme does with shares and blocks: ``pool.ledger.schemes``.

PPLNS blocks are split when their share's record is applied (``store_pplns``) and credited
when ``check_blocks`` confirms them: the confirming transaction credits the balances, and the
in-memory balances are refreshed here from the store.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from pool.bitcoin import Network
from pool.config import LedgerConfig
from pool.ledger.aggregates import Aggregates, ShareRecord
from pool.ledger.pps import Scheme
from pool.ledger.records import record_for_share, share_record_from
from pool.ledger.store import Store
from pool.ledger.store_pplns import balances_of, block_split
from pool.ledger.store_thread import StoreThread
from pool.server.auth import Credentials
from pool.shares import ShareResult

BLOCK_SCHEMES_KEPT = 1024  # block candidates whose port scheme is remembered for their outcome


class SchemeShares:
    """Scheme resolution and per-scheme share records (mixed into ``Ledger``)."""

    config: LedgerConfig
    network: Network
    scheme: Scheme
    store: StoreThread

    def _init_schemes(self) -> None:
        self._block_schemes: dict[str, Scheme] = {}

    def record_converter(self) -> Callable[[dict[str, Any]], ShareRecord]:
        """Journal record -> store record, with this ledger's scheme and PPLNS window."""
        return functools.partial(
            share_record_from,
            default_scheme=self.scheme.value,
            pplns_window_factor=self.config.pplns_window_factor,
        )

    def scheme_of(self, port_scheme: str) -> Scheme:
        """A port's scheme ("" = the ledger's); a clear error for an unknown one."""
        if not port_scheme:
            return self.scheme
        try:
            return Scheme(port_scheme)
        except ValueError:
            raise ValueError(
                f"unknown payout scheme {port_scheme!r}: expected pps, fpps, pplns or solo"
            ) from None

    def _share_records(
        self, shares: Sequence[tuple[ShareResult, Credentials]], now: float, port_scheme: str = ""
    ) -> list[dict[str, Any]]:
        if not all(result.accepted for result, _ in shares):
            raise ValueError("only accepted shares are journaled")
        network, fee = self.network, self.config.fee_bps
        scheme = self.scheme_of(port_scheme)
        factor = self.config.pplns_window_factor
        records = [
            record_for_share(
                result,
                creds,
                now,
                None,
                network=network,
                scheme=scheme,
                fee_bps=fee,
                pplns_window_factor=factor,
            )
            for result, creds in shares
        ]
        for record in records:
            if "block" in record:
                self._remember_block(str(record["block"]["hash"]), scheme)
        return records

    def _remember_block(self, block_hash: str, scheme: Scheme) -> None:
        if len(self._block_schemes) >= BLOCK_SCHEMES_KEPT:
            self._block_schemes.pop(next(iter(self._block_schemes)))
        self._block_schemes[block_hash] = scheme

    async def pplns_split(self, block_hash: str) -> dict[str, Any] | None:
        """A pplns block's split as snapshotted (credits per address in units, fee, rounding
        remainder, window, whether credited); None for a block of another scheme."""

        def read(s: Store) -> dict[str, Any] | None:
            return block_split(s.conn, block_hash)

        return await self.store.run(read)

    def block_scheme(self, block_hash: str) -> Scheme:
        """The scheme of the port that found a block candidate of this run (else the
        ledger's)."""
        return self._block_schemes.get(block_hash, self.scheme)


async def refresh_pplns_balances(store: Any, aggregates: Aggregates, block_hash: str) -> None:
    """After a pplns block was confirmed (and its split credited in the same transaction):
    bring the in-memory balances of its addresses up to date."""

    def read(s: Store) -> list[Any]:
        split = block_split(s.conn, block_hash)
        if split is None:
            return []
        return balances_of(s.conn, list(split["credits"]))

    balances = await store.run(read)
    if balances:
        aggregates.set_balances(balances)
