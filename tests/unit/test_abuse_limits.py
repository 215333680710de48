"""The abuse limits in the pure parts: the per-IP guard (rate, strikes, temporary bans), the
core's idle timer and escalation, the context's worker caps and eviction, the log limiter
and clipping, and session resume after a restart."""

from __future__ import annotations

import json
from typing import Any

import pytest
from structlog.testing import capture_logs

from pool.bitcoin import REGTEST
from pool.jobs import JobTable
from pool.logs import LogLimiter, clip
from pool.server.auth import parse_credentials
from pool.server.context import ExtranonceAllocator, PoolContext, WorkerLimits
from pool.server.core import CoreSettings, PoolConnection
from pool.server.guard import GuardSettings, IpGuard, ip_key
from pool.vardiff import VardiffConfig
from tests.unit.test_pool_connection import ADDR, EN1, NOW, WORKER, line, make_job, submit

IP = "127.0.0.2"


def context(**guard: Any) -> tuple[PoolContext, JobTable]:
    table = JobTable(max_jobs=4, seed=1)
    ctx = PoolContext(
        network=REGTEST,
        jobs=table,
        extranonce1_size=4,
        now=NOW,
        guard=GuardSettings(**guard),
        workers=WorkerLimits(per_address=3, per_ip=4, idle_seconds=100.0),
        log_limiter=LogLimiter(per_second=1.0, burst=5),
    )
    make_job(table)
    return ctx, table


def connection(
    ctx: PoolContext, *, ip: str = IP, difficulty: float = 1e-12, conn_id: int = 1, **kw: Any
) -> PoolConnection:
    settings = CoreSettings(
        extranonce2_size=4,
        version_rolling_mask=0x1FFFE000,
        vardiff=VardiffConfig(min_difficulty=1e-12, max_difficulty=1e9, enabled=False),
        start_difficulty=difficulty,
        **kw,
    )
    return PoolConnection(
        ctx,
        settings,
        conn_id=conn_id,
        extranonce1=ctx.extranonces.allocate(),
        now=NOW,
        peer=f"{ip}:4000",
        ip=ip,
    )


def answers(items: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(x) for item in items for x in item.splitlines()]


def login(core: PoolConnection, user: str = WORKER, now: float = NOW) -> list[dict[str, Any]]:
    data = line(1, "mining.subscribe", ["t/1"]) + line(2, "mining.authorize", [user, "x"])
    items, _ = core.receive_data(data, now)
    return answers(items)


# -- the guard ----------------------------------------------------------------------------------
def test_connection_rate_is_a_token_bucket_per_ip() -> None:
    guard = IpGuard(GuardSettings(connect_rate_per_ip=2.0, connect_burst_per_ip=5))
    assert [guard.admit(IP, NOW) for _ in range(5)] == [None] * 5
    refusal = guard.admit(IP, NOW)
    assert refusal is not None and "connect_rate_per_ip" in refusal
    assert guard.admit("127.0.0.3", NOW) is None  # another IP is not affected
    assert guard.admit(IP, NOW + 0.5) is None  # one token back after 1/rate s
    assert guard.admit(IP, NOW + 0.5) is not None


def test_strikes_ban_then_double_up_to_the_cap_and_are_forgiven() -> None:
    s = GuardSettings(
        ban_strikes=3.0,
        strike_decay_seconds=60.0,
        ban_seconds=10.0,
        ban_max_seconds=25.0,
        ban_forgive_seconds=1000.0,
    )
    guard = IpGuard(s)
    assert guard.strike(IP, NOW, "x") is None and guard.strike(IP, NOW, "x") is None
    ban = guard.strike(IP, NOW, "flood")
    assert ban is not None and ban.seconds == 10.0 and ban.bans == 1
    assert guard.take_new_bans() == [ban] and guard.take_new_bans() == []
    assert "temporarily banned" in (guard.admit(IP, NOW + 5) or "")
    assert guard.banned(IP, NOW + 5) == ban and [b.ip for b in guard.bans(NOW + 5)] == [IP]
    assert guard.admit("127.0.0.3", NOW + 5) is None
    assert guard.admit(IP, NOW + 10) is None  # over
    t = NOW + 10
    for _ in range(2):
        guard.strike(IP, t, "x")
    second = guard.strike(IP, t, "x")
    assert second is not None and second.seconds == 20.0 and second.bans == 2  # doubled
    t += 20
    for _ in range(2):
        guard.strike(IP, t, "x")
    third = guard.strike(IP, t, "x")
    assert third is not None and third.seconds == 25.0  # capped
    # Good behaviour: 2000 s without a ban forgets two of the three earlier bans.
    t += 2025
    for _ in range(2):
        guard.strike(IP, t, "x")
    fourth = guard.strike(IP, t, "x")
    assert fourth is not None and fourth.bans == 2 and fourth.seconds == 20.0


