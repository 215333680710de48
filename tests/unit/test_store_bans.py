"""The store's shared ``bans`` rows (pool/ledger/store_bans.py) on both backends, two writers on
one database, and how a process applies them (pool/server/shared_bans.py, IpGuard.install)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from pool.ledger.store import Store
from pool.server.guard import GuardSettings, IpGuard
from tests.unit.test_store import MakeStore, make_store  # noqa: F401 (fixture)


def opened(make: MakeStore, journal_id: str = "") -> Store:
    store = make("ledger", journal_id)
    store.open()
    return store


def test_ban_rows_set_lift_and_read_since(make_store: MakeStore) -> None:  # noqa: F811
    a, b = opened(make_store, "w0"), opened(make_store, "w1")  # two writers, one database
    s1 = a.set_ban("ip", "10.0.0.7", None, "operator", "i0 w0", 100.0)
    s2 = b.set_ban("temp_ip", "10.0.0.8", 160.0, "invalid-share flood", "i0 w1", 100.0)
    s3 = a.set_ban("worker", "addr.rig1", None, "operator", "i0 w0", 101.0)
    assert 0 < s1 < s2 < s3
    rows = b.bans_since(0)
    assert [(r["kind"], r["ban_key"], r["seq"]) for r in rows] == [
        ("ip", "10.0.0.7", s1),
        ("temp_ip", "10.0.0.8", s2),
        ("worker", "addr.rig1", s3),
    ]
    assert rows[0]["until_at"] is None and rows[1]["until_at"] == 160.0
    assert rows[1]["set_by"] == "i0 w1" and not any(r["lifted"] for r in rows)
    assert a.bans_since(s3) == []
    assert [r["ban_key"] for r in a.bans_since(s1)] == ["10.0.0.8", "addr.rig1"]

    s4 = b.lift_ban("ip", "10.0.0.7", "i0 w1", 102.0)
    (lift,) = a.bans_since(s3)
    assert lift["seq"] == s4 > s3 and lift["lifted"] and lift["ban_key"] == "10.0.0.7"
    s5 = a.set_ban("ip", "10.0.0.7", None, "operator", "i0 w0", 103.0)  # banned again
    (again,) = b.bans_since(s4)
    assert again["seq"] == s5 and not again["lifted"] and again["created_at"] == 103.0
    # a temporary ban is never shortened by a shorter one made elsewhere meanwhile
    b.set_ban("temp_ip", "10.0.0.8", 130.0, "flood", "i0 w0", 104.0)
    assert [r["until_at"] for r in a.bans_since(s5)] == [160.0]
    # paging: at most ``limit`` rows, oldest change first
    assert [r["seq"] for r in a.bans_since(0, limit=2)] == sorted(
        r["seq"] for r in a.bans_since(0)
    )[:2]
    with pytest.raises(ValueError, match="unknown ban kind"):
        a.set_ban("subnet", "10.0.0.0/8", None, "", "", 0.0)
    a.close()
    b.close()


def test_prune_forgets_ended_temp_bans_keeps_operator_rows(make_store: MakeStore) -> None:  # noqa: F811
    store = opened(make_store)
    store.set_ban("temp_ip", "10.0.0.1", 100.0, "flood", "x", 40.0)  # ended at 100
    store.set_ban("temp_ip", "10.0.0.2", 10_000.0, "flood", "x", 40.0)  # in force
    store.set_ban("ip", "10.0.0.3", None, "operator", "x", 40.0)
    store.lift_ban("ip", "10.0.0.3", "x", 50.0)  # an old lift of the operator's: kept
    assert store.prune_bans(5000.0, keep_lifted_seconds=3600.0) == 1
    assert sorted(r["ban_key"] for r in store.bans_since(0)) == ["10.0.0.2", "10.0.0.3"]
    store.close()


def test_concurrent_writers_take_distinct_ordered_seqs(make_store: MakeStore) -> None:  # noqa: F811
    """Writers racing on one database never share a seq and never lose a change: a poller
    reading ``seq > last`` sees every one of them."""
    stores = [make_store("ledger", f"w{i}") for i in range(3)]
    stores[0].open()
    per = 20
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            stores[i].open()  # SQLite: a connection is used on the thread that made it
            for n in range(per):
                stores[i].set_ban("temp_ip", f"10.{i}.0.{n}", 1e9, "flood", f"w{i}", 1.0)
            stores[i].close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(1, 3)]
    for t in threads:
        t.start()
    seen: dict[str, int] = {}
    last = 0
    while any(t.is_alive() for t in threads) or len(seen) < 2 * per:
        for row in stores[0].bans_since(last):
            assert row["seq"] > last
            last = row["seq"]
            seen[row["ban_key"]] = row["seq"]
        if errors:
            break
    for t in threads:
        t.join()
    assert not errors
    assert len(seen) == 2 * per and len(set(seen.values())) == 2 * per
    stores[0].close()


def test_guard_install_is_bounded_and_never_shortens() -> None:
    guard = IpGuard(GuardSettings(max_tracked_ips=3, ban_max_seconds=100.0))
    made: list[str] = []
    guard.on_ban = lambda ban: made.append(ban.ip)
    assert guard.install("10.0.0.1", 50.0, "elsewhere", 0.0) is not None
    assert guard.banned("10.0.0.1", 10.0) is not None and made == []  # not echoed
    assert guard.install("10.0.0.1", 40.0, "elsewhere", 0.0) is None  # shorter: no change
    assert guard.install("10.0.0.2", 5000.0, "x", 0.0).until == 100.0  # type: ignore[union-attr]
    assert guard.install("10.0.0.9", 5.0, "ended", 10.0) is None
    for n in range(3, 6):
        guard.install(f"10.0.0.{n}", 60.0, "x", 0.0)
    assert len(guard.bans(1.0)) == 3  # bounded: the oldest forgotten
    assert guard.banned("10.0.0.1", 1.0) is None
    unbanned: list[str] = []
    guard.on_unban = unbanned.append
    assert guard.lift("10.0.0.5") and unbanned == []  # a lift made elsewhere: not echoed
    assert guard.unban("10.0.0.4") and unbanned == ["10.0.0.4"]


def test_guard_tells_of_its_own_bans(tmp_path: Path) -> None:
    guard = IpGuard(GuardSettings(ban_strikes=2.0))
    made: list[tuple[str, float]] = []
    guard.on_ban = lambda ban: made.append((ban.ip, ban.until))
    guard.strike("2001:db8::1", 0.0, "flood")
    assert made == []
    ban = guard.strike("2001:db8::2", 1.0, "flood")  # same /64
    assert ban is not None and made == [("2001:db8::/64", ban.until)]
