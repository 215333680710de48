"""``python -m tests.fuzz [--count N] [--seed S] [--start I]``: the long fuzz run (``make fuzz``).

Prints the seed first (a run is reproduced by its seed; a failure prints the one input to
replay), progress every 5 000 inputs, then the counts and inputs/s as JSON. Exit status 1 on
a broken invariant.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys

from tests.fuzz.engine import FuzzFailure, Stats, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("--count", type=int, default=1_000_000, help="inputs (default 1000000)")
    parser.add_argument("--seed", type=int, help="default: a random one (printed)")
    parser.add_argument("--start", type=int, default=0, help="first input index (replay)")
    parser.add_argument(
        "--jobs", type=int, default=min(4, os.cpu_count() or 1), help="processes (default: up to 4)"
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    print(f"fuzz: seed {seed}, inputs {args.start}..{args.start + args.count - 1}", flush=True)

    def progress(stats: Stats) -> None:
        s = stats.summary()
        print(
            f"fuzz: {s['inputs']} inputs, {s['inputs_per_second']}/s, "
            f"{s['shares_accepted']} shares, {s['line_too_long']} over-long lines",
            flush=True,
        )

    try:
        stats = run(args.count, seed, start=args.start, jobs=args.jobs, progress=progress)
    except FuzzFailure as exc:
        print(f"fuzz: FAILED with seed {seed}: {exc}", file=sys.stderr)
        return 1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
    print(
        json.dumps(
            {"seed": seed, "jobs": args.jobs, **stats.summary(), "max_rss_mib": max(peak, workers)},
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
