"""The ``processes`` scenario (issue 13): ``server.processes = 2`` against one process.

- Throughput per CPU: the random-nonce submit flood of ``submits`` (100 connections, 32 in
  flight each, share difficulty 1) against a pool of 1 and of 2 worker processes, in 3 rounds
  (the median ratio reported); answers per pool CPU-second, the pool's CPU being every
  process of it (the supervisor and its workers, from /proc: the load generator's meter sums
  the pool's process tree). Both pools are pinned to the same core and the generator to
  another (taskset, as every scenario), so the ratio says whether a second process costs CPU
  per answer (a shared lock, duplicated work), not whether it adds cores. The acceptance
  bound: within 10 %.
- Idle miners: 20 000 miners connecting at once to a 2-process pool; how many got a job, and
  how the kernel spread them over the workers (open sockets per worker, sampled from
  /proc/<pid>/fd while they are connected) and the workers' RSS.

Results under ``scenarios.processes`` in the results file; a row each in the markdown table.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import resource
import statistics
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks.harness import REPO, Cpus, Node, PoolProcess, free_ports, pool_config
from benchmarks.harness import loadgen_spec as _spec
from benchmarks.harness import run_loadgen as _loadgen

FLOOD_CONNECTIONS = 100
FLOOD_ROUNDS = 3
IDLE_CONNECTIONS = 20_000


def _workers(data_dir: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads((data_dir / "supervisor" / "workers.json").read_text())
    except (OSError, ValueError):
        return []
    workers = data.get("workers", [])
    return workers if isinstance(workers, list) else []


async def _wait_workers(pool: PoolProcess, data_dir: Path, n: int, timeout: float = 120) -> None:
    """Every worker logged ``pool_started`` (the port answers as soon as the first does)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            text = pool.log_path.read_text(errors="replace")
        except OSError:
            text = ""
        started = text.count('"event": "pool_started"') >= n
        if started and (n == 1 or len(_workers(data_dir)) == n):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{n} workers did not start in {timeout} s:\n{pool.log_tail()}")
        await asyncio.sleep(0.2)


def _sockets(pid: int) -> int:
    try:
        return sum(
            1 for fd in os.scandir(f"/proc/{pid}/fd") if os.readlink(fd.path).startswith("socket:")
        )
    except OSError:
        return 0


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


async def with_processes(
    name: str,
    node: Node,
    cpus: Cpus,
    workdir: Path,
    src: Path,
    processes: int,
    run: Any,
    pin_workers: bool = False,
    **pool_settings: Any,
) -> dict[str, Any]:
    """A pool of ``processes`` worker processes (``pool_config(**pool_settings)``, share
    difficulty 1 unless given), ``await run(pool, data_dir)`` once every worker started."""
    port, _api = free_ports(2)
    base = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir))
    data_dir = base / "data"
    pool_settings.setdefault("difficulty", 1.0)
    config = pool_config(node, data_dir, stratum_port=port, **pool_settings)
    if processes > 1:
        config["server"] = {"processes": processes, "pin_workers": pin_workers}
    pool = PoolProcess(config, base, cpus.pool, src=src)
    await pool.start()
    try:
        await _wait_workers(pool, data_dir, processes)
        result: dict[str, Any] = await run(pool, data_dir)
    finally:
        await pool.stop()
    result["processes"] = processes
    result["pool"] = pool.meta
    if pool.meta.get("exit_code") not in (0, None):
        result["pool_log_tail"] = pool.log_tail()
    return result