def test_strikes_leak_away() -> None:
    guard = IpGuard(GuardSettings(ban_strikes=3.0, strike_decay_seconds=10.0))
    guard.strike(IP, NOW, "x")
    guard.strike(IP, NOW, "x")
    assert guard.strikes(IP, NOW + 10) == pytest.approx(1.0)
    assert guard.strike(IP, NOW + 10, "x") is None  # 2 strikes now, not 3


def test_a_connection_flood_is_banned_a_restart_burst_is_not() -> None:
    guard = IpGuard(GuardSettings(connect_rate_per_ip=10.0, connect_burst_per_ip=100))
    # A farm of 150 miners reconnecting at once: 100 in, 50 refused, no ban.
    results = [guard.admit(IP, NOW) for _ in range(150)]
    assert results.count(None) == 100 and guard.banned(IP, NOW) is None
    # A flood: thousands a second. Banned well within the first second.
    flood = IpGuard(GuardSettings(connect_rate_per_ip=10.0, connect_burst_per_ip=100))
    for i in range(2000):
        flood.admit(IP, NOW + i / 2000)
    ban = flood.banned(IP, NOW + 1)
    assert ban is not None and ban.reason == "connection flood"


def test_guard_state_is_bounded_and_pruned() -> None:
    guard = IpGuard(GuardSettings(max_tracked_ips=100))
    for i in range(1000):
        guard.admit(f"10.0.{i // 256}.{i % 256}", NOW)
    assert len(guard) == 100
    assert guard.prune(NOW + 3600) == 100 and len(guard) == 0


def test_a_full_table_forgets_the_least_recently_seen_ip_never_a_ban() -> None:
    """Many new /64s fill the table: the least recently seen record goes (not a busy miner
    seen a moment ago), and a ban stays in force however many addresses come after it."""
    guard = IpGuard(GuardSettings(max_tracked_ips=100, ban_strikes=1.0))
    assert guard.strike("10.9.9.9", NOW, "flood") is not None  # banned
    guard.admit("10.0.0.1", NOW)  # a miner, seen again below
    for i in range(1000):
        if i % 50 == 0:
            guard.admit("10.0.0.1", NOW + i * 0.001)
        guard.admit(f"2001:db8:{i:x}::1", NOW + i * 0.001)
    assert len(guard) == 100
    assert guard.strikes("10.0.0.1", NOW + 1) == 0.0 and "10.0.0.1" in guard._records
    ban = guard.banned("10.9.9.9", NOW + 1)
    assert ban is not None and ban.reason == "flood"
    assert guard.admit("10.9.9.9", NOW + 1) is not None  # refused: the ban held
    assert [b.ip for b in guard.bans(NOW + 1)] == ["10.9.9.9"]
    assert guard.unban("10.9.9.9") and guard.admit("10.9.9.9", NOW + 1) is None


def test_bans_are_bounded_too_the_oldest_forgotten_first() -> None:
    guard = IpGuard(GuardSettings(max_tracked_ips=10, ban_strikes=1.0))
    for i in range(25):
        guard.strike(f"10.1.0.{i}", NOW + i, "flood")
    live = guard.bans(NOW + 30)
    assert len(live) == 10 and {b.ip for b in live} == {f"10.1.0.{i}" for i in range(15, 25)}
    assert guard.prune(NOW + 10_000) >= 0 and guard.bans(NOW + 10_000) == []


