"""``stratum-pool`` (= ``python -m pool``): run | miner | config check.

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

    miner = sub.add_parser("miner", help="bundled CPU miner (speaks Stratum like cpuminer)")
    from pool.miner import add_arguments

    add_arguments(miner)

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate a config and print it, secrets masked")
    check.add_argument("file", type=Path)
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from pool import config as config_mod
    from pool import logs
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
    logs.configure(cfg.logging.level, cfg.logging.format)
    app = PoolApp(cfg)
    try:
        asyncio.run(app.run_until_signalled())
    except StartupError as exc:
        print(f"error: refusing to start: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (BitcoindNotFound, NodeStartError, RpcError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_OK


def _cmd_config_check(args: argparse.Namespace) -> int:
    from pool import config as config_mod

    try:
        cfg = config_mod.load(args.file)
    except config_mod.ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    data = dataclasses.asdict(cfg)
    print(json.dumps(data, indent=2))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        return _cmd_run(args)
    if args.command == "miner":
        from pool.miner import run_from_args

        return run_from_args(args)
    if args.command == "config":
        return _cmd_config_check(args)
    return EXIT_CONFIG


if __name__ == "__main__":
    raise SystemExit(main())
