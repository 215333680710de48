"""Extranonce1 values: each connection's own nonce space (pure: no asyncio, no clock).

A miner's work is made unique by its extranonce1 (in the coinbase); two connections with the
same one on the same job would search the same hashes. One process keeps its live values
distinct (``ExtranonceAllocator``); several processes and several instances on one ledger
keep theirs distinct by a prefix (``ExtranonceSpace``):

    [ instance_id: 8 bits ][ process index: bits for server.processes ][ counter: the rest ]

The layout of one instance depends only on its own ``server.processes``, and two instances
differ in their first byte, so no two processes anywhere share a value. An instance with one
process and ``instance_id = 0`` (the default: a pool on its own) has no prefix: the whole
space, as before there were several processes. With the default ``extranonce1_size = 4``:
2 processes leave 2^23 values per process (8 388 608), 64 processes 2^18 (262 144);
``pool.config.validate`` refuses a layout that leaves no more than ``limits.max_connections``.

The session id of mining.subscribe (resumption) is the extranonce1: a process only hands back
a value of its own space, so a miner resuming on another process (the kernel spreads
connections over the processes) gets a fresh value of that process's space instead.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass

RESUMABLE_SESSIONS = 4096
INSTANCE_BITS = 8


@dataclass(frozen=True, slots=True)
class ExtranonceSpace:
    """The extranonce1 values of one process: ``prefix`` in the top ``prefix_bits`` bits."""

    size: int  # bytes
    prefix: int = 0
    prefix_bits: int = 0

    @property
    def counter_bits(self) -> int:
        return 8 * self.size - self.prefix_bits

    @property
    def capacity(self) -> int:
        """How many distinct values (so live connections, at most) this process has."""
        return 1 << self.counter_bits

    def value(self, counter: int) -> bytes:
        return ((self.prefix << self.counter_bits) | counter).to_bytes(self.size, "big")

    def owns(self, en1: bytes) -> bool:
        return len(en1) == self.size and int.from_bytes(en1, "big") >> self.counter_bits == (
            self.prefix
        )


def process_bits(processes: int) -> int:
    """Bits that number ``processes`` worker processes (1 -> 0, 2 -> 1, 3..4 -> 2, 64 -> 6)."""
    return (processes - 1).bit_length()


def extranonce_space(
    size: int, instance_id: int = 0, process: int = 0, processes: int = 1
) -> ExtranonceSpace:
    """Process ``process`` (0-based) of ``processes`` on instance ``instance_id``."""
    if not 0 <= process < processes:
        raise ValueError(f"process index {process} is not in 0..{processes - 1}")
    if not 0 <= instance_id < 1 << INSTANCE_BITS:
        raise ValueError(f"instance id {instance_id} is not in 0..{(1 << INSTANCE_BITS) - 1}")
    if processes == 1 and instance_id == 0:
        return ExtranonceSpace(size)
    bits = process_bits(processes)
    prefix_bits = INSTANCE_BITS + bits
    if prefix_bits >= 8 * size:
        raise ValueError(
            f"an extranonce1 of {size} bytes has no room after a {prefix_bits}-bit prefix"
        )
    return ExtranonceSpace(size, (instance_id << bits) | process, prefix_bits)


class ExtranonceAllocator:
    """Unique extranonce1 values for live connections; released ones are parked so a miner
    that reconnects with its old session id (mining.subscribe's second param) gets it back.
    Values come from ``space`` (default: the whole space of ``size`` bytes)."""

    def __init__(
        self, size: int, *, start: int | None = None, space: ExtranonceSpace | None = None
    ) -> None:
        self.space = space or ExtranonceSpace(size)
        if self.space.size != size:
            raise ValueError(f"extranonce1 size {size} != the space's {self.space.size}")
        self.size = size
        capacity = self.space.capacity
        self._next = (int.from_bytes(os.urandom(8), "big") if start is None else start) % capacity
        self._live: set[bytes] = set()
        self._released: OrderedDict[bytes, None] = OrderedDict()

    def allocate(self) -> bytes:
        space = self.space
        capacity = space.capacity
        for _ in range(min(1 << 16, capacity)):
            self._next = (self._next + 1) % capacity
            en1 = space.value(self._next)
            if en1 not in self._live and en1 not in self._released:
                self._live.add(en1)
                return en1
        # Every nearby value is taken or parked for resumption: reuse the oldest parked one.
        en1, _ = self._released.popitem(last=False)
        self._live.add(en1)
        return en1

    def release(self, en1: bytes) -> None:
        self._live.discard(en1)
        self._released[en1] = None
        while len(self._released) > RESUMABLE_SESSIONS:
            self._released.popitem(last=False)

    def resume(self, current: bytes, session_id: str) -> bytes | None:
        """Swap ``current`` for the extranonce1 named by ``session_id`` (hex; the session id
        is the extranonce1, as in ckpool) if it is of this process's space and no live
        connection has it: one parked here by a disconnect, or one from before a restart of
        the pool (nothing parked then)."""
        if len(session_id) != 2 * len(current):
            return None
        try:
            wanted = bytes.fromhex(session_id)
        except ValueError:
            return None
        if wanted == current or wanted in self._live or not self.space.owns(wanted):
            return None
        self._released.pop(wanted, None)
        self._live.discard(current)
        self._released[current] = None
        self._live.add(wanted)
        return wanted
