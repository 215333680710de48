"""Known answers for pool.bitcoin.network.

Sources: Bitcoin Core src/kernel/chainparams.cpp (nSubsidyHalvingInterval 210000 / regtest
150, base58Prefixes, bech32_hrp, powLimit, genesis nBits), BIP94 (testnet4: mainnet rules,
genesis bits 0x1d00ffff), Core's validation_tests.cpp (subsidy halves each interval, 0 after
64 halvings) and bcoin's consensus test (summing every block's reward gives
2099999997690000 satoshis, the last non-zero reward at height 6929999).
"""

import pytest

from pool.bitcoin.network import (
    MAINNET,
    NETWORKS,
    REGTEST,
    SIGNET,
    TESTNET,
    TESTNET4,
    Network,
    network_for_chain,
)
from pool.bitcoin.target import target_to_bits

COIN = 100_000_000


@pytest.mark.parametrize(
    ("chain", "network"),
    [
        ("main", MAINNET),
        ("test", TESTNET),
        ("testnet4", TESTNET4),
        ("signet", SIGNET),
        ("regtest", REGTEST),
    ],
)
def test_network_for_chain(chain: str, network: Network) -> None:
    assert network_for_chain(chain) is network
    assert network.name == chain


@pytest.mark.parametrize("chain", ["mainnet", "testnet", "Main", "", "bitcoin"])
def test_network_for_unknown_chain_names_it(chain: str) -> None:
    with pytest.raises(ValueError, match=repr(chain)):
        network_for_chain(chain)


@pytest.mark.parametrize(
    ("network", "hrp", "p2pkh", "p2sh"),
    [
        (MAINNET, "bc", 0, 5),
        (TESTNET, "tb", 111, 196),
        (TESTNET4, "tb", 111, 196),
        (SIGNET, "tb", 111, 196),
        (REGTEST, "bcrt", 111, 196),
    ],
)
def test_address_parameters_match_chainparams(
    network: Network, hrp: str, p2pkh: int, p2sh: int
) -> None:
    assert (network.bech32_hrp, network.p2pkh_prefix, network.p2sh_prefix) == (hrp, p2pkh, p2sh)


@pytest.mark.parametrize(
    ("network", "pow_limit_hex", "genesis_bits"),
    [
        (MAINNET, "00000000ffffffffffffffffffffffffffffffffffffffffffffffffffffffff", 0x1D00FFFF),
        (TESTNET, "00000000ffffffffffffffffffffffffffffffffffffffffffffffffffffffff", 0x1D00FFFF),
        (TESTNET4, "00000000ffffffffffffffffffffffffffffffffffffffffffffffffffffffff", 0x1D00FFFF),
        (SIGNET, "00000377ae000000000000000000000000000000000000000000000000000000", 0x1E0377AE),
        (REGTEST, "7fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff", 0x207FFFFF),
    ],
)
def test_pow_limit_bits(network: Network, pow_limit_hex: str, genesis_bits: int) -> None:
    assert network.pow_limit_bits == genesis_bits
    assert target_to_bits(int(pow_limit_hex, 16)) == genesis_bits


@pytest.mark.parametrize(
    ("network", "interval"),
    [
        (MAINNET, 210_000),
        (TESTNET, 210_000),
        (TESTNET4, 210_000),
        (SIGNET, 210_000),
        (REGTEST, 150),
    ],
)
def test_halving_interval(network: Network, interval: int) -> None:
    assert network.halving_interval == interval
    assert network.initial_subsidy == 50 * COIN


@pytest.mark.parametrize(
    ("height", "subsidy"),
    [
        (0, 50 * COIN),
        (209_999, 50 * COIN),
        (210_000, 25 * COIN),
        (420_000, 1_250_000_000),
        (630_000, 625_000_000),
        (840_000, 312_500_000),
        (6_929_999, 1),
        (6_930_000, 0),
        (64 * 210_000, 0),
        (10**9, 0),
    ],
)
def test_mainnet_subsidy(height: int, subsidy: int) -> None:
    assert MAINNET.block_subsidy(height) == subsidy


@pytest.mark.parametrize(
    ("height", "subsidy"),
    [(0, 50 * COIN), (149, 50 * COIN), (150, 25 * COIN), (329, 1_250_000_000), (64 * 150, 0)],
)
def test_regtest_subsidy(height: int, subsidy: int) -> None:
    assert REGTEST.block_subsidy(height) == subsidy


@pytest.mark.parametrize("network", NETWORKS, ids=lambda n: n.name)
def test_subsidy_halvings_like_core(network: Network) -> None:
    previous = network.initial_subsidy * 2
    for halvings in range(64):
        subsidy = network.block_subsidy(halvings * network.halving_interval)
        assert subsidy <= network.initial_subsidy
        assert subsidy == previous // 2
        previous = subsidy
    assert network.block_subsidy(64 * network.halving_interval) == 0


def test_total_supply() -> None:
    total = sum(MAINNET.block_subsidy(h) * 210_000 for h in range(0, 64 * 210_000, 210_000))
    assert total == 2_099_999_997_690_000


def test_negative_height_rejected() -> None:
    with pytest.raises(ValueError):
        MAINNET.block_subsidy(-1)
