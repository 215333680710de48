"""The managed bitcoind's process lifecycle: it dies with the pool, a leftover is found and
stopped, a restart backs off.

- ``die_with_parent``: the ``preexec_fn`` of the node's ``Popen``: Linux sends the child SIGTERM
  (a clean bitcoind shutdown) when the thread that forked it exits, so the node must be started
  from a long-lived thread (the event loop's), never from a worker thread.
- ``find_leftovers`` / ``stop_leftover``: a bitcoind still running on our data dir from a run
  that died without stopping it (SIGKILL where the parent-death signal is not available, a
  node started by hand) holds the data dir's lock. It is found by its pidfile and, failing
  that, by a scan of ``/proc``; it counts only if its command line names bitcoind and this data
  dir. It is asked to stop over RPC (its cookie, its ``-rpcport``), else SIGTERM, else SIGKILL.
- ``Backoff``: the delays between restart attempts (pure; unit-tested).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from pool.node.rpc import BitcoinRpc, RetryPolicy, RpcError

log = structlog.get_logger("pool.node.lifecycle")

PR_SET_PDEATHSIG = 1
PIDFILE = "bitcoind.pid"


@dataclass
class Backoff:
    """Exponential backoff: ``initial``, doubled after each failure, capped at ``maximum``;
    ``reset`` after a success."""

    initial: float
    maximum: float
    _next: float = field(init=False)

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.maximum < self.initial:
            raise ValueError(
                f"backoff needs 0 < initial <= maximum, got {self.initial}, {self.maximum}"
            )
        self._next = self.initial

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self._next = self.initial


def parent_death_signal_supported() -> bool:
    return sys.platform.startswith("linux")


def die_with_parent() -> None:
    """In the child between fork and exec: SIGTERM when the parent (thread) dies. If the parent
    already died before this ran (the race prctl leaves), exit at once."""
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:  # pragma: no cover
        return
    if os.getppid() != parent:  # pragma: no cover - the parent died in between
        os._exit(1)


# -- leftover nodes -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Leftover:
    pid: int
    rpc_port: int | None


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie has exited; it only awaits its reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # "pid (comm) S ...": the state follows the last ')' (comm may hold spaces and parentheses)
    state = stat.rsplit(")", 1)[-1].split()[:1]
    return state != ["Z"]


def leftover_of(pid: int, datadir: Path) -> Leftover | None:
    """``pid`` as a leftover node of ``datadir``: its command line names bitcoind and
    ``-datadir=<datadir>``; None otherwise (another process reused the pid, or it is gone)."""
    args = _cmdline(pid)
    if not args or not alive(pid):
        return None
    # argv[0], or a later program argument when it runs through a dynamic loader
    # ("ld-linux ... --library-path DIR .../bitcoind -regtest ...")
    if not any(Path(arg).name == "bitcoind" for arg in args if not arg.startswith("-")):
        return None
    wanted = str(datadir.resolve())
    rpc_port: int | None = None
    matches = False
    for arg in args[1:]:
        if arg.startswith("-datadir="):
            value = arg.split("=", 1)[1]
            with contextlib.suppress(OSError):
                value = str(Path(value).resolve())
            matches = matches or value == wanted
        elif arg.startswith("-rpcport="):
            with contextlib.suppress(ValueError):
                rpc_port = int(arg.split("=", 1)[1])
    return Leftover(pid, rpc_port) if matches else None


def find_leftovers(datadir: Path, *, net: str = "regtest") -> list[Leftover]:
    """Running bitcoinds on ``datadir``: the pidfile's process first, then any other process
    found in /proc (a pidfile can be missing: removed by hand, or not written yet)."""
    found: dict[int, Leftover] = {}
    pidfile = datadir / net / PIDFILE
    with contextlib.suppress(OSError, ValueError):
        pid = int(pidfile.read_text().strip())
        if pid != os.getpid() and (leftover := leftover_of(pid, datadir)) is not None:
            found[pid] = leftover
    with contextlib.suppress(OSError):
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            if pid in found or pid == os.getpid():
                continue
            if (leftover := leftover_of(pid, datadir)) is not None:
                found[pid] = leftover
    return list(found.values())


async def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def stop_leftover(leftover: Leftover, cookie_file: Path, *, timeout: float) -> str:
    """Stop a leftover node: RPC ``stop`` if it answers, else SIGTERM; SIGKILL if it is still
    there after ``timeout`` seconds. Returns how it was stopped."""
    how = "sigterm"
    if leftover.rpc_port is not None:  # no cookie: the call fails and SIGTERM follows
        rpc = BitcoinRpc(
            f"http://127.0.0.1:{leftover.rpc_port}/",
            cookie_file=cookie_file,
            retry=RetryPolicy(give_up_after=0.0, log_every=3600.0),
        )
        try:
            await rpc.call("stop", retry=False, timeout=10.0)
            how = "rpc_stop"
        except RpcError as exc:
            log.info("bitcoind_leftover_rpc_stop_failed", pid=leftover.pid, error=str(exc))
        finally:
            await rpc.close()
    if how == "sigterm":
        with contextlib.suppress(ProcessLookupError):
            os.kill(leftover.pid, signal.SIGTERM)
    if await _wait_gone(leftover.pid, timeout):
        return how
    log.warning(
        "bitcoind_leftover_kill", pid=leftover.pid, reason=f"still running after {timeout} s"
    )
    with contextlib.suppress(ProcessLookupError):
        os.kill(leftover.pid, signal.SIGKILL)
    await _wait_gone(leftover.pid, timeout)
    return "sigkill"


async def stop_leftovers(datadir: Path, cookie_file: Path, *, timeout: float) -> int:
    """Stop every leftover node on ``datadir`` (logged); returns how many there were."""
    leftovers = await asyncio.to_thread(find_leftovers, datadir)
    for leftover in leftovers:
        log.warning(
            "bitcoind_leftover_found",
            pid=leftover.pid,
            datadir=str(datadir),
            note="a bitcoind from an earlier run still holds the data dir: stopping it",
        )
        how = await stop_leftover(leftover, cookie_file, timeout=timeout)
        log.warning("bitcoind_leftover_stopped", pid=leftover.pid, how=how)
    return len(leftovers)
