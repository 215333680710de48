"""Per-IP abuse guard (pure: no asyncio, no sockets; the clock is passed in).

One record per client IP (IPv6: per /64, the block one subscriber gets), kept only while it
matters and never more than ``max_tracked_ips`` of them:

* **Connection rate.** A token bucket: ``connect_burst_per_ip`` connections at once, then
  ``connect_rate_per_ip`` per second. A connection over the rate is refused.
* **Strikes.** Abuse a connection was dropped for (an invalid-share flood, a protocol error)
  is one strike for its IP; connections refused for the rate are ``1/connect_burst_per_ip``
  of a strike each, so a burst a farm makes on restart costs nothing lasting but a flood
  does. Strikes leak away, one per ``strike_decay_seconds``.
* **Temporary bans.** ``ban_strikes`` strikes ban the IP for ``ban_seconds``, doubled for each
  earlier ban of the same IP (capped at ``ban_max_seconds``). The count of earlier bans drops
  by one per ``ban_forgive_seconds`` without a ban (good behaviour). A ban survives
  reconnects: every connection from the IP is refused until it ends. These bans live in
  memory (a restart forgets them); the operator's bans (``bans.py``) are separate. With a
  shared store (``shared_bans.py``) they are written there too (``on_ban``), and bans made by
  other processes are installed here (``install``, bounded like the guard's own).

Bounded in O(1): the records are kept least recently seen first, and a full table forgets the
least recently seen (a new record never scans the table). The bans in force are a table of
their own (also at most ``max_tracked_ips``, the oldest ban forgotten first), so a crowd of
new addresses (many IPv6 /64s) can push an IP's rate and strike counts out, never its ban.

Escalation per connection (in the core): a fresh job first, then ``client.reconnect`` and a
drop; the drop is a strike here, so an IP that keeps coming back is dropped at once (no
reconnect hint) and then banned.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GuardSettings:
    connect_rate_per_ip: float = 10.0
    connect_burst_per_ip: int = 256
    ban_strikes: float = 3.0
    strike_decay_seconds: float = 60.0
    ban_seconds: float = 60.0
    ban_max_seconds: float = 3600.0
    ban_forgive_seconds: float = 3600.0
    max_tracked_ips: int = 65536


@dataclass(frozen=True, slots=True)
class TempBan:
    ip: str
    until: float
    seconds: float
    bans: int  # how many times this IP was banned (this one included, less what was forgiven)
    reason: str


class _Record:
    __slots__ = ("bans", "last_ban", "seen", "stamp", "strike_stamp", "strikes", "tokens")

    def __init__(self, burst: float, now: float) -> None:
        self.tokens = burst
        self.stamp = now  # when tokens and strikes were last brought up to date
        self.strikes = 0.0
        self.strike_stamp = now  # strikes are forgiven whole, one per strike_decay_seconds
        self.bans = 0
        self.last_ban = -math.inf
        self.seen = now


def ip_key(ip: str) -> str:
    """The key an address is limited under: itself, or its /64 for IPv6."""
    if ":" not in ip:
        return ip
    try:
        addr = ipaddress.IPv6Address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(addr) >> 64 << 64, 64)))


class IpGuard:
    """Connection rate, strikes and temporary bans per IP."""

    def __init__(self, settings: GuardSettings | None = None) -> None:
        self.settings = settings or GuardSettings()
        self._records: dict[str, _Record] = {}  # least recently seen first
        self._bans: dict[str, TempBan] = {}  # by key, oldest first
        self.new_bans: list[TempBan] = []  # bans made since the server last took them
        # told of every ban made here and every operator's unban (not of installed ones)
        self.on_ban: Callable[[TempBan], None] | None = None
        self.on_unban: Callable[[str], None] | None = None

    def __len__(self) -> int:
        return len(self._records)

    def _record(self, key: str, now: float) -> _Record:
        records = self._records
        rec = records.pop(key, None)
        if rec is None:
            while len(records) >= self.settings.max_tracked_ips:
                del records[next(iter(records))]  # the least recently seen
            rec = _Record(float(self.settings.connect_burst_per_ip), now)
        else:
            self._update(rec, now)
        records[key] = rec  # most recently seen: last
        rec.seen = now
        return rec

    def _ban_of(self, key: str, now: float) -> TempBan | None:
        ban = self._bans.get(key)
        if ban is not None and ban.until <= now:
            del self._bans[key]
            return None
        return ban

    def _update(self, rec: _Record, now: float) -> None:
        s = self.settings
        elapsed = now - rec.stamp
        if elapsed <= 0:
            return
        rec.stamp = now
        rec.tokens = min(
            float(s.connect_burst_per_ip), rec.tokens + elapsed * s.connect_rate_per_ip
        )
        if rec.strikes:
            forgiven = (now - rec.strike_stamp) // s.strike_decay_seconds
            if forgiven >= 1:
                rec.strikes = max(0.0, rec.strikes - forgiven)
                rec.strike_stamp += forgiven * s.strike_decay_seconds
        if rec.bans and now - rec.last_ban >= s.ban_forgive_seconds:
            forgiven = int((now - rec.last_ban) // s.ban_forgive_seconds)
            rec.bans = max(0, rec.bans - forgiven)
            rec.last_ban += forgiven * s.ban_forgive_seconds

    # -- queries ----------------------------------------------------------------------------------
    def banned(self, ip: str, now: float) -> TempBan | None:
        return self._ban_of(ip_key(ip), now)

    def bans(self, now: float) -> list[TempBan]:
        """The bans in force, soonest to end first."""
        return sorted((b for b in self._bans.values() if b.until > now), key=lambda b: b.until)

    def strikes(self, ip: str, now: float) -> float:
        rec = self._records.get(ip_key(ip))
        if rec is None:
            return 0.0
        self._update(rec, now)
        return rec.strikes

    # -- events -----------------------------------------------------------------------------------
    def admit(self, ip: str, now: float) -> str | None:
        """A new connection from ``ip``: None to let it in, else why it is refused."""
        key = ip_key(ip)
        ban = self._ban_of(key, now)
        if ban is not None:
            return f"IP temporarily banned for {ban.until - now:.0f} s more ({ban.reason})"
        rec = self._record(key, now)
        if rec.tokens >= 1.0:
            rec.tokens -= 1.0
            return None
        s = self.settings
        self._strike(rec, key, now, 1.0 / s.connect_burst_per_ip, "connection flood")
        return (
            f"over limits.connect_rate_per_ip ({s.connect_rate_per_ip:g}/s, "
            f"burst {s.connect_burst_per_ip})"
        )

    def strike(self, ip: str, now: float, reason: str, weight: float = 1.0) -> TempBan | None:
        """Abuse a connection was dropped for; the ban it caused, if any."""
        key = ip_key(ip)
        return self._strike(self._record(key, now), key, now, weight, reason)

    def _strike(
        self, rec: _Record, key: str, now: float, weight: float, reason: str
    ) -> TempBan | None:
        if self._ban_of(key, now) is not None:
            return None  # already banned: what its connections still do changes nothing
        if not rec.strikes:
            rec.strike_stamp = now
        rec.strikes += weight
        s = self.settings
        if rec.strikes < s.ban_strikes - 1e-9:
            return None
        rec.strikes = 0.0
        rec.bans += 1
        rec.last_ban = now
        seconds = min(s.ban_max_seconds, s.ban_seconds * 2.0 ** min(rec.bans - 1, 60))
        ban = TempBan(ip=key, until=now + seconds, seconds=seconds, bans=rec.bans, reason=reason)
        self._put(ban, now)
        self.new_bans.append(ban)
        if self.on_ban is not None:
            self.on_ban(ban)
        return ban

    def _put(self, ban: TempBan, now: float) -> None:
        bans = self._bans
        bans.pop(ban.ip, None)
        if len(bans) >= self.settings.max_tracked_ips:
            for old in [k for k, b in bans.items() if b.until <= now]:  # rare: only when full
                del bans[old]
            while len(bans) >= self.settings.max_tracked_ips:
                del bans[next(iter(bans))]  # the oldest ban
        bans[ban.ip] = ban

    def install(self, ip: str, until: float, reason: str, now: float) -> TempBan | None:
        """A temporary ban another process made (through the shared store): in force here
        until ``until`` (never shortened by it; at most ``ban_max_seconds`` from ``now``). The
        ban installed, or None when it changed nothing (ended, or one as long in force)."""
        key = ip_key(ip)
        until = min(until, now + self.settings.ban_max_seconds)
        current = self._ban_of(key, now)
        if until <= now or (current is not None and current.until >= until):
            return None
        bans = 1 if current is None else current.bans
        ban = TempBan(ip=key, until=until, seconds=until - now, bans=bans, reason=reason)
        self._put(ban, now)
        return ban

    def lift(self, ip: str) -> bool:
        """End a temporary ban now without telling ``on_unban`` (a lift made elsewhere)."""
        return self._bans.pop(ip_key(ip), None) is not None

    def unban(self, ip: str) -> bool:
        """End a temporary ban now (the operator's unban); its repeat count stays."""
        lifted = self.lift(ip)
        if lifted and self.on_unban is not None:
            self.on_unban(ip_key(ip))
        return lifted

    def take_new_bans(self) -> list[TempBan]:
        bans, self.new_bans = self.new_bans, []
        return bans

    def prune(self, now: float) -> int:
        """Forget records that hold nothing any more (full bucket, no strikes, no ban, no
        ban history left to forgive); how many were forgotten."""
        s = self.settings
        for key in [k for k, b in self._bans.items() if b.until <= now]:
            del self._bans[key]
        drop = []
        for key, rec in self._records.items():
            self._update(rec, now)
            if (
                key not in self._bans
                and rec.bans == 0
                and rec.strikes == 0.0
                and rec.tokens >= s.connect_burst_per_ip
            ):
                drop.append(key)
        for key in drop:
            del self._records[key]
        return len(drop)
