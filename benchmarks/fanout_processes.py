"""The ``fanout_processes`` scenario: new block -> clean notify at 1 000 and 10 000 idle
miners with the pool on every core, as one process and as ``server.processes = 2``.

One process sends each miner's notify with one ``send()`` after the other, and on the
loopback each send also runs the receiving side's TCP path on the sender's core: at 10 000
miners that, not the pool's own work, is most of the time (README, "How to read it"). Two
worker processes each send to the miners the kernel gave them (SO_REUSEPORT), at the same
time, on both cores. The load generator stays pinned to its core (it shares that core with
one worker then); arrivals are timed by the kernel's receive stamps, so its own reading does
not count. Both pools are measured in the same run, on the same node, one after the other.

Results under ``scenarios.fanout_processes``: per process count the ``fanout`` scenario's
figures plus how many miners each worker held (open sockets, sampled from /proc).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from pathlib import Path
from typing import Any

from benchmarks.harness import REPO, Cpus, Node, PoolProcess
from benchmarks.processes import _part, _sockets, _workers, with_processes
from benchmarks.report import fanout_row


async def fanout_processes(node: Node, cpus: Cpus, workdir: Path, s: Any) -> dict[str, Any]:
    from benchmarks.scenarios import FANOUT_CONFIG, fanout_rounds

    src = Path(s.pool_src) if s.pool_src else REPO

    async def run(pool: PoolProcess, data_dir: Path, processes: int) -> dict[str, Any]:
        rounds = fanout_rounds(
            node, cpus, s, loadgen_nice=s.fanout_loadgen_nice, processes=processes
        )
        pids = [int(w["pid"]) for w in _workers(data_dir)] or [pool.pid]
        peak = {p: 0 for p in pids}

        async def sample() -> None:
            while True:
                for p in pids:
                    peak[p] = max(peak[p], _sockets(p))
                await asyncio.sleep(0.5)

        sampler = asyncio.create_task(sample())
        try:
            result: dict[str, Any] = await rounds(pool)
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        result["sockets_per_process"] = [peak[p] for p in pids]
        result["gc_full_passes_logged"] = _logged_gc_passes(pool.log_path)
        return result

    out: dict[str, Any] = {}
    both_cores = Cpus(None, cpus.loadgen)
    for n in s.fanout_process_counts:
        await _part(
            f"processes{n}",
            out,
            functools.partial(
                with_processes,
                f"fanout-processes{n}",
                node,
                both_cores,
                workdir,
                src,
                n,
                functools.partial(run, processes=n),
                pin_workers=True,  # worker i on CPU i (server.pin_workers)
                **FANOUT_CONFIG,
            ),
        )
    return out


def _logged_gc_passes(log_path: Path) -> list[float]:
    """The pool's ``gc_full_pass`` warnings (full collector passes of 20 ms or more: each
    stalls that process's loop, a fan-out included), in seconds."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        if '"gc_full_pass"' in line:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                out.append(float(json.loads(line)["seconds"]))
    return out


def rows(sc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The scenario's lines of the markdown table."""
    if "failed" in sc:
        return [("fanout_processes", f"failed: {str(sc['failed']).splitlines()[0][:300]}", "")]
    out: list[tuple[str, str, str]] = []
    for n in (1, 2):
        r = sc.get(f"processes{n}", {})
        if "error" in r:
            out.append((f"fan-out, {n} process(es), pool on both cores", r["error"], ""))
            continue
        label = f", {n} process{'es' if n > 1 else ''}, pool on both cores"
        note = f"; miners per process {r.get('sockets_per_process')}" if n > 1 else ""
        for count, v in r.items():
            if isinstance(v, dict) and "rounds" in v:
                out.append(fanout_row(count, v, label, note))
    return out