def test_ipv6_is_limited_per_64() -> None:
    assert ip_key("2001:db8:1:2:aaaa::1") == ip_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert ip_key("::ffff:10.1.2.3") == "10.1.2.3" and ip_key("10.1.2.3") == "10.1.2.3"
    guard = IpGuard(GuardSettings(connect_rate_per_ip=1.0, connect_burst_per_ip=1))
    assert guard.admit("2001:db8:1:2::1", NOW) is None
    assert guard.admit("2001:db8:1:2::2", NOW) is not None


# -- idle timer: useful requests only -----------------------------------------------------------
def test_idle_timer_counts_useful_requests_not_bytes() -> None:
    ctx, table = context()
    core = connection(ctx, idle_timeout=600.0)
    login(core)
    t = NOW
    # A byte every 5 s, never a whole line (slow loris), then garbage lines: no reset.
    for _ in range(100):
        t += 5
        core.receive_data(b"{", t)
    core.receive_data(b"\nnot json\n", t)
    core.handle_timer(NOW + 599)
    assert not core.closing
    core.handle_timer(NOW + 600)
    assert core.closing and core.close_reason == "idle timeout"

    core = connection(ctx, idle_timeout=600.0, conn_id=2)
    login(core)
    job = table.current
    assert job is not None
    # Rejected shares do not reset it either; an accepted share and a valid request do.
    core.receive_data(submit("nope", 1, worker=WORKER), NOW + 300)
    core.handle_timer(NOW + 600)
    assert core.closing

    core = connection(ctx, idle_timeout=600.0, conn_id=3)
    login(core)
    _items, shares = core.receive_data(submit(job.job_id, 7), NOW + 300)
    assert shares == 1
    core.receive_data(line(5, "mining.extranonce.subscribe", []), NOW + 500)
    core.handle_timer(NOW + 1099)
    assert not core.closing
    core.handle_timer(NOW + 1100)
    assert core.closing


# -- escalation ---------------------------------------------------------------------------------
def flood(core: PoolConnection, count: int, now: float, start: int = 0) -> list[dict[str, Any]]:
    data = b"".join(submit("nope", n, id=1000 + n) for n in range(start, start + count))
    items, _ = core.receive_data(data, now)
    return answers(items)


def test_invalid_share_flood_escalates_fresh_job_reconnect_drop_then_ban() -> None:
    ctx, _ = context(ban_strikes=3.0, ban_seconds=60.0)
    core = connection(ctx, invalid_share_burst=20)
    login(core)
    msgs = flood(core, 10, NOW)  # half the burst: a fresh clean job
    assert msgs[-1]["method"] == "mining.notify" and msgs[-1]["params"][8] is True
    assert not core.closing
    msgs = flood(core, 20, NOW, start=10)
    assert core.closing and "invalid_share_burst" in core.close_reason
    assert msgs[-1]["method"] == "client.reconnect"  # the first time: a reconnect hint
    assert ctx.guard.strikes(IP, NOW) == pytest.approx(1.0)
    second = connection(ctx, invalid_share_burst=20, conn_id=2)
    login(second)
    msgs = flood(second, 40, NOW)
    assert second.closing and msgs[-1].get("method") != "client.reconnect"  # just dropped
    third = connection(ctx, invalid_share_burst=20, conn_id=3)
    login(third)
    flood(third, 40, NOW)
    ban = ctx.guard.banned(IP, NOW + 1)
    assert third.closing and ban is not None and ban.seconds == 60.0
    assert ctx.guard.banned("127.0.0.3", NOW + 1) is None  # only that IP


