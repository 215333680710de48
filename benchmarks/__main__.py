"""``make bench`` (= ``python -m benchmarks``): the pool measured as an outsider would, plus the
in-process micro-benchmarks.

    python -m benchmarks [--only micro,submits,accepted,idle,fanout,api] [--quick] [--out FILE]

One regtest bitcoind is started for the run (a temp dir, floating). Each scenario starts the
pool as a separate process with ``python -m pool run --config FILE`` (a fresh data dir, pinned
to one core) and the load generator (``benchmarks/loadgen``) as another process pinned to a
second core; they talk over TCP (Stratum v1 lines, HTTP) only. See ``benchmarks/scenarios.py``
for what each scenario measures. Results go to ``benchmarks/results/latest.json`` (written
after every scenario) and a markdown table is printed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks import micro, report
from benchmarks.harness import REPO, choose_cpus, regtest_node
from benchmarks.scenarios import RUNNERS, SCENARIOS, Settings, settings_dict

ALL = ("micro", *SCENARIOS)
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "latest.json"


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        return ""


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return "?"


def machine() -> dict[str, Any]:
    model = "?"
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    cpus = choose_cpus()
    dirty = _git("status", "--porcelain", "--", "pool", "stratum")
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "pool_sources_modified": len(dirty.splitlines()) if dirty else 0,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "pool_cpu": cpus.pool,
        "loadgen_cpu": cpus.loadgen,
        "somaxconn": _read("/proc/sys/net/core/somaxconn"),
        "nofile_hard_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        "uvloop_installed": importlib.util.find_spec("uvloop") is not None,
        "orjson_installed": importlib.util.find_spec("orjson") is not None,
    }


def write(results: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(out)


async def run_scenarios(
    names: list[str], settings: Settings, results: dict[str, Any], out: Path
) -> bool:
    """Runs ``names`` on one regtest node; True when none failed."""
    ok = True
    cpus = choose_cpus()
    if cpus.pool is None:
        print("warning: fewer than 2 CPUs: pool and load generator are not pinned", flush=True)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    need = max(settings.idle_connections, *settings.fanout_counts) + 200
    if hard < need and ({"idle", "fanout", "fanout_processes", "send_floor"} & set(names)):
        print(f"warning: open-files hard limit {hard} < {need}: connections will fail", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        async with regtest_node(Path(tmp) / "bitcoind") as node:
            for name in names:
                print(f"== {name}", flush=True)
                started = time.monotonic()
                try:
                    result = await RUNNERS[name](node, cpus, Path(tmp), settings)
                except Exception as exc:
                    traceback.print_exc()
                    result = {"failed": f"{type(exc).__name__}: {exc}"}
                    ok = False
                result["scenario_seconds"] = round(time.monotonic() - started, 1)
                results["scenarios"][name] = result
                write(results, out)
                print(json.dumps(result, indent=2)[:4000], flush=True)
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--only",
        default=",".join(ALL),
        help=f"comma-separated, from {', '.join(ALL)} (default: all)",
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run (~1 minute)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON file")
    parser.add_argument(
        "--pool-src",
        type=Path,
        help="run the pool from this source tree instead of this checkout, e.g. "
        "`git archive HEAD | tar -x -C DIR` to compare with the last commit",
    )
    parser.add_argument(
        "--event-loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the pool's stratum.event_loop (uvloop: the 'fast' extra)",
    )
    parser.add_argument(
        "--fanout-loadgen-nice",
        type=int,
        default=0,
        metavar="N",
        help="fanout_processes: run the load generator at niceness N (19: it yields the CPU "
        "it shares with a pool worker; arrivals are kernel-stamped either way)",
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(ALL))
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)} (choose from {', '.join(ALL)})")
    settings = Settings.quick() if args.quick else Settings()
    if args.pool_src is not None:
        if not (args.pool_src / "pool" / "__main__.py").exists():
            parser.error(f"--pool-src {args.pool_src}: no pool/__main__.py there")
        settings = dataclasses.replace(settings, pool_src=str(args.pool_src.resolve()))
    if args.fanout_loadgen_nice:
        settings = dataclasses.replace(settings, fanout_loadgen_nice=args.fanout_loadgen_nice)
    if args.event_loop != settings.event_loop:
        settings = dataclasses.replace(settings, event_loop=args.event_loop)
    results: dict[str, Any] = {
        "machine": machine(),
        "quick": args.quick,
        "settings": settings_dict(settings),
        "scenarios": {},
    }
    with_logs_quiet()
    if "micro" in names:
        print("== micro", flush=True)
        results["micro"] = micro.measure(quick=args.quick)
        write(results, args.out)
    ok = True
    outsider = [n for n in SCENARIOS if n in names]
    if outsider:
        ok = asyncio.run(run_scenarios(outsider, settings, results, args.out))
    write(results, args.out)
    print(f"\nresults: {args.out}\n")
    print(report.markdown(results))
    return 0 if ok else 1


def with_logs_quiet() -> None:
    """The managed node's start/stop lines would drown the results."""
    try:
        from pool import logs

        logs.configure("warning")
    except Exception as exc:
        print(f"(pool.logs not usable: {exc}; node logs stay on)", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
