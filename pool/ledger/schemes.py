"""The payout schemes, registered by name (pure: no I/O, no clock; integer money in units).

Each scheme says what a share is credited when it is accepted and who a found block's reward
belongs to:

=======  ==========================================  ============================================
scheme   a share, when accepted                      a found block
=======  ==========================================  ============================================
pps      d / D x subsidy x (1 - fee) (``pps``)       the pool's (its reserve pays the credits)
fpps     d / D x (subsidy + template fees) x (1-fee) the pool's (its reserve pays the credits)
pplns    0 (kept in the PPLNS share log)             split over the last N difficulty-units of
                                                     pplns shares ending at its share
                                                     (``pplns``), credited when it matures;
                                                     an orphaned or rejected block pays nothing
solo     0 (counted in the worker's stats)           the finder's: its coinbase pays the
                                                     miner's own address; nobody is credited
=======  ==========================================  ============================================

Who carries the variance: PPS/FPPS the pool (its reserve), PPLNS and SOLO the miners.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pool.ledger.pps import Scheme, ShareValue, block_value, share_value

ZERO = ShareValue(gross=0, credit=0, fee=0)


class BlockOwner(enum.StrEnum):
    RESERVE = "reserve"  # PPS/FPPS: the reward goes to the pool's reserve
    WINDOW = "window"  # PPLNS: the reward is split over the window at maturity
    FINDER = "finder"  # SOLO: the coinbase already paid the miner; not the pool's money


@dataclass(frozen=True)
class PayoutScheme:
    scheme: Scheme
    credits_shares: bool  # shares are credited when accepted (PPS/FPPS)
    block_owner: BlockOwner
    pool_carries_variance: bool
    summary: str

    @property
    def name(self) -> str:
        return self.scheme.value

    def share_value(
        self,
        difficulty: float,
        network_target: int,
        subsidy_sat: int,
        coinbase_value_sat: int,
        fee_bps: int,
    ) -> ShareValue:
        """The credit of one accepted share under this scheme (zero unless PPS/FPPS)."""
        if not self.credits_shares:
            return ZERO
        value_sat = block_value(self.scheme, subsidy_sat, coinbase_value_sat)
        return share_value(difficulty, network_target, value_sat, fee_bps)


SCHEMES: dict[str, PayoutScheme] = {
    s.name: s
    for s in (
        PayoutScheme(
            Scheme.PPS, True, BlockOwner.RESERVE, True, "pay per share: the subsidy's worth"
        ),
        PayoutScheme(
            Scheme.FPPS,
            True,
            BlockOwner.RESERVE,
            True,
            "full pay per share: the subsidy and the template's fees",
        ),
        PayoutScheme(
            Scheme.PPLNS,
            False,
            BlockOwner.WINDOW,
            False,
            "pay per last N difficulty-units: a block's reward split at maturity",
        ),
        PayoutScheme(
            Scheme.SOLO, False, BlockOwner.FINDER, False, "solo: the coinbase pays the finder"
        ),
    )
}
NAMES: tuple[str, ...] = tuple(SCHEMES)


def get_scheme(name: str | Scheme) -> PayoutScheme:
    """The scheme registered as ``name``; a clear error for an unknown one."""
    found = SCHEMES.get(str(name))
    if found is None:
        raise ValueError(f"unknown payout scheme {name!r}: expected one of {', '.join(NAMES)}")
    return found
