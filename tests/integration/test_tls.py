"""Stratum over TLS: the real pool on a real regtest bitcoind, a TLS port beside a plain one.

A bfgminer-style client (Python's ssl) verifies the pool's self-signed certificate by its file
or by its pinned SHA-256 fingerprint and mines; a plain-TCP client on the TLS port, and one that
sends nothing, are closed (not left hanging); the per-IP limits hold for connections still in
their TLS handshake; the certificate is made once and reused; a key that does not match its
certificate stops the start before the node is asked anything. About 10 s of wall time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pool.app import PoolApp, StartupError
from pool.config import Config, LimitsConfig, PortConfig
from pool.node.managed import ManagedNode
from pool.server.tls import generate_self_signed
from tests.integration.harness import (
    RawClient,
    pool_config,
    solve,
    start_pool,
    wait_for,
    wallet_address,
)

pytestmark = pytest.mark.integration

DIFFS = {"start_difficulty": 1e-5, "min_difficulty": 1e-8, "max_difficulty": 1e6}
PLAIN = PortConfig(port=0, **DIFFS)  # type: ignore[arg-type]
TLS = PortConfig(port=0, tls=True, **DIFFS)  # type: ignore[arg-type]


def tls_config(node: ManagedNode, data_dir: Path, address: str, **limits: Any) -> Config:
    return pool_config(node, data_dir, address, ports=(PLAIN, TLS), limits=LimitsConfig(**limits))


@asynccontextmanager
async def tls_pool(config: Config) -> AsyncIterator[tuple[PoolApp, int]]:
    app = await start_pool(config)
    assert app.server is not None
    try:
        yield app, app.server.bound_ports[1]
    finally:
        await app.stop()


def verifying_context(cert: Path) -> ssl.SSLContext:
    """As a careful miner: the pool's certificate file is the only trust anchor, host name
    checked, strict X.509 checks on."""
    context = ssl.create_default_context(cafile=str(cert))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


async def tls_client(port: int, context: ssl.SSLContext) -> RawClient:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"
    )
    return RawClient(reader, writer)


async def closed_by_pool(reader: asyncio.StreamReader, timeout: float) -> bool:
    """True when the pool closes the connection (EOF or reset) within ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass
    except ConnectionError:
        return True
    except TimeoutError:
        return False
    return True


async def test_tls_client_mines_and_plain_port_stays_plain(
    regtest_node: ManagedNode, tmp_path: Path
) -> None:
    address = await wallet_address(regtest_node)
    async with tls_pool(tls_config(regtest_node, tmp_path, address)) as (app, port):
        assert app.server is not None and app.api is not None
        cert, key = tmp_path / "tls" / "stratum.crt", tmp_path / "tls" / "stratum.key"
        assert key.stat().st_mode & 0o777 == 0o600
        listed = app.server.port_list
        assert [p["tls"] for p in listed] == [False, True]
        der = ssl.PEM_cert_to_DER_cert(cert.read_text())
        pinned = ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
        assert listed[1]["fingerprint_sha256"] == pinned

        # Verified by the certificate file: subscribe, authorize, a share accepted.
        client = await tls_client(port, verifying_context(cert))
        version = client.writer.get_extra_info("ssl_object").version()
        assert version in ("TLSv1.2", "TLSv1.3"), version
        worker = f"{address}.tls"
        diff, notify = await client.handshake(worker)
        share = solve(notify["params"], client.extranonce1, bytes(client.extranonce2_size), diff)
        client.send(10, "mining.submit", share.params(worker))
        answer = await client.response(10, timeout=30)
        assert answer["result"] is True and answer["error"] is None, answer
        await wait_for(lambda: app.server.stats.accepted >= 1, 10, "the share counted")  # type: ignore[union-attr]
        await client.close()

        # Verified by the pinned fingerprint only (no CA): the same pool.
        pinning = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        pinning.check_hostname, pinning.verify_mode = False, ssl.CERT_NONE
        pinned_client = await tls_client(port, pinning)
        seen = pinned_client.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert ":".join(f"{b:02X}" for b in hashlib.sha256(seen).digest()) == pinned
        pinned_client.send(1, "mining.subscribe", ["bfgminer/5.5.0"])
        assert (await pinned_client.response(1))["result"] is not None
        await pinned_client.close()

        # The plain port is untouched: Stratum in the clear.
        plain = await RawClient.connect(app.server.bound_ports[0])
        plain.send(1, "mining.subscribe", [])
        assert (await plain.response(1))["result"] is not None
        await plain.close()

        # The API's port list says which port is TLS.
        url = f"http://127.0.0.1:{app.api.port}/api/pool"
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            body = await resp.json()
        assert [(p["port"], p["tls"]) for p in body["stratum_ports"]] == [
            (app.server.bound_ports[0], False),
            (port, True),
        ]
        assert body["stratum_ports"][1]["fingerprint_sha256"] == pinned
        assert "cert" not in body["stratum_ports"][1]  # no server file path in the public API


