"""Configuration: TOML (tomllib) -> frozen dataclasses.

Unknown keys and wrong types are rejected with an error naming the file and the dotted key.
Every scalar key can be overridden from the environment as ``POOL_<SECTION>_<KEY>`` (upper
case, e.g. ``POOL_NODE_RPC_URL``, ``POOL_STRATUM_HOST``), the value parsed as a TOML value
when it parses, else taken as a string. The RPC password is never written in a config file:
it comes from the environment variable named by ``node.rpc_password_env`` or from bitcoind's
cookie file.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pool.config_checks import validate_api as _validate_api
from pool.config_checks import (  # zmq_endpoint_problem: re-exported
    validate_ledger,
    validate_node,
)
from pool.config_checks import (
    zmq_endpoint_problem as zmq_endpoint_problem,
)
from pool.server_config import ServerConfig, server_limits, validate_server
from pool.webhook_config import WebhooksConfig, validate_webhooks

# Regtest's own difficulty (powLimit bits 207fffff): DIFF1_TARGET / (0x7fffff << 232), ~4.66e-10.
# pool.chain_sim holds the same value as MIN_DIFFICULTY (a unit test checks they agree).
SIM_MIN_DIFFICULTY = (0xFFFF << 208) / (0x7FFFFF << 232)
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "regtest.toml"
ENV_PREFIX = "POOL_"


class ConfigError(ValueError):
    """The message names the file and the key."""


@dataclass(frozen=True)
class NodeConfig:
    mode: str = "managed"  # "managed": start our own regtest bitcoind; "external": connect
    rpc_url: str = "http://127.0.0.1:18443/"
    rpc_user: str = ""
    rpc_password_env: str = "POOL_RPC_PASSWORD"
    cookie_file: str = ""
    wallet: str = "pool"
    rpc_max_concurrency: int = 8
    rpc_timeout_seconds: float = 30.0
    rpc_give_up_seconds: float = 60.0
    template_refresh_seconds: float = 30.0
    poll_interval_seconds: float = 1.0
    longpoll: bool = True
    # The long-poll: waitfornewblock, ended by bitcoind itself after block_wait_seconds and
    # asked again (a wait whose pool stopped frees its RPC thread by then). On a node without
    # it, the getblocktemplate long-poll, asked again after longpoll_timeout_seconds. Long:
    # bitcoind keeps serving one its client gave up on (an RPC thread each) until the next
    # block or mempool change.
    block_wait_seconds: float = 60.0
    longpoll_timeout_seconds: float = 3600.0
    restart_backoff_seconds: float = 1.0  # managed node died: first restart delay (doubles)
    restart_backoff_max_seconds: float = 30.0  # ...up to this
    stop_timeout_seconds: float = 30.0  # a stopping node (ours or a leftover) is killed after
    submit_retry_seconds: float = 0.5  # a found block unsubmitted: first retry delay (doubles)
    submit_retry_max_seconds: float = 5.0  # ...up to this; retried until settled, any outage
    resubmit_recent_blocks: int = 16  # the pool's last blocks given again to a restarted node
    # bitcoind's ZMQ hashblock feed: "auto" (managed: the node publishes on a free loopback port;
    # external: the address bitcoind reports in getzmqnotifications, if any), "" (off: long-poll
    # and poll only) or tcp://HOST:PORT (managed: 127.0.0.1 only)
    zmq_hashblock: str = "auto"
    zmq_heartbeat_seconds: float = 10.0  # a silent ZMQ connection is pinged; 3 unanswered: redone


@dataclass(frozen=True)
class PoolConfig:
    payout_address: str = ""  # empty on regtest: a fresh address of the pool's wallet (node.wallet)
    pool_tag: str = "/stratum-pool/"
    data_dir: str = ".data"
    extranonce1_size: int = 4
    extranonce2_size: int = 4
    max_jobs: int = 16
    instance_id: int = 0  # one per instance on a shared ledger (0..255; pool/server_config.py)


@dataclass(frozen=True)
class PortConfig:
    port: int = 3333
    start_difficulty: float = 0.001
    min_difficulty: float = 0.00001
    max_difficulty: float = 1e15
    name: str = ""
    tls: bool = False  # Stratum inside TLS 1.2+ (pool/server/tls.py)
    tls_cert: str = ""  # PEM certificate (chain) and its key; both empty: a self-signed pair
    tls_key: str = ""  # made in <data_dir>/tls on the first start
    # The port's payout scheme: "" (the ledger's), pps, fpps, pplns or solo (each miner's jobs
    # pay its own address; pool/server/solo.py)
    scheme: str = ""
    # SOLO ports: the pool's fee as a second coinbase output, in basis points of the block
    # reward (0..10000; floor(reward * bps / 10000) satoshis to the pool's payout address)
    solo_fee_bps: int = 0


@dataclass(frozen=True)
class StratumConfig:
    host: str = "127.0.0.1"
    ports: tuple[PortConfig, ...] = (PortConfig(),)
    version_rolling_mask: str = "1fffe000"
    max_ntime_ahead_seconds: int = 7200
    event_loop: str = "asyncio"  # or "uvloop" (the 'fast' extra): a faster event loop


EVENT_LOOPS = ("asyncio", "uvloop")
PORT_SCHEMES = ("", "pps", "fpps", "pplns", "solo")  # "": the ledger's scheme


@dataclass(frozen=True)
class LimitsConfig:
    max_line_bytes: int = 16384
    handshake_timeout_seconds: float = 15.0  # time allowed to subscribe and authorize
    idle_timeout_seconds: float = 600.0  # no useful request (valid share, login...) this long
    max_connections: int = 10000
    max_connections_per_ip: int = 256
    max_workers_per_connection: int = 64
    send_queue_bytes: int = 1 << 20  # a reader this far behind is dropped
    max_invalid_shares_in_row: int = 1000
    listen_backlog: int = 8192  # pending TCP connections per port (the kernel caps it at somaxconn)
    # Abuse limits (pool/server/guard.py, core.py, context.py).
    connect_rate_per_ip: float = 10.0  # new connections per IP per second, after the burst
    # new connections one IP may open at once: as many as it may hold (a farm behind one IP
    # reconnecting after a pool restart is neither refused nor struck)
    connect_burst_per_ip: int = 256
    max_unauthorized_per_ip: int = 16  # not yet authorized; over it the oldest is dropped
    max_workers_per_address: int = 4096  # distinct live worker names per payout address
    max_workers_per_ip: int = 4096  # distinct live worker names per IP
    worker_idle_seconds: float = 7200.0  # stats of a worker gone and without shares this long
    invalid_share_burst: int = 100  # rejected shares (decaying) before the first escalation
    invalid_share_ratio: float = 0.5  # ... and only while rejected/all shares is over this
    invalid_share_window_seconds: float = 60.0  # the decay time of those counts
    ban_strikes: int = 3  # abusive drops of one IP (decaying) that ban it
    strike_decay_seconds: float = 60.0  # one strike is forgiven this often
    ban_seconds: float = 60.0  # the first temporary IP ban; doubled on each repeat
    ban_max_seconds: float = 3600.0  # the longest temporary IP ban
    ban_forgive_seconds: float = 3600.0  # one earlier ban forgotten per this long without one
    max_tracked_ips: int = 65536  # IPs the guard keeps state for
    log_lines_per_second: float = 5.0  # per kind of client-caused log line, after the burst
    log_burst: int = 50


@dataclass(frozen=True)
class VardiffSettings:
    enabled: bool = True
    target_interval_seconds: float = 5.0
    retarget_shares: int = 48
    retarget_seconds: float = 60.0
    tolerance: float = 0.15


@dataclass(frozen=True)
class SimEventConfig:
    """A scripted change of the simulated difficulty: one trigger (``at_height`` or
    ``at_seconds`` after the start) and one change (``set_difficulty`` or ``scale``).
    Unset fields keep their defaults (-1 / 0)."""

    at_height: int = -1
    at_seconds: float = -1.0
    set_difficulty: float = 0.0
    scale: float = 0.0


@dataclass(frozen=True)
class SimulationConfig:
    """Regtest accepts half of all hashes as blocks; with ``enabled`` the pool uses its own
    network difficulty instead: only shares meeting it become blocks (they are valid on
    regtest too). It retargets with Bitcoin's rule every ``retarget_interval`` blocks the pool
    finds, aiming at ``target_spacing_seconds`` per block."""

    enabled: bool = False
    initial_difficulty: float = 1.0
    retarget_interval: int = 2016
    target_spacing_seconds: float = 600.0
    clamp_factor: float = 4.0
    mainnet_difficulty: float = 0.0  # >0: reports scale difficulties so the start reads as this
    events: tuple[SimEventConfig, ...] = ()
    # shared through the store (several processes): compare-and-set tries per write, and the
    # blocks found kept (oldest dropped) while the store fails
    shared_write_attempts: int = 100
    shared_max_pending_blocks: int = 10_000


@dataclass(frozen=True)
class ChainConfig:
    simulation: SimulationConfig = field(default_factory=SimulationConfig)


@dataclass(frozen=True)
class LedgerConfig:
    scheme: str = "pps"  # pps: subsidy only; fpps: subsidy + the fees of the share's template;
    # pplns: a found block's reward split over the last N difficulty-units of pplns shares
    # PPLNS window N = this x the network difficulty of the block's job (2: on average the
    # work of two blocks; larger: steadier pay, slower to reach a new miner)
    pplns_window_factor: float = 2.0
    pplns_max_log_shares: int = 2_000_000  # PPLNS share log bound (rows); the oldest go first
    # SQLite: a writer finding the store locked (another process's commit) waits this long,
    # then the store is degraded and retried (storage_retry_seconds)
    sqlite_busy_timeout_seconds: float = 5.0
    fee_bps: int = 200  # pool fee in basis points (200 = 2 %)
    journal_fsync: str = "batch"  # batch | interval | never (see pool/ledger/journal.py)
    journal_fsync_interval_ms: int = 100
    journal_segment_bytes: int = 64 * 1024 * 1024
    journal_retention_days: float = 365.0  # applied segments older than this are deleted; 0: never
    checkpoint_seconds: float = 1.0  # the store commits (with its journal checkpoint) this often
    block_maturity: int = 100  # confirmations before a found block counts as confirmed
    block_check_seconds: float = 30.0  # found blocks are checked this often (and on new blocks)
    payout_threshold_sat: int = 1_000_000  # balances of at least this are paid (0.01 BTC)
    payout_interval_seconds: float = 600.0  # a payout round this often; 0 = only on request
    payout_min_confirmations: int = 1  # sendmany's minconf
    payout_fee_rate_sat_vb: float = 0.0  # 0: the wallet estimates the fee
    payout_fee_reserve_sat: int = 100_000  # spendable funds beyond the payout kept for its fee
    payout_max_recipients: int = 500  # per sendmany; the rest wait for the next round
    # storage faults (disk full, read-only, locked): retried after this, doubled up to the max
    storage_retry_seconds: float = 0.5
    storage_retry_max_seconds: float = 10.0
    reconcile_blocks: int = 1000  # at start, at most this many recent blocks are scanned for
    # the pool's blocks missing from the store (since the last one it holds)
    backend: str = "sqlite"  # sqlite (embedded, data_dir) | postgresql (shared by instances)
    dsn: str = ""  # postgresql: libpq DSN or URL WITHOUT a password
    password_env: str = "POOL_PG_PASSWORD"  # postgresql: the password's environment variable
    shared_refresh_seconds: float = 2.0  # several writers: pool-wide totals reloaded this often
    heartbeat_seconds: float = 5.0  # several writers: each process's row written this often
    live_workers_seconds: float = 5.0  # several writers: each process's live workers published
    payout_lock_retry_seconds: float = 5.0  # processes not running payouts retry the lock


@dataclass(frozen=True)
class ApiConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8080
    admin_token_env: str = "POOL_API_TOKEN"  # admin endpoints need this bearer token; unset: off
    # Host-header check (DNS rebinding): names the API answers to, "*" for any; empty: automatic
    # (a loopback or specific bind address: it, localhost, 127.0.0.1 and [::1]; 0.0.0.0 or ::
    # binds: any host, since the pool cannot know its public names)
    allowed_hosts: tuple[str, ...] = ()
    max_request_line_bytes: int = 8190  # longest request line (method, URL, version)
    max_header_bytes: int = 8190  # longest header field
    max_headers: int = 64  # header fields per request
    max_body_bytes: int = 65536  # longest request body (admin bodies are a few bytes)
    max_message_chars: int = 256  # longest client.show_message text sent by the admin API


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    format: str = "auto"  # auto (console on a TTY, JSON lines otherwise) | json | console


@dataclass(frozen=True)
class Config:
    node: NodeConfig = field(default_factory=NodeConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    stratum: StratumConfig = field(default_factory=StratumConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    vardiff: VardiffSettings = field(default_factory=VardiffSettings)
    chain: ChainConfig = field(default_factory=ChainConfig)
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    source: str = "<defaults>"


CHOICES: dict[str, tuple[str, ...]] = {
    "node.mode": ("managed", "external"),
    "logging.level": ("debug", "info", "warning", "error"),
    "logging.format": ("auto", "json", "console"),
    "ledger.scheme": ("pps", "fpps", "pplns"),
    "ledger.journal_fsync": ("batch", "interval", "never"),
    "ledger.backend": ("sqlite", "postgresql"),
    "webhooks.subscriptions": ("admin", "open", "off"),
}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: [{key}] must be a table, got {type(value).__name__}")
        return _build(tp, value, key, where)
    if origin is tuple:
        (inner, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {key} must be a list, got {type(value).__name__}")
        return tuple(_convert(v, inner, f"{key}[{i}]", where) for i, v in enumerate(value))
    if origin in (types.UnionType, typing.Union):
        raise ConfigError(f"{where}: {key}: unsupported type")  # not used by the schema
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: {key} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: {key} must be finite, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: {key}: unsupported type {_type_name(tp)}")


def _build(cls: type, data: Mapping[str, Any], prefix: str, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = sorted(set(data) - names)
    if unknown:
        dotted = ", ".join(f"{prefix}.{k}" if prefix else k for k in unknown)
        raise ConfigError(f"{where}: unknown key {dotted}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        converted = _convert(value, hints[name], key, where)
        if key in CHOICES and converted not in CHOICES[key]:
            raise ConfigError(f"{where}: {key} must be one of {', '.join(CHOICES[key])}")
        kwargs[name] = converted
    return cls(**kwargs)


def _env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> list[str]:
    """Merge ``POOL_SECTION_KEY`` variables into ``data``; returns the keys overridden."""
    applied = []
    for section in dataclasses.fields(Config):
        if section.name == "source":
            continue
        section_cls = typing.get_type_hints(Config)[section.name]
        for f in dataclasses.fields(section_cls):
            var = f"{ENV_PREFIX}{section.name}_{f.name}".upper()
            if var in env:
                data.setdefault(section.name, {})[f.name] = _env_value(env[var])
                applied.append(f"{section.name}.{f.name}")
    return applied


def load(path: Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Load ``path`` (default: configs/regtest.toml) with environment overrides, validated."""
    path = path or DEFAULT_CONFIG
    where = str(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{where}: no such config file") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"{where}: is a directory, not a config file") from exc
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read the config file ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: not a text file (not UTF-8: {exc.reason})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from exc
    overridden = _apply_env(data, os.environ if env is None else env)
    if overridden:
        where = f"{where} (with environment overrides of {', '.join(overridden)})"
    config: Config = _build(Config, data, "", where)
    validate(config, where)
    return dataclasses.replace(config, source=str(path))


def from_data(data: Mapping[str, Any], where: str) -> Config:
    """A config from plain data (``dataclasses.asdict`` of one, e.g. as JSON: the resolved
    config the supervisor hands its worker processes), validated; no environment overrides
    (they are in the data already)."""
    fields = dict(data)
    source = fields.pop("source", where)
    config: Config = _build(Config, fields, "", where)
    validate(config, where)
    return dataclasses.replace(config, source=str(source))


def validate(config: Config, where: str) -> None:
    """Cross-field checks the types alone cannot express."""

    def fail(key: str, why: str) -> None:
        raise ConfigError(f"{where}: {key} {why}")

    if not 2 <= config.pool.extranonce1_size <= 8:
        fail("pool.extranonce1_size", "must be 2..8 bytes")
    if not 2 <= config.pool.extranonce2_size <= 16:
        fail("pool.extranonce2_size", "must be 2..16 bytes")
    if len(config.pool.pool_tag.encode()) > 60:
        fail("pool.pool_tag", "must be at most 60 bytes (the coinbase scriptSig holds 100)")
    if config.pool.max_jobs < 2:
        fail("pool.max_jobs", "must be at least 2")
    if not config.stratum.ports:
        fail("stratum.ports", "must list at least one port")
    seen = set()
    for i, port in enumerate(config.stratum.ports):
        key = f"stratum.ports[{i}]"
        if not 0 <= port.port <= 65535:
            fail(f"{key}.port", "must be 0..65535")
        if port.port and port.port in seen:
            fail(f"{key}.port", f"{port.port} is listed twice")
        seen.add(port.port)
        if not 0 < port.min_difficulty <= port.start_difficulty <= port.max_difficulty:
            fail(key, "needs 0 < min_difficulty <= start_difficulty <= max_difficulty")
        if (port.tls_cert or port.tls_key) and not (port.tls and port.tls_cert and port.tls_key):
            fail(key, "needs tls = true and both tls_cert and tls_key (or neither: self-signed)")
        if port.scheme not in PORT_SCHEMES:
            fail(f"{key}.scheme", f"must be one of {', '.join(map(repr, PORT_SCHEMES))}")
        if not 0 <= port.solo_fee_bps <= 10_000:
            fail(f"{key}.solo_fee_bps", "must be 0..10000 basis points")
        if port.solo_fee_bps and port.scheme != "solo":
            fail(f"{key}.solo_fee_bps", 'applies to scheme = "solo" ports only')
    try:
        mask = int(config.stratum.version_rolling_mask, 16)
    except ValueError:
        mask = -1
    if not 0 <= mask <= 0xFFFFFFFF:
        fail("stratum.version_rolling_mask", "must be 8 hex digits")
    if config.stratum.event_loop not in EVENT_LOOPS:
        fail("stratum.event_loop", f"must be one of {', '.join(EVENT_LOOPS)}")
    limits = config.limits
    for name in (
        "max_line_bytes",
        "max_connections",
        "max_connections_per_ip",
        "max_workers_per_connection",
        "send_queue_bytes",
        "max_invalid_shares_in_row",
        "listen_backlog",
        "connect_burst_per_ip",
        "max_unauthorized_per_ip",
        "max_workers_per_address",
        "max_workers_per_ip",
        "invalid_share_burst",
        "ban_strikes",
        "max_tracked_ips",
        "log_burst",
    ):
        if getattr(limits, name) < 1:
            fail(f"limits.{name}", "must be at least 1")
    for name in (
        "connect_rate_per_ip",
        "worker_idle_seconds",
        "invalid_share_window_seconds",
        "strike_decay_seconds",
        "ban_seconds",
        "ban_forgive_seconds",
        "log_lines_per_second",
    ):
        if getattr(limits, name) <= 0:
            fail(f"limits.{name}", "must be positive")
    if not 0 < limits.invalid_share_ratio < 1:
        fail("limits.invalid_share_ratio", "must be between 0 and 1 (exclusive)")
    if limits.ban_max_seconds < limits.ban_seconds:
        fail("limits.ban_max_seconds", "must be at least limits.ban_seconds")

    if limits.max_line_bytes < 512:
        fail("limits.max_line_bytes", "must be at least 512 (a submit line is ~200 bytes)")
    for name in ("handshake_timeout_seconds", "idle_timeout_seconds"):
        if getattr(limits, name) <= 0:
            fail(f"limits.{name}", "must be positive")
    if config.vardiff.target_interval_seconds <= 0:
        fail("vardiff.target_interval_seconds", "must be positive")
    if config.vardiff.retarget_shares < 1 or config.vardiff.retarget_seconds <= 0:
        fail("vardiff", "retarget_shares and retarget_seconds must be positive")
    sim = config.chain.simulation
    if sim.initial_difficulty <= 0:
        fail("chain.simulation.initial_difficulty", "must be positive")
    if sim.initial_difficulty < SIM_MIN_DIFFICULTY:
        fail(
            "chain.simulation.initial_difficulty",
            f"must be at least {SIM_MIN_DIFFICULTY:.6g} (regtest's own difficulty, its powLimit "
            f"bits 207fffff), got {sim.initial_difficulty:g}",
        )
    if sim.retarget_interval < 1:
        fail("chain.simulation.retarget_interval", "must be at least 1")
    if sim.target_spacing_seconds <= 0:
        fail("chain.simulation.target_spacing_seconds", "must be positive")
    if sim.retarget_interval * sim.target_spacing_seconds < 0.001:
        fail(
            "chain.simulation.target_spacing_seconds",
            "times chain.simulation.retarget_interval must be at least 1 ms",
        )
    if sim.clamp_factor < 1:
        fail("chain.simulation.clamp_factor", "must be at least 1")
    if sim.mainnet_difficulty < 0:
        fail("chain.simulation.mainnet_difficulty", "must not be negative (0: off)")
    for name in ("shared_write_attempts", "shared_max_pending_blocks"):
        if not 1 <= getattr(sim, name) <= 10_000_000:
            fail(f"chain.simulation.{name}", "must be 1..10000000")
    for i, event in enumerate(sim.events):
        key = f"chain.simulation.events[{i}]"
        if (event.at_height >= 0) == (event.at_seconds >= 0):
            fail(key, "needs exactly one of at_height and at_seconds")
        if (event.set_difficulty > 0) == (event.scale > 0):
            fail(key, "needs exactly one of set_difficulty and scale (positive)")
    validate_ledger(config, fail)
    validate_node(config, fail)
    _validate_api(config, fail)
    validate_webhooks(config.webhooks, fail, config.limits.worker_idle_seconds)
    validate_server(config, fail)


def limits_summary(config: Config) -> dict[str, Any]:
    """The limits as one flat dict, logged at start-up."""
    return dataclasses.asdict(config.limits) | {
        "stratum.max_ntime_ahead_seconds": config.stratum.max_ntime_ahead_seconds,
        "pool.max_jobs": config.pool.max_jobs,
        "chain.simulation.shared_write_attempts": config.chain.simulation.shared_write_attempts,
        "chain.simulation.shared_max_pending_blocks": (
            config.chain.simulation.shared_max_pending_blocks
        ),
        "stratum.ports.solo_fee_bps": [p.solo_fee_bps for p in config.stratum.ports],
        **server_limits(config),
        "node.rpc_max_concurrency": config.node.rpc_max_concurrency,
        "node.restart_backoff_seconds": config.node.restart_backoff_seconds,
        "node.restart_backoff_max_seconds": config.node.restart_backoff_max_seconds,
        "node.submit_retry_max_seconds": config.node.submit_retry_max_seconds,
        "node.longpoll_timeout_seconds": config.node.longpoll_timeout_seconds,
        "node.block_wait_seconds": config.node.block_wait_seconds,
        "node.resubmit_recent_blocks": config.node.resubmit_recent_blocks,
        "node.zmq_heartbeat_seconds": config.node.zmq_heartbeat_seconds,
        "ledger.payout_max_recipients": config.ledger.payout_max_recipients,
        "ledger.journal_segment_bytes": config.ledger.journal_segment_bytes,
        "ledger.journal_retention_days": config.ledger.journal_retention_days,
        "ledger.storage_retry_seconds": config.ledger.storage_retry_seconds,
        "ledger.storage_retry_max_seconds": config.ledger.storage_retry_max_seconds,
        "ledger.reconcile_blocks": config.ledger.reconcile_blocks,
        "ledger.shared_refresh_seconds": config.ledger.shared_refresh_seconds,
        "ledger.heartbeat_seconds": config.ledger.heartbeat_seconds,
        "ledger.live_workers_seconds": config.ledger.live_workers_seconds,
        "ledger.payout_lock_retry_seconds": config.ledger.payout_lock_retry_seconds,
        "ledger.pplns_window_factor": config.ledger.pplns_window_factor,
        "ledger.pplns_max_log_shares": config.ledger.pplns_max_log_shares,
        "ledger.sqlite_busy_timeout_seconds": config.ledger.sqlite_busy_timeout_seconds,
        "api.max_request_line_bytes": config.api.max_request_line_bytes,
        "api.max_header_bytes": config.api.max_header_bytes,
        "api.max_headers": config.api.max_headers,
        "api.max_body_bytes": config.api.max_body_bytes,
        "api.max_message_chars": config.api.max_message_chars,
        "webhooks.max_attempts": config.webhooks.max_attempts,
        "webhooks.queue_size": config.webhooks.queue_size,
        "webhooks.timeout_seconds": config.webhooks.timeout_seconds,
        "webhooks.retry_max_seconds": config.webhooks.retry_max_seconds,
        "webhooks.max_subscriptions": config.webhooks.max_subscriptions,
        "webhooks.max_subscriptions_per_address": config.webhooks.max_subscriptions_per_address,
    }


def _mask_url(url: str) -> str:
    """``http://user:password@host/`` -> ``http://user:***@host/`` (no password is shown)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    userinfo, _, hostpart = rest.partition("@")
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{hostpart}"


def effective(config: Config, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The config as plain data for ``config check``, secrets masked: a password in a URL is
    replaced by ``***`` and secret environment variables are reported as set or not set,
    never with their values."""
    env = os.environ if env is None else env
    data = dataclasses.asdict(config)
    data["node"]["rpc_url"] = _mask_url(config.node.rpc_url)
    secrets = {
        "node.rpc_password_env": config.node.rpc_password_env,
        "api.admin_token_env": config.api.admin_token_env,
        "webhooks.secret_env": config.webhooks.secret_env,
        "ledger.password_env": config.ledger.password_env,
    }
    data["secrets"] = {
        key: {"variable": var, "set": bool(env.get(var))} for key, var in secrets.items()
    }
    return data