def test_one_cheap_valid_share_does_not_reset_the_count() -> None:
    ctx, table = context()
    core = connection(ctx, invalid_share_burst=40, max_invalid_in_row=1000)
    login(core)
    job = table.current
    assert job is not None
    nonce = 0
    for _ in range(10):  # nine invalid shares, then one valid one, again and again
        flood(core, 9, NOW, start=nonce)
        nonce += 9
        if core.closing:
            break
        latest = next(reversed(core.sent))  # the fresh job, once it was sent
        _, shares = core.receive_data(submit(latest, 100_000 + nonce), NOW)
        assert shares == 1
        if core.closing:
            break
    assert core.closing and "invalid_share_burst" in core.close_reason


def test_a_miner_with_some_stale_shares_is_left_alone() -> None:
    ctx, table = context()
    core = connection(ctx, invalid_share_burst=20)
    login(core)
    job = table.current
    assert job is not None
    for i in range(200):  # one stale share in three, for a long time
        core.receive_data(submit(job.job_id, 10 * i + 1) + submit(job.job_id, 10 * i + 2), NOW + i)
        flood(core, 1, NOW + i, start=10 * i)
    assert not core.closing and ctx.guard.strikes(IP, NOW + 200) == 0.0


def test_garbage_and_unknown_methods_escalate_too() -> None:
    ctx, _ = context()
    core = connection(ctx, invalid_share_burst=20)
    login(core)
    core.receive_data(b"garbage\n" * 15 + line(9, "x.y", []) * 15, NOW)
    assert core.closing and ctx.guard.strikes(IP, NOW) == pytest.approx(1.0)


def test_a_line_over_the_limit_is_a_strike() -> None:
    ctx, _ = context()
    core = connection(ctx, max_line_bytes=600)
    core.receive_data(b"x" * 700, NOW)
    assert core.closing and ctx.guard.strikes(IP, NOW) == pytest.approx(1.0)


# -- per-worker state ---------------------------------------------------------------------------
def test_workers_per_address_and_per_ip_are_capped_at_authorize() -> None:
    ctx, _ = context()  # 3 per address, 4 per IP
    core = connection(ctx)
    login(core)
    for name in ("b", "c"):
        core.receive_data(line(3, "mining.authorize", [f"{ADDR}.{name}", "x"]), NOW)
    items, _ = core.receive_data(line(4, "mining.authorize", [f"{ADDR}.d", "x"]), NOW)
    refused = answers(items)[0]
    assert refused["error"][0] == 24 and "max_workers_per_address = 3" in refused["error"][1]
    # A name already live is always let in again (a reconnect of the same rig).
    other = connection(ctx, conn_id=2, ip="127.0.0.3")
    assert login(other, f"{ADDR}.b")[1]["result"] is True
    # Per IP: distinct names, whatever their addresses.
    ctx2, _ = context()
    core = connection(ctx2)
    login(core, f"{ADDR}.a")
    for i, addr in enumerate(_addresses(4)):
        items, _ = core.receive_data(line(10 + i, "mining.authorize", [addr, "x"]), NOW)
        reply = answers(items)[0]
        if i < 3:
            assert reply["result"] is True, reply
        else:
            assert "max_workers_per_ip = 4" in reply["error"][1]


def _addresses(n: int) -> list[str]:
    from pool.bitcoin.address import encode_segwit

    return [encode_segwit("bcrt", 0, bytes([i + 1]) * 20) for i in range(n)]


def test_made_up_workers_are_forgotten_and_idle_ones_evicted() -> None:
    ctx, _table = context()
    ctx.worker_limits = WorkerLimits(per_address=10**6, per_ip=10**6, idle_seconds=100.0)
    for i in range(300):  # 300 connections, each with 3 made-up names, then gone
        core = connection(ctx, conn_id=i)
        login(core, f"{ADDR}.n{i}a")
        for j in "bc":
            core.receive_data(line(3, "mining.authorize", [f"{ADDR}.n{i}{j}", "x"]), NOW)
        for creds in core.workers.values():
            ctx.worker_disconnected(creds, NOW, IP)
    assert len(ctx.stats.workers) == 0 and ctx.hashrate.worker_count == 0
    assert ctx.hashrate.addresses() == []  # no meter left for an address without shares
    assert ctx.live_workers == 0
    # A worker with accepted shares stays until idle for worker_idle_seconds.
    creds = parse_credentials(WORKER, "x", REGTEST)
    ctx.worker_connected(creds, NOW, IP)
    ctx.stats.workers[WORKER].accepted = 5
    ctx.worker_disconnected(creds, NOW, IP)
    assert WORKER in ctx.stats.workers
    assert ctx.evict_idle(NOW + 99) == 0 and ctx.evict_idle(NOW + 101) == 1
    assert WORKER not in ctx.stats.workers and ctx.hashrate.worker(WORKER) is None


