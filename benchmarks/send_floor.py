"""The ``send_floor`` scenario: what this machine allows a fan-out at all, without the pool.

A new block reaches every miner as one ``send()`` per connection: no program can fan out
faster than a bare loop of those sends. This scenario measures that loop with the same
pinning as ``fanout`` and ``fanout_processes``: the senders (one process on the pool's core,
or two, one per core, like ``server.processes = 2`` with ``server.pin_workers``) each accept
their share of loopback connections from a receiver process pinned to the load generator's
core, then time ``for sock in socks: sock.send(line)`` with a line the size of a clean
``mining.notify`` on regtest. A round's figure is the slowest sender's loop; the receiver
reads everything so no socket buffer fills.

On the loopback a send also runs the receiving side's TCP path on the sender's core, so this
is the floor under the pool's fan-out figures on this machine, not a network's.

Run alone: ``python -m benchmarks --only send_floor``. Results under
``scenarios.send_floor``: per miner count, per process count, the rounds' loop times in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import selectors
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import BACKLOG, REPO, Cpus, Node, child_setup

# A clean mining.notify as the pool sends it on regtest (no transactions: empty merkle
# branch): job id, previous hash, coinbase halves, version, bits, time, clean.
NOTIFY_LINE = (
    json.dumps(
        {
            "id": None,
            "method": "mining.notify",
            "params": [
                "1a2b3c4d",
                "ab" * 32,
                "01" * 52,
                "02" * 86,
                [],
                "20000000",
                "207fffff",
                "6767a1b0",
                True,
            ],
        },
        separators=(",", ":"),
    )
    + "\n"
).encode()


# ------------------------------------------------------------------ the two child roles


def _sender(connections: int) -> None:
    """Listens, accepts ``connections``, then times one send per connection per ``go``."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(BACKLOG)
    _say(port=listener.getsockname()[1])
    socks: list[socket.socket] = []
    while len(socks) < connections:
        sock, _ = listener.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        socks.append(sock)
    _say(ready=len(socks))
    for line in sys.stdin:
        if line.strip() != "go":
            break
        short = 0
        started = time.perf_counter()
        for sock in socks:
            try:
                if sock.send(NOTIFY_LINE) != len(NOTIFY_LINE):
                    short += 1
            except BlockingIOError:
                short += 1
        elapsed = time.perf_counter() - started
        _say(ms=round(elapsed * 1000, 3), short=short)


def _receiver(ports: list[int], counts: list[int]) -> None:
    """Connects ``counts[i]`` sockets to ``ports[i]`` and reads until stdin closes; after
    ``expect N`` on stdin it says ``received`` once N bytes in all have arrived."""
    selector = selectors.DefaultSelector()
    total = 0
    for port, count in zip(ports, counts, strict=True):
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
            total += 1
    stdin = sys.stdin.fileno()
    os.set_blocking(stdin, False)
    selector.register(stdin, selectors.EVENT_READ, "stdin")
    _say(connected=total)
    received = 0
    expected: int | None = None
    commands = b""
    while True:
        for key, _ in selector.select():
            if key.data == "stdin":
                with contextlib.suppress(BlockingIOError):
                    data = os.read(stdin, 4096)
                    if not data:
                        return
                    commands += data
                    while b"\n" in commands:
                        line, commands = commands.split(b"\n", 1)
                        if line.startswith(b"expect "):
                            expected = int(line.split()[1])
                continue
            assert isinstance(key.fileobj, socket.socket)
            with contextlib.suppress(BlockingIOError, ConnectionError):
                received += len(key.fileobj.recv(65536))
        if expected is not None and received >= expected:
            _say(received=received)
            expected = None


def _say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


# ------------------------------------------------------------------ the runner's side


