"""TLS Stratum ports: real certificate files, real TLS handshakes on real sockets, and the
real listener under asyncio and uvloop (no bitcoind: only subscribe is needed). ~10 s."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import re
import ssl
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pool import preflight
from pool.bitcoin import network_for_chain
from pool.config import (
    DEFAULT_CONFIG,
    Config,
    ConfigError,
    LimitsConfig,
    PoolConfig,
    PortConfig,
    StratumConfig,
    load,
)
from pool.server import tls
from pool.server.server import StratumServer
from tests.integration.harness import wait_for

TLS_PORT = PortConfig(port=0, tls=True)


def sha256_of_pem(cert: Path) -> str:
    """The fingerprint computed independently: ssl's own PEM -> DER, hashlib."""
    der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def test_self_signed_pair_made_once_then_reused(tmp_path: Path) -> None:
    cert, key = tls.self_signed_paths(tmp_path)
    assert tls.listener(0, TLS_PORT, tmp_path, "127.0.0.1", create=False) is None
    assert not cert.exists() and not key.exists()  # a config check makes nothing

    made = tls.listener(0, TLS_PORT, tmp_path, "127.0.0.1")
    assert made is not None and made.self_signed and made.cert == cert
    assert key.stat().st_mode & 0o777 == 0o600
    assert made.fingerprint == sha256_of_pem(cert)
    before = (cert.stat().st_mtime_ns, key.stat().st_mtime_ns, key.stat().st_ino)

    again = tls.listener(3, TLS_PORT, tmp_path, "127.0.0.1")
    assert again is not None and again.fingerprint == made.fingerprint
    assert (cert.stat().st_mtime_ns, key.stat().st_mtime_ns, key.stat().st_ino) == before
    assert tls.listener(0, PortConfig(port=0), tmp_path, "127.0.0.1") is None  # a plain port