# -- logs ---------------------------------------------------------------------------------------
def test_clip_and_log_limiter() -> None:
    assert clip("abc") == "abc"
    long = "é" * 100
    assert clip(long) == "é" * 64 + "…(200 bytes)"
    limiter = LogLimiter(per_second=1.0, burst=3)
    assert [limiter.allow("e", NOW) for _ in range(5)] == [0, 0, 0, -1, -1]
    assert limiter.suppressed() == {"e": 2}
    assert limiter.allow("e", NOW + 1.0) == 2 and limiter.suppressed() == {}
    assert limiter.allow("other", NOW) == 0


def test_client_caused_lines_are_rate_limited_and_input_clipped() -> None:
    ctx, _ = context()  # 5 lines burst, 1 a second
    core = connection(ctx)
    line_ = line(1, "mining.subscribe", ["t/1"])
    bad_user = "x" * 5000
    data = line_ + b"".join(line(2 + i, "mining.authorize", [bad_user, "x"]) for i in range(50))
    with capture_logs() as logs:
        items, _ = core.receive_data(data, NOW)
    refused = [e for e in logs if e["event"] == "authorize_refused"]
    assert len(refused) <= 5
    assert all(len(str(e["username"])) < 100 for e in refused)
    errors = [a["error"][1] for a in answers(items) if a.get("error")]
    assert len(errors) == 50 and all(len(m) < 300 for m in errors)
    assert "(5000 bytes)" in errors[0]


# -- session resume after a restart ---------------------------------------------------------------
def test_session_resume_after_a_restart_gets_the_same_extranonce1_if_free() -> None:
    before = ExtranonceAllocator(4, start=100)
    old = before.allocate()
    after = ExtranonceAllocator(4, start=5000)  # a new process: nothing parked, nothing live
    current = after.allocate()
    assert after.resume(current, old.hex()) == old
    # Not while a live connection has it; not for a malformed id.
    taken = after.allocate()
    other = after.allocate()
    assert after.resume(other, taken.hex()) is None
    assert after.resume(other, "zz" * 4) is None and after.resume(other, "00") is None
    # The core hands it back in the subscribe answer.
    ctx, _ = context()
    core = connection(ctx)
    wanted = bytes.fromhex("deadbeef")
    items, _ = core.receive_data(line(1, "mining.subscribe", ["t/1", wanted.hex()]), NOW)
    assert answers(items)[0]["result"][1] == wanted.hex() and core.extranonce1 == wanted
    assert wanted != EN1


