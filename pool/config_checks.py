"""Config checks that need more than a field's type: addresses, ports across sections.

Split from ``pool.config`` (which re-exports them) to keep each module one concern.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from pool.config import Config

MAX_MESSAGE_CHARS = 4096  # api.max_message_chars at most (a miner shows the text in its log)


def zmq_endpoint_problem(endpoint: str) -> str | None:
    """Why ``endpoint`` is not a usable ``tcp://HOST:PORT`` ZMQ address (None when it is)."""
    parts = urlsplit(endpoint)
    if parts.scheme != "tcp":
        return "must be tcp://HOST:PORT"
    if parts.path or parts.query or parts.fragment or parts.username or parts.password:
        return "must be tcp://HOST:PORT, nothing else"
    try:
        port = parts.port
    except ValueError:
        return "has a port that is not 1..65535"
    if not parts.hostname or not port:
        return "must be tcp://HOST:PORT with a host and a port 1..65535"
    if parts.hostname in ("*", "0.0.0.0", "::"):
        return "must name the host to connect to, not a wildcard"
    return None


def hosts_overlap(a: str, b: str) -> bool:
    """Whether listeners on hosts ``a`` and ``b`` with the same port would collide: only two
    different concrete IP addresses are known not to."""
    try:
        ip_a, ip_b = ipaddress.ip_address(a.strip("[]")), ipaddress.ip_address(b.strip("[]"))
    except ValueError:
        return True  # a name ("localhost") or "" (every address)
    return ip_a == ip_b or ip_a.is_unspecified or ip_b.is_unspecified


def validate_api(config: Config, fail: Callable[[str, str], None]) -> None:
    api = config.api
    if not 0 <= api.port <= 65535:
        fail("api.port", "must be 0..65535")
    if api.enabled and api.port:
        for i, port in enumerate(config.stratum.ports):
            if port.port == api.port and hosts_overlap(api.host, config.stratum.host):
                fail("api.port", f"{api.port} is also stratum.ports[{i}].port: use another port")
    for i, host in enumerate(api.allowed_hosts):
        if not host or any(c.isspace() or c in "/@?#" for c in host):
            fail(f"api.allowed_hosts[{i}]", f"must be a host name or address, got {host!r}")
    for name, least in (
        ("max_request_line_bytes", 1024),
        ("max_header_bytes", 1024),
        ("max_headers", 16),
        ("max_body_bytes", 1024),
    ):
        if getattr(api, name) < least:
            fail(f"api.{name}", f"must be at least {least}")
    if not 1 <= api.max_message_chars <= MAX_MESSAGE_CHARS:
        fail("api.max_message_chars", f"must be 1..{MAX_MESSAGE_CHARS}")


def validate_ledger_backend(config: Config, fail: Callable[[str, str], None]) -> None:
    """``[ledger] backend`` and its PostgreSQL keys; the multi-writer timings."""
    ledger = config.ledger
    if ledger.backend == "postgresql":
        if not ledger.dsn.strip():
            fail("ledger.dsn", "must be set for backend = postgresql (a libpq DSN or URL)")
        from pool.ledger.pg import dsn_problem, password_in_dsn

        problem = dsn_problem(ledger.dsn)
        if problem is not None:
            fail("ledger.dsn", problem)
        if password_in_dsn(ledger.dsn):
            fail(
                "ledger.dsn",
                "must not contain a password: put it in the environment variable named by "
                f"ledger.password_env ({ledger.password_env or 'unset'})",
            )
    elif ledger.dsn:
        fail("ledger.dsn", "is only used with ledger.backend = postgresql")
    if ledger.password_env and not ledger.password_env.replace("_", "").isalnum():
        fail("ledger.password_env", "must be an environment variable name (or empty)")
    for name, least in (
        ("shared_refresh_seconds", 0.1),
        ("heartbeat_seconds", 0.5),
        ("payout_lock_retry_seconds", 0.1),
    ):
        value = getattr(ledger, name)
        if not (math.isfinite(value) and least <= value <= 3600):
            fail(f"ledger.{name}", f"must be {least}..3600 seconds")
    # pool.instance_id: 0..255, checked with server.processes (its extranonce1 prefix byte)
