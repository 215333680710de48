"""Worker names and passwords (pure).

A username is ``ADDRESS`` or ``ADDRESS.worker``: the address is where PPS pays, so it must be
valid for the chain the pool runs on. The password is ignored except for options separated by
commas or spaces: ``d=<number>`` fixes that worker's difficulty (clamped to the port's range).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from pool.bitcoin import AddressError, Network, address_to_script

WORKER_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")


class AuthError(ValueError):
    """Why a username/password cannot be authorized; the message is shown to the miner."""


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str  # as sent, the key the miner uses in mining.submit
    address: str
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
                raise AuthError(f"password option d={raw!r} is not a number") from None
            if not math.isfinite(value) or value <= 0:
                raise AuthError(f"password option d={raw!r} must be a positive number")
            fixed = value
    return fixed


def parse_credentials(username: str, password: str, network: Network) -> Credentials:
    username = username.strip()
    if not username:
        raise AuthError("empty username: use ADDRESS or ADDRESS.worker")
    address, _, worker = username.partition(".")
    if worker and not WORKER_NAME.match(worker):
        raise AuthError(
            f"worker name {worker!r} must be 1-64 characters of letters, digits, '_' or '-'"
        )
    try:
        script = address_to_script(address, network)
    except AddressError as exc:
        raise AuthError(f"username must be ADDRESS or ADDRESS.worker: {exc}") from None
    return Credentials(
        username=username,
        address=address,
        worker=worker,
        payout_script=script,
        fixed_difficulty=parse_password(password),
    )