async def test_plain_and_silent_clients_on_the_tls_port_are_closed(
    regtest_node: ManagedNode, tmp_path: Path
) -> None:
    timeout = 3.0
    address = await wallet_address(regtest_node)
    config = tls_config(regtest_node, tmp_path, address, handshake_timeout_seconds=timeout)
    async with tls_pool(config) as (app, port):
        assert app.server is not None
        # A plain Stratum line on the TLS port: not a TLS ClientHello, closed at once.
        started = time.monotonic()
        plain = await RawClient.connect(port)
        plain.send(1, "mining.subscribe", ["plain-miner/1"])
        assert await closed_by_pool(plain.reader, timeout + 10), "plain client left hanging"
        plain_seconds = time.monotonic() - started
        assert plain_seconds < timeout, f"closed after {plain_seconds:.2f} s, not at once"

        # Nothing sent at all: closed at the handshake timeout, not before.
        started = time.monotonic()
        silent = await RawClient.connect(port)
        assert await closed_by_pool(silent.reader, timeout + 10), "silent client left hanging"
        silent_seconds = time.monotonic() - started
        assert silent_seconds >= timeout - 0.1, f"closed after {silent_seconds:.2f} s"
        await wait_for(lambda: not app.server.sessions, 10, "both slots freed")  # type: ignore[union-attr]
        print(
            f"plain client closed after {plain_seconds:.3f} s, silent after {silent_seconds:.3f} s"
        )


async def test_limits_hold_during_the_tls_handshake(
    regtest_node: ManagedNode, tmp_path: Path
) -> None:
    """Connections still in their TLS handshake are admitted at TCP accept like plain ones: an
    IP's half-open ones are capped (the oldest dropped), and a banned IP gets no handshake."""
    address = await wallet_address(regtest_node)
    config = tls_config(
        regtest_node, tmp_path, address, max_unauthorized_per_ip=3, handshake_timeout_seconds=60
    )
    async with tls_pool(config) as (app, port):
        server = app.server
        assert server is not None
        silent = [await RawClient.connect(port) for _ in range(5)]
        await wait_for(
            lambda: len(server.sessions) == 3, 10, "3 half-open", lambda: server.sessions
        )
        for client in silent[:2]:  # the two oldest made room, long before the 60 s timeout
            assert await closed_by_pool(client.reader, 10)
        for client in silent:
            await client.close()
        await wait_for(lambda: not server.sessions, 10, "slots freed")

        server.banned_ips.add("127.0.0.1")
        context = verifying_context(tmp_path / "tls" / "stratum.crt")
        with pytest.raises((ConnectionError, ssl.SSLError)):
            await tls_client(port, context)
        server.banned_ips.clear()
        client = await tls_client(port, context)  # and in again once unbanned
        client.send(1, "mining.subscribe", [])
        assert (await client.response(1))["result"] is not None
        await client.close()


async def test_certificate_made_once_and_reused(regtest_node: ManagedNode, tmp_path: Path) -> None:
    address = await wallet_address(regtest_node)
    config = tls_config(regtest_node, tmp_path, address)
    key = tmp_path / "tls" / "stratum.key"
    async with tls_pool(config) as (app, _port):
        assert app.server is not None
        first = app.server.port_list[1]["fingerprint_sha256"]
        made = key.stat()
    async with tls_pool(config) as (app, port):
        assert app.server is not None
        assert app.server.port_list[1]["fingerprint_sha256"] == first
        again = key.stat()
        assert (again.st_ino, again.st_mtime_ns) == (made.st_ino, made.st_mtime_ns)
        client = await tls_client(port, verifying_context(tmp_path / "tls" / "stratum.crt"))
        client.send(1, "mining.subscribe", [])
        assert (await client.response(1))["result"] is not None
        await client.close()


async def test_mismatched_key_stops_the_start_naming_it(
    regtest_node: ManagedNode, tmp_path: Path
) -> None:
    address = await wallet_address(regtest_node)
    generate_self_signed(tmp_path / "a.crt", tmp_path / "a.key", "127.0.0.1")
    generate_self_signed(tmp_path / "b.crt", tmp_path / "b.key", "127.0.0.1")
    mixed = dataclasses.replace(
        TLS, tls_cert=str(tmp_path / "a.crt"), tls_key=str(tmp_path / "b.key")
    )
    config = pool_config(regtest_node, tmp_path / "data", address, ports=(PLAIN, mixed))
    app = PoolApp(config)
    with pytest.raises(StartupError, match=r"stratum\.ports\[1\]\.tls_key: .*does not match"):
        await app.start()
    assert app.rpc is None  # found before the node was contacted
    missing = dataclasses.replace(mixed, tls_key=str(tmp_path / "nope.key"))
    app = PoolApp(
        dataclasses.replace(
            config, stratum=dataclasses.replace(config.stratum, ports=(PLAIN, missing))
        )
    )
    with pytest.raises(
        StartupError, match=r"stratum\.ports\[1\]\.tls_key: cannot read .*nope\.key"
    ):
        await app.start()
