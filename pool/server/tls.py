"""Stratum over TLS: a port's certificate and SSLContext, and the gate of its connections.

A port with ``tls = true`` serves the same Stratum inside TLS 1.2+. Its certificate and key
are ``tls_cert`` / ``tls_key`` (PEM files), or, when neither is set, the pool's own
self-signed pair in ``<data_dir>/tls/`` (made on the first start, reused after: miners pin
it by the SHA-256 fingerprint logged at every start). Every fault of those files is a
``TlsError`` whose message starts with the config key at fault.

A TLS connection is admitted like any other at TCP accept (bans, the per-IP guard and the
connection limits run before any TLS work, see ``TlsGate``), then upgraded with
``loop.start_tls``; a client that does not finish the TLS handshake within
``limits.handshake_timeout_seconds`` is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import ipaddress
import os
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import structlog
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pool.config import PortConfig
from pool.server.session import Session

log = structlog.get_logger("pool.server.tls")

TLS_DIR = "tls"  # under pool.data_dir: the self-signed pair
CERT_FILE = "stratum.crt"
KEY_FILE = "stratum.key"
# RFC 5280 4.1.2.5: 99991231235959Z means "no well-defined expiration date" (a pinned
# self-signed certificate has nothing to renew).
NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)


class TlsError(RuntimeError):
    """The message starts with the config key at fault."""


@dataclass(frozen=True)
class TlsListener:
    """What a TLS port serves: its context, and where its certificate came from."""

    context: ssl.SSLContext
    cert: Path
    key: Path
    fingerprint: str  # SHA-256 of the certificate (DER), "AB:CD:..." as openssl prints it
    self_signed: bool  # the pool's own pair in <data_dir>/tls (not configured)


def fingerprint(der: bytes) -> str:
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def _read(key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsError(f"{key}: cannot read {path} ({exc.strerror or exc})") from None


def _load_pair(cert_key: str, key_key: str, cert: Path, key: Path) -> str:
    """Check that ``cert`` is a PEM certificate and ``key`` its unencrypted PEM private key;
    the certificate's fingerprint."""
    try:
        certs = x509.load_pem_x509_certificates(_read(cert_key, cert))
    except ValueError:
        certs = []
    if not certs:
        raise TlsError(f"{cert_key}: {cert} is not a PEM certificate (BEGIN CERTIFICATE)")
    try:
        private = serialization.load_pem_private_key(_read(key_key, key), password=None)
    except TypeError:
        raise TlsError(
            f"{key_key}: {key} is encrypted; the pool needs an unencrypted key "
            "(keep the file mode 0600)"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise TlsError(f"{key_key}: {key} is not a PEM private key ({exc})") from None
    raw = serialization.PublicFormat.SubjectPublicKeyInfo
    pem = serialization.Encoding.PEM
    if certs[0].public_key().public_bytes(pem, raw) != private.public_key().public_bytes(pem, raw):
        raise TlsError(f"{key_key}: {key} does not match the certificate {cert_key} ({cert})")
    if key.stat().st_mode & 0o077:
        log.warning(
            "tls_key_readable_by_others", key=str(key), mode=oct(key.stat().st_mode & 0o777)
        )
    return fingerprint(certs[0].public_bytes(serialization.Encoding.DER))


def server_context(cert_key: str, cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_COMPRESSION
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise TlsError(f"{cert_key}: OpenSSL refused {cert} with its key {key}: {exc}") from None
    return context


def _names(host: str) -> list[x509.GeneralName]:
    """The self-signed certificate's names: localhost, the loopback addresses, this machine's
    host name and the configured listening host when it is a specific one."""
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    hostname = socket.gethostname()
    extra = [hostname] if hostname and hostname != "localhost" else []
    if host and host not in ("localhost", *extra):
        extra.append(host)
    for name in extra:
        try:
            address = ipaddress.ip_address(name.strip("[]"))
        except ValueError:
            if all(part.isascii() and part for part in name.split(".")):
                names.append(x509.DNSName(name))
            continue
        entry = x509.IPAddress(address)
        if not address.is_unspecified and entry not in names:
            names.append(entry)
    return names


def _write_private(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` whole or not at all (a temporary file renamed), with ``mode``."""
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power loss
    finally:
        os.close(directory)


def generate_self_signed(cert: Path, key: Path, host: str) -> str:
    """A new EC P-256 key (mode 0600) and a self-signed certificate for it; the fingerprint.
    The key is written first: a crash between the two leaves a key without a certificate,
    which the next start replaces (no miner can have pinned a certificate never served)."""
    private = ec.generate_private_key(ec.SECP256R1())
    public = private.public_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stratum-pool self-signed")])
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(public)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(NOT_AFTER)
        .add_extension(x509.SubjectAlternativeName(_names(host)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(private, hashes.SHA256())
    )
    key_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_private(key, key_pem, 0o600)
    _write_private(cert, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    return fingerprint(certificate.public_bytes(serialization.Encoding.DER))


def self_signed_paths(data_dir: Path) -> tuple[Path, Path]:
    return data_dir / TLS_DIR / CERT_FILE, data_dir / TLS_DIR / KEY_FILE


def listener(
    index: int, port: PortConfig, data_dir: str | Path, host: str, *, create: bool = True
) -> TlsListener | None:
    """The TLS side of ``stratum.ports[index]`` (None for a plain port), its files checked.
    Without a configured pair the self-signed one is made when missing (and ``create``;
    otherwise None is returned for it, the first start will make it)."""
    if not port.tls:
        return None
    key_name = f"stratum.ports[{index}]"
    if port.tls_cert:
        cert = Path(port.tls_cert).expanduser().resolve()
        key = Path(port.tls_key).expanduser().resolve()
        cert_key, key_key = f"{key_name}.tls_cert", f"{key_name}.tls_key"
        self_signed = False
    else:
        cert, key = self_signed_paths(Path(data_dir).expanduser().resolve())
        cert_key = key_key = f"{key_name}.tls (the self-signed pair in pool.data_dir)"
        self_signed = True
        if cert.exists() and not key.exists():
            raise TlsError(
                f"{cert_key}: {cert} is there but its key {key} is missing: restore the key, or "
                f"delete {cert} to have a new pair made (miners that pinned it must re-pin)"
            )
        if not cert.exists():
            if not create:
                return None
            try:
                digest = generate_self_signed(cert, key, host)
            except OSError as exc:
                raise TlsError(
                    f"{cert_key}: cannot write {cert.parent} ({exc.strerror or exc})"
                ) from None
            log.warning("tls_certificate_generated", cert=str(cert), fingerprint_sha256=digest)
    digest = _load_pair(cert_key, key_key, cert, key)
    return TlsListener(server_context(cert_key, cert, key), cert, key, digest, self_signed)


# OpenSSL's reasons for a first record that is not TLS at all (a Stratum line, HTTP).
NOT_TLS_REASONS = frozenset({"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL"})


def handshake_failure(exc: BaseException) -> str:
    """Why a TLS handshake failed, as the connection's close reason."""
    if isinstance(exc, ssl.SSLError) and exc.reason in NOT_TLS_REASONS:
        return f"not TLS (plain TCP on a TLS port?): {exc.reason}"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "peer closed during the TLS handshake"
    return f"TLS handshake failed: {str(exc) or type(exc).__name__}"


class TlsGate(asyncio.Protocol):
    """A TLS port's connection. At TCP accept its session is admitted like a plain one (on
    the raw transport: bans, the per-IP guard and the limits apply before any TLS work); then
    the socket is handed, unread, to ``loop.connect_accepted_socket`` with the port's
    SSLContext (the raw transport is closed without reading: asyncio and uvloop alike).
    During the handshake the session holds a ``_Handshaking`` stand-in (closing it, as an
    eviction or a ban does, ends the handshake); once it is done the session is the TLS
    transport's protocol. A handshake that fails or times out ends the session."""

    __slots__ = ("_lost", "_task", "_timeout", "session", "tls")

    def __init__(self, session: Session, tls: TlsListener, handshake_timeout: float) -> None:
        self.session = session
        self.tls = tls
        self._timeout = handshake_timeout
        self._task: asyncio.Task[None] | None = None
        self._lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        session = self.session
        if self._task is not None:  # the handshake is done: the session takes over
            tls = cast(asyncio.Transport, transport)
            session.transport = tls
            tls.set_protocol(session)
            return
        raw = cast(asyncio.Transport, transport)
        session.connection_made(raw)  # admission: refused ones are closed here
        if session.closed:
            return
        sock = raw.get_extra_info("socket")
        try:
            own = sock.dup()  # the same connection, for the TLS transport
        except (OSError, AttributeError) as exc:
            session.abort(f"cannot start TLS: {exc!r}")
            return
        self._task = asyncio.ensure_future(self._handshake(own))
        session.transport = cast(asyncio.Transport, _Handshaking(self._task))
        raw.close()  # closes its file descriptor only, before it read anything

    async def _handshake(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                lambda: self, sock, ssl=self.tls.context, ssl_handshake_timeout=self._timeout
            )
        except asyncio.CancelledError:  # the session was closed during the handshake
            sock.close()
            self._gone(None)
        except Exception as exc:  # ssl.SSLError, the handshake timeout, a reset: all OSError
            sock.close()
            self._gone(ConnectionError(handshake_failure(exc)))

    def _gone(self, exc: Exception | None) -> None:
        """The connection is over: the session hears it once (its slot is freed)."""
        if not self._lost:
            self._lost = True
            self.session.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Never called: the raw transport is closed before reading, the TLS one is the
        session's from its first byte."""

    def connection_lost(self, exc: Exception | None) -> None:
        if self._task is None:  # the raw connection, refused at admission (or gone)
            self._gone(exc)


class _Handshaking:
    """The session's transport while the TLS handshake runs: nothing can be written yet;
    closing it ends the handshake (and so the connection)."""

    __slots__ = ("_task",)

    def __init__(self, task: asyncio.Task[None]) -> None:
        self._task = task

    def write(self, data: bytes) -> None:
        pass  # the pool writes nothing before the miner has spoken, which needs TLS

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self._task.done()

    def close(self) -> None:
        self._task.cancel()

    def abort(self) -> None:
        self._task.cancel()

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


def gate_factory(
    make_session: Callable[[], Session], secure: TlsListener, handshake_timeout: float
) -> Callable[[], TlsGate]:
    """The protocol factory of a TLS port (``make_session`` is the plain port's)."""
    return lambda: TlsGate(make_session(), secure, handshake_timeout)


def describe(secure: TlsListener | None) -> dict[str, object]:
    """A port's TLS facts for the API's port list (no file paths: the API is public)."""
    if secure is None:
        return {"tls": False}
    return {
        "tls": True,
        "fingerprint_sha256": secure.fingerprint,
        "self_signed": secure.self_signed,
    }
