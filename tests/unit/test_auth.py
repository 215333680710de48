"""Usernames and passwords: ADDRESS[.worker], d=<difficulty>."""

from __future__ import annotations

import pytest

from pool.bitcoin import MAINNET, REGTEST
from pool.server.auth import AuthError, parse_credentials, parse_password

# BIP173's P2WPKH example re-encoded for regtest (hrp bcrt) and the mainnet original.
REGTEST_ADDR = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
MAINNET_ADDR = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"


def test_address_and_worker() -> None:
    creds = parse_credentials(f"{REGTEST_ADDR}.rig-1", "x", REGTEST)
    assert (creds.address, creds.worker, creds.name) == (
        REGTEST_ADDR,
        "rig-1",
        f"{REGTEST_ADDR}.rig-1",
    )
    assert creds.payout_script.hex() == "0014751e76e8199196d454941c45d1b3a323f1433bd6"
    assert creds.fixed_difficulty is None
    bare = parse_credentials(REGTEST_ADDR, "", REGTEST)
    assert bare.worker == "" and bare.name == REGTEST_ADDR


def test_address_of_another_chain_names_both() -> None:
    with pytest.raises(AuthError) as info:
        parse_credentials(f"{MAINNET_ADDR}.w", "x", REGTEST)
    assert MAINNET_ADDR in str(info.value) and "regtest" in str(info.value)
    assert parse_credentials(MAINNET_ADDR, "x", MAINNET).address == MAINNET_ADDR


@pytest.mark.parametrize(
    "username",
    ["", "   ", "account.worker", f"{REGTEST_ADDR}.bad name", f"{REGTEST_ADDR}." + "w" * 65],
)
def test_bad_usernames(username: str) -> None:
    with pytest.raises(AuthError):
        parse_credentials(username, "x", REGTEST)


@pytest.mark.parametrize(
    ("password", "expected"),
    [
        ("x", None),
        ("", None),
        ("d=0.001", 0.001),
        ("x,d=16", 16.0),
        ("d=2 x", 2.0),
        ("D=0.5", 0.5),
    ],
)
def test_password_difficulty(password: str, expected: float | None) -> None:
    assert parse_password(password) == expected


@pytest.mark.parametrize("password", ["d=abc", "d=0", "d=-1", "d=inf", "d=nan"])
def test_bad_password_difficulty_is_an_error(password: str) -> None:
    with pytest.raises(AuthError, match="d="):
        parse_password(password)


def test_upper_case_bech32_is_the_same_canonical_address() -> None:
    upper = parse_credentials(f"{REGTEST_ADDR.upper()}.rig", "x", REGTEST)
    lower = parse_credentials(f"{REGTEST_ADDR}.rig", "x", REGTEST)
    assert upper.address == lower.address == REGTEST_ADDR
    assert upper.name == lower.name and upper.payout_script == lower.payout_script
    assert upper.username == f"{REGTEST_ADDR.upper()}.rig"  # the key the miner submits with


def test_mixed_case_bech32_is_refused() -> None:
    mixed = REGTEST_ADDR[:10] + REGTEST_ADDR[10:].upper()
    with pytest.raises(AuthError, match="mixed upper and lower case"):
        parse_credentials(mixed, "x", REGTEST)


@pytest.mark.parametrize(
    ("username", "says"),
    [
        (f"{REGTEST_ADDR}.", "empty worker name"),
        (f" {REGTEST_ADDR}.rig", "spaces around it"),
        (f"{REGTEST_ADDR}.rig ", "spaces around it"),
        (f"{REGTEST_ADDR}.ri\x00g", "control characters"),
        (f"{REGTEST_ADDR}.r\tg", "control characters"),
        (f"{REGTEST_ADDR}." + "w" * 65, "1-64 characters"),
        ("x" * 20000, "too long"),
        (f"{REGTEST_ADDR}.{'é' * 20}", "1-64 characters"),
    ],
)
def test_bad_worker_names_are_refused_with_a_clear_error(username: str, says: str) -> None:
    with pytest.raises(AuthError, match=says) as info:
        parse_credentials(username, "x", REGTEST)
    assert len(str(info.value)) < 400  # echoed input is clipped


def test_an_upper_case_address_cannot_bypass_an_address_ban() -> None:
    from pool.jobs import JobTable
    from pool.server.context import PoolContext

    ctx = PoolContext(network=REGTEST, jobs=JobTable(max_jobs=4), extranonce1_size=4, now=0.0)
    upper = parse_credentials(f"{REGTEST_ADDR.upper()}.rig", "x", REGTEST)
    ctx.banned_workers = {REGTEST_ADDR}
    assert ctx.worker_banned(upper)
    ctx.banned_workers = {REGTEST_ADDR.upper()}  # a ban written in upper case holds too
    assert ctx.worker_banned(parse_credentials(f"{REGTEST_ADDR}.x", "x", REGTEST))
    ctx.banned_workers = {f"{REGTEST_ADDR}.rig"}
    assert ctx.worker_banned(upper)
    assert not ctx.worker_banned(parse_credentials(f"{REGTEST_ADDR}.other", "x", REGTEST))
