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
        ("live_workers_seconds", 0.1),
        ("payout_lock_retry_seconds", 0.1),
    ):
        value = getattr(ledger, name)
        if not (math.isfinite(value) and least <= value <= 3600):
            fail(f"ledger.{name}", f"must be {least}..3600 seconds")
    # pool.instance_id: 0..255, checked with server.processes (its extranonce1 prefix byte)


def validate_ledger(config: Config, fail: Callable[[str, str], None]) -> None:
    """[ledger]: amounts, journal, payouts, storage retries, backend, PPLNS."""
    ledger = config.ledger
    if not 0 <= ledger.fee_bps <= 10_000:
        fail("ledger.fee_bps", "must be 0..10000 basis points")
    for name in (
        "journal_fsync_interval_ms",
        "journal_segment_bytes",
        "block_maturity",
        "payout_max_recipients",
    ):
        if getattr(ledger, name) < 1:
            fail(f"ledger.{name}", "must be at least 1")
    if ledger.journal_segment_bytes < 65536:
        fail("ledger.journal_segment_bytes", "must be at least 65536")
    if not (math.isfinite(ledger.journal_retention_days) and ledger.journal_retention_days >= 0):
        fail("ledger.journal_retention_days", "must be a number >= 0 (0: keep every segment)")
    if ledger.checkpoint_seconds <= 0 or ledger.block_check_seconds <= 0:
        fail("ledger", "checkpoint_seconds and block_check_seconds must be positive")
    for name in ("payout_threshold_sat", "payout_min_confirmations", "payout_fee_reserve_sat"):
        if getattr(ledger, name) < 0:
            fail(f"ledger.{name}", "must not be negative")
    if ledger.payout_interval_seconds < 0 or ledger.payout_fee_rate_sat_vb < 0:
        fail("ledger", "payout_interval_seconds and payout_fee_rate_sat_vb must not be negative")
    retry, retry_max = ledger.storage_retry_seconds, ledger.storage_retry_max_seconds
    if not (math.isfinite(retry) and 0.01 <= retry <= 60):
        fail("ledger.storage_retry_seconds", "must be 0.01..60 seconds")
    if not (math.isfinite(retry_max) and retry <= retry_max <= 3600):
        fail("ledger.storage_retry_max_seconds", "must be storage_retry_seconds..3600 seconds")
    if not 1 <= ledger.reconcile_blocks <= 100_000:
        fail("ledger.reconcile_blocks", "must be 1..100000 blocks")
    validate_ledger_backend(config, fail)
    factor = ledger.pplns_window_factor
    if not (math.isfinite(factor) and 0.01 <= factor <= 1000):
        fail("ledger.pplns_window_factor", "must be 0.01..1000 (times the network difficulty)")
    if not 1000 <= ledger.pplns_max_log_shares <= 1_000_000_000:
        fail("ledger.pplns_max_log_shares", "must be 1000..1000000000 shares")
    busy = ledger.sqlite_busy_timeout_seconds
    if not (math.isfinite(busy) and 0.1 <= busy <= 300):
        fail("ledger.sqlite_busy_timeout_seconds", "must be 0.1..300 seconds")


def validate_node(config: Config, fail: Callable[[str, str], None]) -> None:
    """[node]: templates, restarts, block submission, ZMQ."""
    if config.node.template_refresh_seconds <= 0 or config.node.template_refresh_seconds > 110:
        fail("node.template_refresh_seconds", "must be in (0, 110]: miners stop after 120 s")
    node = config.node
    for name in (
        "longpoll_timeout_seconds",
        "poll_interval_seconds",
        "restart_backoff_seconds",
        "stop_timeout_seconds",
        "submit_retry_seconds",
    ):
        value = getattr(node, name)
        if not (math.isfinite(value) and value > 0):
            fail(f"node.{name}", "must be a positive number of seconds")
    if not (math.isfinite(node.block_wait_seconds) and 0.1 <= node.block_wait_seconds <= 3600):
        fail("node.block_wait_seconds", "must be 0.1..3600 seconds")
    if not node.restart_backoff_max_seconds >= node.restart_backoff_seconds:
        fail("node.restart_backoff_max_seconds", "must be at least node.restart_backoff_seconds")
    if not 0 <= node.resubmit_recent_blocks <= 1000:
        fail("node.resubmit_recent_blocks", "must be 0..1000")
    if not node.submit_retry_max_seconds >= node.submit_retry_seconds:
        fail("node.submit_retry_max_seconds", "must be at least node.submit_retry_seconds")
    if not (math.isfinite(node.zmq_heartbeat_seconds) and 1 <= node.zmq_heartbeat_seconds <= 3600):
        fail("node.zmq_heartbeat_seconds", "must be 1..3600 seconds")
    if node.zmq_hashblock not in ("auto", ""):
        problem = zmq_endpoint_problem(node.zmq_hashblock)
        managed = node.mode == "managed"
        if problem is None and managed and urlsplit(node.zmq_hashblock).hostname != "127.0.0.1":
            problem = "must be on 127.0.0.1 for the managed node (or auto)"
        if problem is not None:
            fail("node.zmq_hashblock", f"{problem}; got {node.zmq_hashblock!r} (or auto, or '')")