def _raise_nofile(want: int) -> int:
    """The open-files hard limit raised to ``want`` when allowed (root; the processes started
    afterwards inherit it); the limit in force."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            hard = want
    return hard


async def _part(name: str, out: dict[str, Any], run: Any) -> None:
    """One part of the scenario; a failure is recorded and the other parts still run."""
    try:
        out[name] = await run()
    except Exception as exc:
        traceback.print_exc()
        out[name] = {"error": f"{type(exc).__name__}: {exc}"}


async def processes(node: Node, cpus: Cpus, workdir: Path, s: Any) -> dict[str, Any]:
    src = Path(s.pool_src) if s.pool_src else REPO
    quick = s.window < 5
    out: dict[str, Any] = {}
    nofile = _raise_nofile(IDLE_CONNECTIONS * 2 + 4096)

    async def flood(pool: PoolProcess, data_dir: Path) -> dict[str, Any]:
        spec = _spec(
            "flood",
            node,
            pool,
            connections=FLOOD_CONNECTIONS,
            in_flight=s.in_flight,
            unique_nonces=False,
            warmup=s.warmup,
            window=s.window,
        )
        result = await _loadgen(spec, cpus, timeout=300)
        cpu = result.get("window", {}).get("pool_cpu_seconds") or 0
        answers = result.get("answers_in_window", 0)
        result["answers_per_pool_cpu_second"] = round(answers / cpu) if cpu else None
        return result

    # Rounds of 1 then 2 processes: other load on the machine moves the figures (a pool that
    # gets less of its core answers bigger batches per wake-up, cheaper each), so each round's
    # ratio compares neighbours in time and the median ratio is reported. Twice: the pool
    # pinned to one core (its workers share it) and the pool on every core (the load
    # generator still pinned to its own).
    for label, pool_cpus in (("pinned", cpus), ("unpinned", Cpus(None, cpus.loadgen))):
        runs: dict[str, Any] = {}
        ratios = []
        for round_ in range(1 if quick else FLOOD_ROUNDS):
            for n in (1, 2):
                await _part(
                    f"round{round_ + 1}_processes{n}",
                    runs,
                    functools.partial(
                        with_processes,
                        f"processes-{label}{n}",
                        node,
                        pool_cpus,
                        workdir,
                        src,
                        n,
                        flood,
                    ),
                )
            one = runs[f"round{round_ + 1}_processes1"].get("answers_per_pool_cpu_second")
            two = runs[f"round{round_ + 1}_processes2"].get("answers_per_pool_cpu_second")
            if one and two:
                ratios.append(round(two / one, 3))
        out[f"flood_{label}"] = {
            "runs": runs,
            "per_cpu_ratios_2_vs_1": ratios,
            "per_cpu_ratio_2_vs_1": statistics.median(ratios) if ratios else None,
        }

    # A load generator holds its connections, a file each: over the open-files limit, the
    # miners are split over several generators (all on the generator's core).
    idle_n = 2_000 if quick else IDLE_CONNECTIONS
    generators = -(-idle_n // max(nofile - 1000, 1000))

    async def idle(pool: PoolProcess, data_dir: Path) -> dict[str, Any]:
        pids = [int(w["pid"]) for w in _workers(data_dir)]
        peak: dict[str, dict[str, int]] = {str(p): {"sockets": 0, "rss_kib": 0} for p in pids}
        rss0 = {p: _rss_kib(p) for p in pids}

        async def sample() -> None:
            while True:
                for p in pids:
                    socks, rss = _sockets(p), _rss_kib(p)
                    if socks > peak[str(p)]["sockets"]:
                        peak[str(p)] = {"sockets": socks, "rss_kib": rss}
                await asyncio.sleep(0.5)

        sampler = asyncio.create_task(sample())
        try:
            specs = [
                _spec(
                    "idle",
                    node,
                    pool,
                    connections=idle_n // generators,
                    deadline=s.idle_deadline * 2,
                    settle=2.0,
                )
                for _ in range(generators)
            ]
            parts = await asyncio.gather(
                *(_loadgen(spec, cpus, timeout=s.idle_deadline * 2 + 300) for spec in specs)
            )
            result = _merge_idle(parts)
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        result["per_worker_peak"] = [
            {
                "pid": p,
                "sockets": peak[str(p)]["sockets"],
                "rss_growth_kib": peak[str(p)]["rss_kib"] - rss0[p],
            }
            for p in pids
        ]
        return result

    await _part(
        "idle_2",
        out,
        functools.partial(with_processes, "processes-idle", node, cpus, workdir, src, 2, idle),
    )
    out["open_files_limit"] = nofile
    return out


def _merge_idle(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The idle results of several load generators as one (the first one's details kept)."""
    if len(parts) == 1:
        return parts[0]
    merged = dict(parts[0])
    for key in ("connections", "got_in", "still_connected_after_settle", "lost"):
        merged[key] = sum(int(p.get(key) or 0) for p in parts)
    last = [p.get("seconds_until_last_in") for p in parts]
    merged["seconds_until_last_in"] = (
        None if None in last else max(float(t) for t in last if t is not None)
    )
    merged["all_in"] = all(p.get("all_in") for p in parts)
    merged["load_generators"] = parts
    return merged


def rows(sc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The scenario's lines of the markdown table."""
    if "failed" in sc:
        return [("processes", f"failed: {str(sc['failed']).splitlines()[0][:300]}", "")]
    out: list[tuple[str, str, str]] = []
    for label in ("pinned", "unpinned"):
        flood = sc.get(f"flood_{label}", {})
        first = flood.get("runs", {})
        per_cpu = [
            first.get(f"round1_processes{n}", {}).get("answers_per_pool_cpu_second") for n in (1, 2)
        ]
        out.append(
            (
                f"submits per pool CPU-second, 1 / 2 processes, pool {label} (round 1)",
                f"{per_cpu[0]} / {per_cpu[1]}",
                "",
            )
        )
        out.append(
            (
                f"per CPU-second, 2 processes / 1, pool {label} (median of rounds)",
                f"{flood.get('per_cpu_ratio_2_vs_1')} "
                f"(rounds {flood.get('per_cpu_ratios_2_vs_1')})",
                ">= 0.90",
            )
        )
    idle = sc.get("idle_2", {})
    spread = [w["sockets"] for w in idle.get("per_worker_peak", [])]
    out.append(
        (
            f"idle miners on 2 processes ({idle.get('connections')})",
            f"{idle.get('got_in')} got a job; sockets per worker {spread}",
            "all, spread over both",
        )
    )
    return out


def settings_note() -> dict[str, Any]:
    return {"flood_connections": FLOOD_CONNECTIONS, "idle_connections": IDLE_CONNECTIONS}
