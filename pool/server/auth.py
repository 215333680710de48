"""Worker names and passwords (pure).

A username is ``ADDRESS`` or ``ADDRESS.worker``: the address is where PPS pays, so it must be
valid for the chain the pool runs on. It is keyed in its canonical spelling (bech32 in lower
case: an upper-case address is the same address, so it gets the same balance and the same
bans); a username with spaces around it, control characters, an empty worker name after the
dot or over ``MAX_USERNAME`` characters is refused with a message saying so (every echo of it
cut to ``pool.logs.CLIP_CHARS``). The password is ignored except for options separated by
commas or spaces: ``d=<number>`` fixes that worker's difficulty (clamped to the port's range).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from pool.bitcoin import AddressError, Network
from pool.bitcoin.address import canonical_address
from pool.logs import clip

WORKER_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
MAX_ADDRESS = 90  # the longest bech32 string (BIP173)
MAX_USERNAME = MAX_ADDRESS + 1 + 64
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class AuthError(ValueError):
    """Why a username/password cannot be authorized; the message is shown to the miner."""


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str  # as sent, the key the miner uses in mining.submit
    address: str  # canonical (bech32 lower case)
    worker: str  # "" when the username is a bare address
    payout_script: bytes
    fixed_difficulty: float | None
    # The canonical worker name: ``address.worker`` or ``address`` (made once: it keys every
    # per-worker counter on the share path).
    name: str = field(init=False)

    def __post_init__(self) -> None:
        name = f"{self.address}.{self.worker}" if self.worker else self.address
        object.__setattr__(self, "name", name)


def parse_password(password: str) -> float | None:
    """The ``d=`` difficulty option, or None. A bad value is an error, not silently ignored."""
    fixed = None
    for token in re.split(r"[,\s;]+", password.strip()):
        if token.lower().startswith("d="):
            raw = token[2:]
            try:
                value = float(raw)
            except ValueError:
                raise AuthError(f"password option d={clip(raw)!r} is not a number") from None
            if not math.isfinite(value) or value <= 0:
                raise AuthError(f"password option d={clip(raw)!r} must be a positive number")
            fixed = value
    return fixed


def parse_credentials(username: str, password: str, network: Network) -> Credentials:
    if not username.strip():
        raise AuthError("empty username: use ADDRESS or ADDRESS.worker")
    if len(username) > MAX_USERNAME:
        raise AuthError(
            f"username {clip(username)} is too long: at most {MAX_USERNAME} characters "
            "(ADDRESS.worker, worker name up to 64)"
        )
    if username != username.strip():
        raise AuthError(f"username {clip(username)!r} has spaces around it: send it without them")
    if _CONTROL.search(username):
        raise AuthError(f"username {clip(username)!r} contains control characters")
    address, dot, worker = username.partition(".")
    if dot and not worker:
        raise AuthError(
            f"empty worker name after '.' in {clip(username)!r}: use ADDRESS or ADDRESS.worker"
        )
    if worker and not WORKER_NAME.match(worker):
        raise AuthError(
            f"worker name {clip(worker)!r} must be 1-64 characters of letters, digits, '_' or '-'"
        )
    if len(address) > MAX_ADDRESS:
        raise AuthError(f"address {clip(address)} is too long for an address")
    try:
        canonical, script = canonical_address(address, network)
    except AddressError as exc:
        raise AuthError(f"username must be ADDRESS or ADDRESS.worker: {exc}") from None
    return Credentials(
        username=username,
        address=canonical,
        worker=worker,
        payout_script=script,
        fixed_difficulty=parse_password(password),
    )