def test_self_signed_certificate_names_and_validity(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    tls.generate_self_signed(cert, key, "10.1.2.3")
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    assert {"127.0.0.1", "::1", "10.1.2.3"} <= ips
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert parsed.not_valid_after_utc.year == 9999  # RFC 5280: no expiry date
    assert isinstance(parsed.public_key(), ec.EllipticCurvePublicKey)
    tls.generate_self_signed(cert, key, "0.0.0.0")  # every address: not a name of the cert
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "0.0.0.0" not in {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


def test_half_written_pair(tmp_path: Path) -> None:
    cert, key = tls.self_signed_paths(tmp_path)
    key.parent.mkdir()
    key.write_text("a key left by a start that crashed before its certificate")
    made = tls.listener(0, TLS_PORT, tmp_path, "")  # never served: replaced
    assert made is not None and made.fingerprint == sha256_of_pem(cert)
    key.unlink()  # a certificate without its key: miners may have pinned it, not replaced
    with pytest.raises(tls.TlsError, match=r"stratum\.ports\[0\]\.tls .*key .* is missing"):
        tls.listener(0, TLS_PORT, tmp_path, "")


def configured(tmp_path: Path, cert: Path, key: Path) -> PortConfig:
    return dataclasses.replace(TLS_PORT, tls_cert=str(cert), tls_key=str(key))


def test_configured_pair_faults_name_the_key(tmp_path: Path) -> None:
    a_cert, a_key = tmp_path / "a.crt", tmp_path / "a.key"
    b_cert, b_key = tmp_path / "b.crt", tmp_path / "b.key"
    tls.generate_self_signed(a_cert, a_key, "")
    tls.generate_self_signed(b_cert, b_key, "")
    good = tls.listener(1, configured(tmp_path, a_cert, a_key), tmp_path, "")
    assert good is not None and not good.self_signed
    assert good.fingerprint == sha256_of_pem(a_cert)
    assert not (tmp_path / "tls").exists()  # a configured pair: nothing generated

    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not PEM at all\n")
    encrypted = tmp_path / "enc.key"
    private = serialization.load_pem_private_key(a_key.read_bytes(), password=None)
    encrypted.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    cases = [
        (tmp_path / "no.crt", a_key, r"ports\[1\]\.tls_cert: cannot read .*no\.crt"),
        (a_cert, tmp_path / "no.key", r"ports\[1\]\.tls_key: cannot read .*no\.key"),
        (a_cert, b_key, r"ports\[1\]\.tls_key: .*b\.key does not match the certificate"),
        (garbage, a_key, r"ports\[1\]\.tls_cert: .*garbage\.pem is not a PEM certificate"),
        (a_cert, garbage, r"ports\[1\]\.tls_key: .*garbage\.pem is not a PEM private key"),
        (a_cert, encrypted, r"ports\[1\]\.tls_key: .*enc\.key is encrypted"),
        (tmp_path, a_key, r"ports\[1\]\.tls_cert: cannot read"),  # a directory
    ]
    for cert, key, message in cases:
        with pytest.raises(tls.TlsError, match=message):
            tls.listener(1, configured(tmp_path, cert, key), tmp_path, "")


def test_config_keys_validated(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    for text in (
        "[[stratum.ports]]\nport = 1\ntls_cert = 'a.crt'\ntls_key = 'a.key'\n",  # no tls = true
        "[[stratum.ports]]\nport = 1\ntls = true\ntls_cert = 'a.crt'\n",  # no key
        "[[stratum.ports]]\nport = 1\ntls = true\ntls_key = 'a.key'\n",  # no certificate
    ):
        path.write_text(text)
        with pytest.raises(ConfigError, match=r"stratum\.ports\[0\] needs tls = true and both"):
            load(path, env={})
    path.write_text("[[stratum.ports]]\nport = 1\ntls = 'yes'\n")
    with pytest.raises(ConfigError, match=r"stratum\.ports\[0\]\.tls must be true or false"):
        load(path, env={})


def test_shipped_example_loads_when_uncommented(tmp_path: Path) -> None:
    """configs/regtest.toml carries a commented TLS port: uncommented it is a valid config."""
    text = DEFAULT_CONFIG.read_text()
    block = re.search(r"^# \[\[stratum\.ports\]\].*?tls = true.*?(?=^\s*$|^\[)", text, re.M | re.S)
    assert block is not None, "the commented TLS port example is gone"
    example = "\n".join(line.removeprefix("# ") for line in block.group(0).splitlines())
    path = tmp_path / "c.toml"
    path.write_text(text.replace(block.group(0), example + "\n"))
    ports = load(path, env={}).stratum.ports
    assert [p.tls for p in ports] == [False, True]


def test_preflight_checks_tls_before_anything_starts(tmp_path: Path) -> None:
    a_cert, a_key = tmp_path / "a.crt", tmp_path / "a.key"
    b_cert, b_key = tmp_path / "b.crt", tmp_path / "b.key"
    tls.generate_self_signed(a_cert, a_key, "")
    tls.generate_self_signed(b_cert, b_key, "")
    data = tmp_path / "data"
    ports = (PortConfig(port=0), TLS_PORT, configured(tmp_path, a_cert, b_key))
    config = Config(pool=PoolConfig(data_dir=str(data)), stratum=StratumConfig(ports=ports))
    with pytest.raises(preflight.PreflightError, match=r"^stratum\.ports\[2\]\.tls_key: "):
        preflight.check_environment(config, create=False)
    assert not (data / "tls").exists()  # a config check (create=False) writes nothing
    fixed = dataclasses.replace(
        config, stratum=StratumConfig(ports=(*ports[:2], configured(tmp_path, b_cert, b_key)))
    )
    preflight.check_environment(fixed, create=False)
    assert not (data / "tls").exists()
    preflight.check_environment(fixed)  # the start: the self-signed pair is made here
    assert (data / "tls" / "stratum.crt").is_file()


async def _serve_and_probe(data_dir: Path) -> dict[str, Any]:
    """A real StratumServer with one TLS port: a verifying client subscribes (sending at
    once, with the handshake's end), a plain one is closed, a silent one too, at the timeout."""
    timeout = 1.0
    config = Config(
        pool=PoolConfig(data_dir=str(data_dir)),
        stratum=StratumConfig(ports=(TLS_PORT,)),
        limits=LimitsConfig(handshake_timeout_seconds=timeout),
    )

    async def no_blocks(_: object) -> Any:
        raise AssertionError("no block expected")

    server = StratumServer(config, network_for_chain("regtest"), submit_block=no_blocks)
    await server.start()
    port = server.bound_ports[0]
    out: dict[str, Any] = {}
    try:
        context = ssl.create_default_context(cafile=str(data_dir / "tls" / "stratum.crt"))
        context.verify_flags |= ssl.VERIFY_X509_STRICT
        for max_version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.MAXIMUM_SUPPORTED):
            context.maximum_version = max_version
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
            writer.write(b'{"id": 1, "method": "mining.subscribe", "params": []}\n')
            answer = json.loads(await asyncio.wait_for(reader.readline(), 10))
            out.setdefault("versions", []).append(writer.get_extra_info("ssl_object").version())
            out.setdefault("answers", []).append(answer)
            writer.close()
        for name, first in (
            ("plain", b'{"id": 1, "method": "mining.subscribe"}\n'),
            ("silent", b""),
        ):
            started = time.monotonic()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(first)
            try:
                rest = await asyncio.wait_for(reader.read(), timeout + 10)
            except ConnectionError:
                rest = b""
            out[name] = (rest, time.monotonic() - started)
            writer.close()
        await wait_for(lambda: not server.sessions, 10, "every slot freed", lambda: server.sessions)
    finally:
        await server.stop()
    return out


def _run(loop_name: str, coro: Callable[[], Coroutine[Any, Any, dict[str, Any]]]) -> dict[str, Any]:
    if loop_name == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.run(coro())  # type: ignore[no-any-return]
    return asyncio.run(coro())


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_tls_listener_on_each_event_loop(loop_name: str, tmp_path: Path) -> None:
    out = _run(loop_name, lambda: _serve_and_probe(tmp_path))
    assert out["versions"][0] == "TLSv1.2" and out["versions"][1] in ("TLSv1.2", "TLSv1.3")
    for answer in out["answers"]:
        assert answer["id"] == 1 and answer["error"] is None and answer["result"], answer
    assert out["plain"][0] == b"" and out["plain"][1] < 1.0, out["plain"]  # closed at once
    assert out["silent"][0] == b"" and 0.9 <= out["silent"][1] < 11, out["silent"]


def test_context_refuses_tls_below_1_2(tmp_path: Path) -> None:
    made = tls.listener(0, TLS_PORT, tmp_path, "")
    assert made is not None
    assert made.context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert os.stat(made.key).st_mode & 0o777 == 0o600
