"""Reproduce the tail figures quoted in ``tests/integration/test_mining.py`` for the vardiff
end-to-end test: the pure module under the same schedule (miner rate, target interval, 1 s
ticks, 0.1 s of work in flight after a change), checked at 2 min and 2 min 20 s.

    python -m tests.stats.vardiff_e2e --interval 0.04 --factor 1000 --runs 10000

Prints the worst relative error of the difficulty and how many runs were beyond 10/15/20/25 %.
Not collected by pytest (it takes minutes); its output is what the test's comment cites.
"""

from __future__ import annotations

import argparse
import random

from pool.vardiff import Vardiff, VardiffConfig
from tests.unit.test_vardiff import simulate

RATE = 150_000.0  # H/s, as the end-to-end test's miners
CHECKS = (120.0, 140.0)


def errors(interval: float, factor: float, seeds: range, latency: float) -> list[float]:
    config = VardiffConfig(target_interval=interval, min_difficulty=1e-12, max_difficulty=1e6)
    ideal = RATE * interval / 2**32
    out = []
    for seed in seeds:
        vardiff = Vardiff(config, ideal * factor, 0.0)
        trace = simulate(
            vardiff, RATE, until=max(CHECKS), rng=random.Random(seed), tick=1.0, latency=latency
        )
        out.append(max(abs(trace.difficulty_at(t) / ideal - 1) for t in CHECKS))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interval", type=float, default=0.04, help="target seconds per share")
    parser.add_argument("--factor", type=float, default=1000.0, help="start / ideal difficulty")
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.1, help="work in flight, seconds")
    args = parser.parse_args()
    errs = sorted(
        errors(
            args.interval,
            args.factor,
            range(args.first_seed, args.first_seed + args.runs),
            args.latency,
        )
    )
    beyond = {f"{int(b * 100)} %": sum(e > b for e in errs) for b in (0.10, 0.15, 0.20, 0.25)}
    print(
        f"interval {args.interval} s, start {args.factor}x ideal, {len(errs)} runs: "
        f"median {errs[len(errs) // 2]:.1%}, worst {errs[-1]:.1%}, runs beyond: {beyond}"
    )


if __name__ == "__main__":
    main()
