"""Chain parameters the pool needs, per network (values from Bitcoin Core's chainparams)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "MAINNET",
    "NETWORKS",
    "REGTEST",
    "SIGNET",
    "TESTNET",
    "TESTNET4",
    "Network",
    "network_for_chain",
]

COIN = 100_000_000


@dataclass(frozen=True)
class Network:
    """One Bitcoin network; ``name`` is the value of ``getblockchaininfo.chain``."""

    name: str
    bech32_hrp: str
    p2pkh_prefix: int
    p2sh_prefix: int
    halving_interval: int
    initial_subsidy: int = 50 * COIN
    pow_limit_bits: int = 0x1D00FFFF

    def block_subsidy(self, height: int) -> int:
        """Block subsidy in satoshis at ``height`` (Core's GetBlockSubsidy)."""
        if height < 0:
            raise ValueError(f"negative block height: {height}")
        halvings = height // self.halving_interval
        if halvings >= 64:
            return 0
        return self.initial_subsidy >> halvings


MAINNET = Network(
    name="main",
    bech32_hrp="bc",
    p2pkh_prefix=0x00,
    p2sh_prefix=0x05,
    halving_interval=210_000,
    pow_limit_bits=0x1D00FFFF,
)
TESTNET = Network(
    name="test",
    bech32_hrp="tb",
    p2pkh_prefix=0x6F,
    p2sh_prefix=0xC4,
    halving_interval=210_000,
    pow_limit_bits=0x1D00FFFF,
)
TESTNET4 = Network(
    name="testnet4",
    bech32_hrp="tb",
    p2pkh_prefix=0x6F,
    p2sh_prefix=0xC4,
    halving_interval=210_000,
    pow_limit_bits=0x1D00FFFF,
)
SIGNET = Network(
    name="signet",
    bech32_hrp="tb",
    p2pkh_prefix=0x6F,
    p2sh_prefix=0xC4,
    halving_interval=210_000,
    pow_limit_bits=0x1E0377AE,
)
REGTEST = Network(
    name="regtest",
    bech32_hrp="bcrt",
    p2pkh_prefix=0x6F,
    p2sh_prefix=0xC4,
    halving_interval=150,
    pow_limit_bits=0x207FFFFF,
)

NETWORKS: tuple[Network, ...] = (MAINNET, TESTNET, TESTNET4, SIGNET, REGTEST)
_BY_CHAIN = {n.name: n for n in NETWORKS}


def network_for_chain(chain: str) -> Network:
    """The Network for a ``getblockchaininfo.chain`` value; ValueError if unknown."""
    try:
        return _BY_CHAIN[chain]
    except KeyError:
        known = ", ".join(_BY_CHAIN)
        raise ValueError(f"unknown chain {chain!r} (known: {known})") from None
