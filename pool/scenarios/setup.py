"""Setting up a scenario run: its out dir and the pool's config. Pure apart from the
directory check."""

from __future__ import annotations

from pathlib import Path

from pool.bitcoin import bits_to_target, difficulty_to_target, target_to_bits
from pool.config import (
    ApiConfig,
    ChainConfig,
    Config,
    ConfigError,
    LedgerConfig,
    LoggingConfig,
    NodeConfig,
    PoolConfig,
    PortConfig,
    SimEventConfig,
    SimulationConfig,
    StratumConfig,
    VardiffSettings,
    validate,
)
from pool.scenarios.miners import share_difficulty
from pool.scenarios.spec import ScenarioError, ScenarioSpec


def target_from_difficulty(difficulty: float) -> int:
    """The compact target whose difficulty is ``difficulty`` (the simulated chain's targets
    are always compact, and a float difficulty is within 1e-15 of its target's)."""
    approx = difficulty_to_target(difficulty)
    return bits_to_target(target_to_bits(approx + (approx >> 40)))


def prepare_out_dir(out: Path) -> None:
    """A fresh run: refuse an out dir that already holds one (never delete anything)."""
    for name in ("bitcoind", "pool", "report.json"):
        if (out / name).exists():
            raise ScenarioError(
                f"{out} already holds a scenario run ({name} exists); choose another --out"
            )
    out.mkdir(parents=True, exist_ok=True)


def pool_config(
    spec: ScenarioSpec,
    *,
    rpc_url: str,
    cookie_file: Path,
    payout: str,
    start_height: int,
    initial_difficulty: float,
    data_dir: Path,
) -> Config:
    """The pool's config for ``spec``: external mode on the scenario's node, one Stratum
    port and the HTTP API (dashboard) on free ports, the simulated chain, no payouts (nothing
    matures in minutes).
    Height events count from ``start_height`` (``at_block = k``: the k-th block found)."""
    chain = spec.chain
    events = tuple(
        SimEventConfig(
            at_height=start_height + e.at_block if e.at_block is not None else -1,
            at_seconds=e.at_seconds if e.at_seconds is not None else -1.0,
            set_difficulty=e.set_difficulty or 0.0,
            scale=e.scale or 0.0,
        )
        for e in chain.events
    )
    interval = spec.run.share_interval_seconds
    diffs = [share_difficulty(m.hashrate, interval) for m in spec.miners]
    config = Config(
        node=NodeConfig(
            mode="external",
            rpc_url=rpc_url,
            cookie_file=str(cookie_file),
            poll_interval_seconds=0.5,
            # Time events of the simulated chain take effect with the next job.
            template_refresh_seconds=2.0
            if any(e.at_seconds is not None for e in chain.events)
            else 30.0,
        ),
        pool=PoolConfig(payout_address=payout, data_dir=str(data_dir)),
        stratum=StratumConfig(
            host="127.0.0.1",
            ports=(
                PortConfig(
                    port=0,
                    start_difficulty=sum(diffs) / len(diffs),
                    min_difficulty=min(diffs) / 1000,
                    max_difficulty=1e6,
                ),
            ),
        ),
        vardiff=VardiffSettings(
            enabled=True, target_interval_seconds=interval, retarget_seconds=10.0
        ),
        chain=ChainConfig(
            simulation=SimulationConfig(
                enabled=True,
                initial_difficulty=initial_difficulty,
                retarget_interval=chain.retarget_interval,
                target_spacing_seconds=chain.target_spacing_seconds,
                clamp_factor=chain.clamp_factor,
                mainnet_difficulty=chain.mainnet_difficulty,
                events=events,
            )
        ),
        ledger=LedgerConfig(
            fee_bps=spec.run.fee_bps, payout_interval_seconds=0.0, block_check_seconds=5.0
        ),
        api=ApiConfig(enabled=True, host="127.0.0.1", port=0),
        logging=LoggingConfig(level="info", format="json"),
    )
    try:
        validate(config, f"scenario {spec.name}")
    except ConfigError as exc:
        raise ScenarioError(str(exc)) from None
    return config
