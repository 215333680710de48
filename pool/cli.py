"""``stratum-pool`` (= ``python -m pool``): run | miner | scenario | economics | config check
(and ``worker``: one of the Stratum processes ``run`` starts when ``server.processes`` > 1).

Exit codes: 0 success, 1 runtime failure, 2 bad usage or configuration / refused to start,
130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stratum-pool", description="Stratum v1 Bitcoin mining pool (PPS, regtest scenarios)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the pool (default: managed regtest bitcoind)")
    run.add_argument("--config", type=Path, help="TOML config (default: configs/regtest.toml)")
    run.add_argument("--data-dir", help="where bitcoind data and the ledger live")
    run.add_argument("--stratum-port", type=int, help="port of the first Stratum listener")
    run.add_argument("--api-port", type=int, help="HTTP API port")
    run.add_argument(
        "--processes",
        type=int,
        help="Stratum worker processes on the same ports (server.processes; 1: one process)",
    )

    worker = sub.add_parser(
        "worker",
        help="one Stratum worker process (started by `run` when server.processes > 1)",
    )
    worker.add_argument(
        "--config-json", type=Path, required=True, help="the resolved config the supervisor wrote"
    )
    worker.add_argument("--index", type=int, required=True, help="this worker's index (0: lead)")

    miner = sub.add_parser("miner", help="bundled CPU miner (speaks Stratum like cpuminer)")
    from pool.miner import add_arguments

    add_arguments(miner)

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser(
        "check",
        help="validate a config and print it, secrets masked",
        description="Validate a config and print it, secrets masked. Also checks it against "
        "this machine as `run` does before starting bitcoind: every port can be bound, the data "
        "dir can be written, a saved simulated chain matches chain.simulation.",
    )
    check.add_argument("file", type=Path)
    check.add_argument(
        "--static",
        action="store_true",
        help="check the file only, not this machine (e.g. the config of a running pool, "
        "whose ports are taken)",
    )

    from pool import economics as econ

    economics = sub.add_parser(
        "economics",
        help="hashprice, power cost, break-even and PPS share value (Feb 2026 seeds)",
        description="Mining economics from network difficulty, BTC price and machine efficiency. "
        "Built-in classes: S19-class 30 J/TH, 95 TH/s ($0.06/kWh); S21-class 17.5 J/TH, "
        "200 TH/s ($0.05/kWh).",
    )
    economics.add_argument(
        "--difficulty",
        default=econ.DEFAULT_DIFFICULTY,
        help="network difficulty, SI suffixes k M G T P E (default: %(default)s)",
    )
    economics.add_argument(
        "--price", default=econ.DEFAULT_PRICE_USD, help="USD per BTC (default: %(default)s)"
    )
    economics.add_argument(
        "--fees-per-block",
        default=econ.DEFAULT_FEES_BTC_PER_BLOCK,
        help="expected fees per block in BTC (default: %(default)s)",
    )
    economics.add_argument(
        "--subsidy",
        default=econ.DEFAULT_SUBSIDY_BTC,
        help="block subsidy in BTC (default: %(default)s)",
    )
    economics.add_argument(
        "--efficiency",
        action="extend",
        nargs="+",
        default=[],
        metavar="J/TH",
        help="add a machine class custom-<J/TH> (100 TH/s per machine, $0.06/kWh by default)",
    )
    economics.add_argument(
        "--power-price",
        action="extend",
        nargs="+",
        default=[],
        metavar="USD/kWh",
        help="judge every class at each of these power prices "
        "(default: S19-class $0.06, S21-class $0.05, custom $0.06)",
    )
    economics.add_argument(
        "--share-difficulty",
        default=econ.DEFAULT_SHARE_DIFFICULTY,
        help="difficulty of the share to value (default: %(default)s)",
    )
    economics.add_argument("--json", action="store_true", help="one JSON object on stdout")

    scenario = sub.add_parser(
        "scenario",
        help="run a regtest scenario (difficulty drop, hashrate exit) and write its report",
        description="Start a managed regtest bitcoind, the pool with a simulated network "
        "difficulty and miners on a timeline; write report.json and report.html. Built-ins: "
        "difficulty-drop, hashrate-exit, feb-2026.",
    )
    scenario.add_argument("scenario", metavar="NAME|FILE", help="a built-in name or a TOML file")
    scenario.add_argument(
        "--out", type=Path, help="output dir (default: .data/scenarios/NAME-<time>); must be new"
    )
    scenario.add_argument("--quick", action="store_true", help="the scenario's quick variant")
    from pool.scenarios.schemes_report import add_arguments as add_scheme_arguments

    add_scheme_arguments(scenario)
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from pool import config as config_mod
    from pool import logs, preflight
    from pool.app import PoolApp, StartupError, with_overrides
    from pool.node.binaries import BitcoindNotFound
    from pool.node.managed import NodeStartError
    from pool.node.rpc import RpcError

    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    cfg = with_overrides(
        cfg, data_dir=args.data_dir, stratum_port=args.stratum_port, api_port=args.api_port
    )
    if args.processes is not None:
        cfg = dataclasses.replace(
            cfg, server=dataclasses.replace(cfg.server, processes=args.processes)
        )
    try:  # the command-line options as the file's keys, then this machine: before bitcoind
        config_mod.validate(cfg, f"{cfg.source} (with the command-line options)")
        preflight.check_environment(cfg)
    except config_mod.ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except preflight.PreflightError as exc:
        print(f"error: refusing to start: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logs.configure(cfg.logging.level, cfg.logging.format)
    if cfg.server.processes > 1:
        from pool.supervisor import run_supervisor

        return run_supervisor(cfg)
    loop_factory = None
    if cfg.stratum.event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            print(
                "error: stratum.event_loop = 'uvloop' needs the uvloop package "
                "(pip install 'stratum-pool[fast]')",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        loop_factory = uvloop.new_event_loop
    app = PoolApp(cfg)
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(app.run_until_signalled())
    except StartupError as exc:
        print(f"error: refusing to start: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (BitcoindNotFound, NodeStartError, RpcError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:  # e.g. a port taken between the check and the bind: one line
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:  # a shutdown that failed or was interrupted: the managed node still goes
        if app.node is not None:
            app.node.stop_now()
    return EXIT_OK


def _cmd_worker(args: argparse.Namespace) -> int:
    """One of ``server.processes`` workers: the resolved config its supervisor wrote."""
    from pool.worker import run_worker

    return run_worker(args.config_json, args.index)


def _cmd_config_check(args: argparse.Namespace) -> int:
    from pool import config as config_mod
    from pool import preflight

    try:
        cfg = config_mod.load(args.file)
    except config_mod.ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if not args.static:
        try:
            data_dir = preflight.check_environment(cfg, create=False)
        except preflight.PreflightError as exc:
            print(f"error: {args.file}: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        path, drifts = preflight.saved_chain_sim_drift(cfg, data_dir)
        for drift in drifts:
            print(f"warning: {drift.message(path)}", file=sys.stderr)
    print(json.dumps(config_mod.effective(cfg), indent=2))
    return EXIT_OK


def _cmd_economics(args: argparse.Namespace) -> int:
    from fractions import Fraction

    from pool import economics as econ

    def fail(option: str, exc: ValueError) -> int:
        print(f"stratum-pool economics: error: argument {option}: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    try:
        difficulty = econ.parse_difficulty(args.difficulty)
    except ValueError as exc:
        return fail("--difficulty", exc)
    numbers: dict[str, Fraction] = {}
    for option, text, what, positive in (
        ("--price", args.price, "price", False),
        ("--fees-per-block", args.fees_per_block, "fees per block", False),
        ("--subsidy", args.subsidy, "subsidy", False),
        ("--share-difficulty", args.share_difficulty, "share difficulty", True),
    ):
        try:
            numbers[option] = econ.parse_number(text, what, positive=positive)
        except ValueError as exc:
            return fail(option, exc)
    try:
        efficiencies = [
            econ.parse_number(t, "efficiency (J/TH)", positive=True) for t in args.efficiency
        ]
    except ValueError as exc:
        return fail("--efficiency", exc)
    try:
        power_prices = [econ.parse_number(t, "power price (USD/kWh)") for t in args.power_price]
    except ValueError as exc:
        return fail("--power-price", exc)
    report = econ.compute(
        difficulty=difficulty,
        price_usd=numbers["--price"],
        fees_btc_per_block=numbers["--fees-per-block"],
        subsidy_btc=numbers["--subsidy"],
        efficiencies_j_per_th=efficiencies,
        power_prices_usd_per_kwh=power_prices,
        share_difficulty=numbers["--share-difficulty"],
    )
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(econ.format_report(report))
    return EXIT_OK


def _cmd_scenario(args: argparse.Namespace) -> int:
    import time

    from pool.app import StartupError
    from pool.node.binaries import BitcoindNotFound
    from pool.node.managed import NodeStartError
    from pool.node.rpc import RpcError
    from pool.scenarios import spec as scenario_spec
    from pool.scenarios.runner import run_scenario
    from pool.scenarios.schemes_report import settings_from_args

    try:
        spec = scenario_spec.load(args.scenario, quick=args.quick)
    except scenario_spec.ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    out = args.out
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = Path(".data") / "scenarios" / f"{spec.name}{'-quick' if args.quick else ''}-{stamp}"
    try:
        result = asyncio.run(run_scenario(spec, out, compare=settings_from_args(args)))
    except (scenario_spec.ScenarioError, StartupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (BitcoindNotFound, NodeStartError, RpcError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    if result.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if result.completed else EXIT_FAILURE


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        return _cmd_run(args)
    if args.command == "worker":
        return _cmd_worker(args)
    if args.command == "miner":
        from pool.miner import run_from_args

        return run_from_args(args)
    if args.command == "config":
        return _cmd_config_check(args)
    if args.command == "economics":
        return _cmd_economics(args)
    if args.command == "scenario":
        return _cmd_scenario(args)
    return EXIT_CONFIG


if __name__ == "__main__":
    raise SystemExit(main())