class _Child:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, args: list[str], cpu: int | None, nice: int = 0) -> _Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.send_floor",
            *args,
            cwd=REPO,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            preexec_fn=child_setup(cpu, nice),
        )
        return cls(proc)

    async def read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"send_floor child exited ({await self.proc.wait()})")
        result: dict[str, Any] = json.loads(line)
        return result

    def write(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")

    async def stop(self) -> None:
        if self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def measure(
    count: int, processes: int, rounds: int, cpus: Cpus, receiver_nice: int
) -> dict[str, Any]:
    """``rounds`` fan-outs of one send to each of ``count`` connections from ``processes``
    sender processes at once."""
    if processes == 1:
        sender_cpus: list[int | None] = [cpus.pool]
    else:
        available = sorted(os.sched_getaffinity(0))
        sender_cpus = [available[i % len(available)] for i in range(processes)]
    shares = [count // processes + (1 if i < count % processes else 0) for i in range(processes)]
    senders: list[_Child] = []
    receiver: _Child | None = None
    try:
        for cpu, share in zip(sender_cpus, shares, strict=True):
            senders.append(await _Child.start(["sender", str(share)], cpu))
        ports = [int((await s.read(30))["port"]) for s in senders]
        receiver = await _Child.start(
            ["receiver", ",".join(map(str, ports)), ",".join(map(str, shares))],
            cpus.loadgen,
            receiver_nice,
        )
        for s in senders:
            await s.read(600)  # ready
        await receiver.read(600)  # connected
        loops: list[float] = []
        short = 0
        for _ in range(rounds):
            await asyncio.sleep(1.0)
            for s in senders:
                s.write("go")
            answers = [await s.read(120) for s in senders]
            loops.append(max(float(a["ms"]) for a in answers))
            short += sum(int(a["short"]) for a in answers)
        received = 0  # a short send (a full socket buffer) is a failed measurement
        if not short:  # every line sent must have arrived
            receiver.write(f"expect {count * rounds * len(NOTIFY_LINE)}")
            received = int((await receiver.read(120))["received"])
    finally:
        for child in (*senders, *([receiver] if receiver else [])):
            await child.stop()
    return {
        "connections": count,
        "processes": processes,
        "line_bytes": len(NOTIFY_LINE),
        "loop_ms": loops,
        "median_ms": round(statistics.median(loops), 3),
        "max_ms": max(loops),
        "short_sends": short,
        "bytes_received": received,
        "all_received": received == count * rounds * len(NOTIFY_LINE),
    }


async def send_floor(node: Node, cpus: Cpus, workdir: Path, s: Any) -> dict[str, Any]:
    del node, workdir  # no pool, no chain: the machine alone
    out: dict[str, Any] = {}
    for count in s.fanout_counts:
        for n in s.fanout_process_counts:
            nice = s.fanout_loadgen_nice if n > 1 else 0  # as fanout / fanout_processes run
            result = await measure(count, n, s.fanout_rounds, cpus, nice)
            if not result["all_received"]:
                raise RuntimeError(f"send_floor: lines lost or short sends: {result}")
            out[f"{count}/processes{n}"] = result
    return out


def rows(sc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The scenario's lines of the markdown table."""
    if "failed" in sc:
        return [("send_floor", f"failed: {str(sc['failed']).splitlines()[0][:300]}", "")]
    out = []
    for v in sc.values():
        if not isinstance(v, dict) or "loop_ms" not in v:
            continue
        n = v["processes"]
        where = "one process, the pool's core" if n == 1 else f"{n} processes, one per core"
        out.append(
            (
                f"machine floor: a bare loop of {v['connections']:,} sends, {where}",
                f"median {v['median_ms']:.1f} ms, max {v['max_ms']:.1f} ms "
                f"({len(v['loop_ms'])} rounds, {v['line_bytes']}-byte line)",
                "-",
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="a send_floor child (see module doc)")
    sub = parser.add_subparsers(dest="role", required=True)
    sender = sub.add_parser("sender")
    sender.add_argument("connections", type=int)
    receiver = sub.add_parser("receiver")
    receiver.add_argument("ports")
    receiver.add_argument("counts")
    args = parser.parse_args()
    if args.role == "sender":
        _sender(args.connections)
    else:
        _receiver([int(p) for p in args.ports.split(",")], [int(c) for c in args.counts.split(",")])


if __name__ == "__main__":
    main()