def test_refused_requests_do_not_reset_the_idle_timer_and_escalate() -> None:
    ctx, _ = context()
    core = connection(ctx, idle_timeout=600.0, invalid_share_burst=20)
    login(core)
    # A refused login and a request with bad params are not useful.
    core.receive_data(line(7, "mining.authorize", ["nope", "x"]), NOW + 300)
    core.receive_data(line(8, "mining.suggest_difficulty", ["x"]), NOW + 400)
    core.handle_timer(NOW + 600)
    assert core.closing and core.close_reason == "idle timeout"
    # A login flood with made-up bad names is cut like an invalid-share flood.
    core = connection(ctx, invalid_share_burst=20, conn_id=2)
    login(core)
    data = b"".join(line(10 + i, "mining.authorize", [f"bad{i}", "x"]) for i in range(30))
    core.receive_data(data, NOW)
    assert core.closing and "invalid_share_burst" in core.close_reason


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("connect_rate_per_ip", 0.0, "must be positive"),
        ("connect_burst_per_ip", 0, "at least 1"),
        ("max_unauthorized_per_ip", 0, "at least 1"),
        ("max_workers_per_address", 0, "at least 1"),
        ("max_workers_per_ip", 0, "at least 1"),
        ("worker_idle_seconds", -1.0, "must be positive"),
        ("invalid_share_burst", 0, "at least 1"),
        ("invalid_share_ratio", 1.0, "between 0 and 1"),
        ("invalid_share_window_seconds", 0.0, "must be positive"),
        ("ban_strikes", 0, "at least 1"),
        ("ban_seconds", 0.0, "must be positive"),
        ("ban_max_seconds", 1.0, "at least limits.ban_seconds"),
        ("max_tracked_ips", 0, "at least 1"),
        ("log_lines_per_second", 0.0, "must be positive"),
    ],
)
def test_abuse_limits_are_validated(key: str, value: object, says: str) -> None:
    from pool.config import ConfigError, load

    with pytest.raises(ConfigError, match=f"limits.{key}.*{says}"):
        load(env={f"POOL_LIMITS_{key.upper()}": repr(value)})


def test_abuse_limits_are_in_the_start_up_summary() -> None:
    from pool.config import Config, limits_summary

    summary = limits_summary(Config())
    for key in ("connect_rate_per_ip", "max_unauthorized_per_ip", "ban_seconds", "log_burst"):
        assert key in summary


def test_stale_shares_after_a_block_change_are_not_abuse() -> None:
    """Shares for a job this connection was sent, since replaced (a block change), are normal:
    a hundred of them escalate nothing. Job ids it was never sent are bad shares as before."""
    ctx, table = context()
    core = connection(ctx, invalid_share_burst=20, max_invalid_in_row=10_000)
    login(core)
    old = table.current
    assert old is not None
    core.on_job(make_job(table, clean=False), NOW)
    core.on_job(make_job(table, clean=True), NOW)  # a block change: every older job retired
    assert table.get(old.job_id) is None and old.job_id not in core.sent
    data = b"".join(submit(old.job_id, n, id=2000 + n) for n in range(100))
    items, shares = core.receive_data(data, NOW + 1)
    msgs = answers(items)
    assert shares == 0 and len(msgs) == 100 and all(m["error"][0] == 21 for m in msgs)
    assert not core.closing and ctx.guard.strikes(IP, NOW + 1) == 0
    flood(core, 40, NOW + 1)  # unknown job ids: bad, escalated as before
    assert core.closing and "invalid_share_burst" in core.close_reason


def test_recent_good_shares_still_count_after_a_long_clean_run() -> None:
    """The good count decays from the last accepted share, not from the last bad one: after an
    hour of clean mining, the shares of the last minute still weigh against a burst of bad."""
    ctx, table = context()
    core = connection(ctx, invalid_share_burst=40, max_invalid_in_row=10_000)
    login(core)
    job = table.current
    assert job is not None
    later = NOW + 3600
    data = b"".join(submit(job.job_id, n, id=3000 + n, en2=f"{n:08x}") for n in range(60))
    _items, shares = core.receive_data(data, later)
    assert shares == 60
    flood(core, 30, later + 1)  # fewer bad than the good just accepted: no escalation
    assert not core.closing and core.bad < core.good


def test_a_full_farm_reconnecting_at_once_is_admitted_with_the_defaults() -> None:
    """Default limits: as many connections at once as one IP may hold (a farm behind NAT
    reconnecting after a pool restart) are all let in, with no strike."""
    from pool.config import LimitsConfig

    limits = LimitsConfig()
    guard = IpGuard(GuardSettings())
    assert GuardSettings().connect_burst_per_ip == limits.connect_burst_per_ip
    results = [guard.admit(IP, NOW) for _ in range(limits.max_connections_per_ip)]
    assert results == [None] * limits.max_connections_per_ip
    assert guard.strikes(IP, NOW) == 0 and guard.banned(IP, NOW) is None
