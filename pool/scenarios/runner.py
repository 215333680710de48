"""Run one scenario: a managed regtest bitcoind (fresh, under the out dir), the pool in-process
with the scenario's simulated chain, miner processes on a timeline, a progress line every few
seconds, and at the end ``report.json`` + ``report.html``.

The out dir holds ``bitcoind/`` (the node's data dir), ``pool/`` (ledger, chain_sim.json),
``miners/`` (each miner's output and share record), ``scenario.log`` (structlog JSON lines of
the pool and the runner) and the two reports.

Timing: block-driven triggers ("after 2 retargets", "after 90 blocks") fire inside the pool's
share listener, right after the simulated chain counted the block, so a miner leaves within
milliseconds of the retarget. Time triggers are checked every ``TICK_SECONDS``. ``t = 0`` is
the start of the simulated chain (the pool's start); the miners present at the start are
started right after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import structlog

from pool import logs
from pool.app import PoolApp
from pool.bitcoin import REGTEST
from pool.chain_sim import Retarget
from pool.ledger.pps import UNITS_PER_SAT
from pool.node.managed import ManagedNode, prepare_regtest_wallet
from pool.node.submit import BlockSubmission
from pool.scenarios import fees
from pool.scenarios.html import render_html
from pool.scenarios.miners import MinerProcess, miner_command, share_difficulty
from pool.scenarios.report import (
    ActionRecord,
    BlockRecord,
    ChangeRecord,
    MinerRecord,
    Recording,
    Sample,
    build_report,
)
from pool.scenarios.schemes_input import compare_run
from pool.scenarios.schemes_report import CompareSettings, summary_lines
from pool.scenarios.setup import pool_config, prepare_out_dir, target_from_difficulty
from pool.scenarios.spec import ScenarioSpec
from pool.scenarios.svg import si
from pool.server.auth import Credentials
from pool.shares import ShareResult

log = structlog.get_logger("pool.scenarios")

TICK_SECONDS = 0.1
POOL_WALLET = "pool"
MINERS_WALLET = "miners"

Echo = Callable[[str], None]


def echo_line(text: str) -> None:
    """Progress goes to stdout at once (it may be a pipe)."""
    print(text, flush=True)


@dataclass(frozen=True)
class RunResult:
    completed: bool
    interrupted: bool
    reason: str
    report_json: Path
    report_html: Path


class ScenarioRun:
    def __init__(
        self,
        spec: ScenarioSpec,
        out: Path,
        echo: Echo = echo_line,
        compare: CompareSettings | None = None,
    ) -> None:
        self.spec = spec
        self.compare = compare or CompareSettings()
        self.out = out.resolve()
        self.echo = echo
        self.node: ManagedNode | None = None
        self.app: PoolApp | None = None
        self.origin = time.time()
        self.start_height = 0
        self.addresses: dict[str, str] = {}
        self.url = ""
        self.dashboard = ""
        self.miners = {m.name: MinerProcess(m, self.out / "miners") for m in spec.miners}
        self.records: dict[str, MinerRecord] = {}
        self.fired: set[int] = set()
        self.end_at: float | None = None
        self.failure: str | None = None
        self.interrupted = asyncio.Event()
        self._history_seen = 0
        self._target = 0
        self.rec: Recording | None = None
        self.fees: fees.FeeTraffic | None = None

    # -- set-up ---------------------------------------------------------------------------------
    async def _start(self) -> None:
        self.node = node = ManagedNode(self.out / "bitcoind", extra_args=fees.NODE_ARGS)
        rpc = await node.start()
        payout = await prepare_regtest_wallet(node, POOL_WALLET)
        self.fees = fees.FeeTraffic(rpc, POOL_WALLET, self.spec.run.fee_share)
        await node.ensure_wallet(MINERS_WALLET)
        for m in self.spec.miners:
            self.addresses[m.name] = await rpc.call(
                "getnewaddress", "", "bech32", wallet=MINERS_WALLET
            )
        self.start_height = int(await rpc.call("getblockcount"))
        initial = self.spec.calibrated_difficulty()
        config = pool_config(
            self.spec,
            rpc_url=node.rpc_url,
            cookie_file=node.cookie_file,
            payout=payout,
            start_height=self.start_height,
            initial_difficulty=initial,
            data_dir=self.out / "pool",
        )
        self.app = app = PoolApp(config)
        await app.start()
        assert app.chain_sim is not None and app.server is not None
        self.origin = app.chain_sim.start_time
        self._target = app.chain_sim.target
        self.url = f"stratum+tcp://127.0.0.1:{app.server.bound_ports[0]}"
        self.dashboard = f"http://127.0.0.1:{app.api.port}/" if app.api and app.api.port else ""
        app.server.block_listeners.insert(0, self._on_block)
        interval = self.spec.run.share_interval_seconds
        for m in self.spec.miners:
            self.records[m.name] = MinerRecord(
                name=m.name,
                group=m.group,
                worker=f"{self.addresses[m.name]}.{m.name}",
                address=self.addresses[m.name],
                hashrate=m.hashrate,
                share_difficulty=share_difficulty(m.hashrate, interval),
                machine_class=m.machine_class,
                command=m.command,
            )
        self.rec = Recording(
            scenario=self.spec,
            started_at=self.origin,
            start_height=self.start_height,
            initial_target=app.chain_sim.initial_target,
            fee_bps=self.spec.run.fee_bps,
            miners=list(self.records.values()),
            out_dir=str(self.out),
        )
        log.info(
            "scenario_started",
            scenario=self.spec.name,
            quick=self.spec.quick,
            initial_difficulty=app.chain_sim.difficulty,
            start_height=self.start_height,
            url=self.url,
        )
        for m in self.spec.miners:
            if m.start:
                self._join(m.name, self.now())

    # -- miners ---------------------------------------------------------------------------------
    def now(self) -> float:
        return time.time() - self.origin

    def _join(self, name: str, t: float) -> None:
        proc = self.miners[name]
        if proc.running:
            return
        record = self.records[name]
        password = f"x,d={record.share_difficulty!r}"
        command = miner_command(
            proc.spec,
            url=self.url,
            user=record.worker,
            password=password,
            duration=self.spec.run.max_seconds + 120,
            record=proc.folder / f"{name}.jsonl",
        )
        proc.start(command)
        record.spans.append([round(t, 6), None])

    def _leave(self, name: str, t: float) -> None:
        proc = self.miners[name]
        if not proc.running:
            return
        proc.stop()
        record = self.records[name]
        if record.spans and record.spans[-1][1] is None:
            record.spans[-1][1] = round(t, 6)

    def _counts(self) -> tuple[int, int]:
        assert self.app is not None and self.app.chain_sim is not None
        sim = self.app.chain_sim
        retargets = sum(1 for r in sim.history if r.kind == "retarget")
        return sim.blocks_seen, retargets

    def _check_triggers(self) -> None:
        """Fire the timeline entries that are due, and arm the end."""
        assert self.rec is not None
        elapsed = self.now()
        blocks, retargets = self._counts()
        for i, entry in enumerate(self.spec.timeline):
            if i in self.fired or not entry.trigger.due(elapsed, blocks, retargets):
                continue
            self.fired.add(i)
            for name in entry.leave:
                self._leave(name, elapsed)
            for name in entry.join:
                self._join(name, elapsed)
            for action, names in (("leave", entry.leave), ("join", entry.join)):
                if names:
                    self.rec.actions.append(
                        ActionRecord(
                            round(elapsed, 6),
                            action,
                            list(names),
                            entry.trigger.describe(),
                            blocks,
                            retargets,
                        )
                    )
                    log.info(
                        "timeline_action",
                        action=action,
                        miners=list(names),
                        trigger=entry.trigger.describe(),
                        t=round(elapsed, 3),
                    )
        if self.end_at is None and self.spec.end.trigger.due(elapsed, blocks, retargets):
            self.end_at = elapsed + self.spec.end.tail_seconds
            log.info("scenario_end_reached", t=round(elapsed, 3), tail=self.spec.end.tail_seconds)

    # -- what the pool tells us -----------------------------------------------------------------
    async def _on_block(
        self,
        result: ShareResult,
        creds: Credentials | None,
        now: float,
        submission: BlockSubmission | None,
    ) -> None:
        """Block listener: runs after a block candidate was submitted (and counted by the
        simulated chain). Never raises."""
        if submission is None:
            return
        try:
            if submission.accepted and self.fees is not None:
                self.fees.on_block(submission.height)
            self._record_block(result, creds, now, submission)
            self._sync_changes()
            self._check_triggers()
        except Exception as exc:
            log.exception("scenario_listener_failed", error=repr(exc))

    def _record_block(
        self,
        result: ShareResult,
        creds: Credentials | None,
        now: float,
        submission: BlockSubmission,
    ) -> None:
        assert self.app is not None and self.app.chain_sim is not None and self.rec is not None
        sim = self.app.chain_sim
        miner = creds.worker if creds is not None else ""
        entry = {
            "height": submission.height,
            "hash": submission.block_hash,
            "miner": miner,
            "t": round(now - self.origin, 6),
            "status": submission.status.value,
            "reason": submission.reason,
        }
        if not submission.accepted:
            self.rec.other_blocks.append(entry)
            return
        n = sim.retarget_interval
        period = sim.to_state()["period_blocks"]
        retargets = [r for r in sim.history if r.kind == "retarget"]
        found: tuple[int, float] | None = None
        for i, (height, t) in enumerate(period):
            if height == submission.height:
                found = (len(retargets) * n + i + 1, float(t))
        if found is None:
            for i, r in enumerate(retargets):
                if r.height == submission.height:
                    found = ((i + 1) * n, r.time)
        if found is None:  # not counted by the simulated chain (e.g. a height seen before)
            self.rec.other_blocks.append({**entry, "status": "not counted"})
            return
        ordinal, found_at = found
        assert result.job is not None
        self.rec.blocks.append(
            BlockRecord(
                ordinal=ordinal,
                height=submission.height,
                hash=submission.block_hash,
                miner=miner,
                t=round(found_at - self.origin, 6),
                time=found_at,
                target=result.job.block_target,
            )
        )
        self.rec.blocks.sort(key=lambda b: b.ordinal)

    def _sync_changes(self) -> None:
        """New entries of the simulated chain's history -> ChangeRecords (with exact targets)."""
        assert self.app is not None and self.app.chain_sim is not None and self.rec is not None
        sim = self.app.chain_sim
        history = sim.history
        n = sim.retarget_interval
        retargets = sum(1 for r in history[: self._history_seen] if r.kind == "retarget")
        for i in range(self._history_seen, len(history)):
            r: Retarget = history[i]
            last = i == len(history) - 1
            new_target = sim.target if last else target_from_difficulty(r.new_difficulty)
            if r.kind == "retarget":
                retargets += 1
                ordinal = retargets * n
            else:
                ordinal = sim.blocks_seen
            height = r.height if r.height >= 0 else self.start_height
            self.rec.changes.append(
                ChangeRecord(
                    kind=r.kind,
                    height=r.height,
                    ordinal=ordinal,
                    t=round(r.time - self.origin, 6),
                    time=r.time,
                    old_target=self._target,
                    new_target=new_target,
                    subsidy_sat=REGTEST.block_subsidy(height + 1),
                    actual_timespan=r.actual_timespan,
                    expected_timespan=r.expected_timespan,
                )
            )
            self._target = new_target
        self._history_seen = len(history)

    # -- samples and progress -------------------------------------------------------------------
    def _sample(self) -> Sample:
        assert self.app is not None and self.app.server is not None
        assert self.app.ledger is not None and self.app.chain_sim is not None
        sim = self.app.chain_sim
        stats = self.app.server.stats.workers
        work = {}
        for name, record in self.records.items():
            w = stats.get(record.worker)
            work[name] = w.accepted_work if w is not None else 0.0
        by_worker = {name: w.credit_units for name, w in self.app.ledger.aggregates.workers.items()}
        credited = {name: by_worker.get(r.worker, 0) for name, r in self.records.items()}
        reserve = self.app.ledger.reserve()
        height = sim.last_height if sim.last_height is not None else self.start_height
        blocks, retargets = self._counts()
        return Sample(
            t=round(self.now(), 6),
            blocks=blocks,
            retargets=retargets,
            target=sim.target,
            subsidy_sat=REGTEST.block_subsidy(height + 1),
            running=[n for n, p in self.miners.items() if p.running],
            work=work,
            credited_units=credited,
            reserve_units=reserve.reserve_units,
            rewards_units=reserve.rewards_earned_units,
            credits_units=reserve.credits_units,
            fees_units=reserve.fees_units,
        )

    def _progress(self, samples: list[Sample]) -> str:
        assert self.app is not None and self.app.chain_sim is not None
        sim = self.app.chain_sim
        last = samples[-1]
        window = self.spec.run.hashrate_window_seconds
        earlier = next((s for s in samples if s.t >= last.t - window), samples[0])
        span = last.t - earlier.t
        rate = (
            (sum(last.work.values()) - sum(earlier.work.values())) * 2**32 / span
            if span > 0
            else 0.0
        )
        mainnet = sim.mainnet_equivalent() if sim.mainnet_difficulty else None
        difficulty = f"{sim.difficulty:.4g}" + (f" ({si(mainnet, digits=4)})" if mainnet else "")
        return (
            f"[{last.t:7.1f} s] blocks {last.blocks:4d} "
            f"(period {last.retargets + 1}: {sim.blocks_in_period}/{sim.retarget_interval})  "
            f"difficulty {difficulty}  hashrate {si(rate, 'H/s')}  "
            f"miners {len(last.running)}/{len(self.miners)}  "
            f"reserve {last.reserve_units / UNITS_PER_SAT / 1e8:+.4f} BTC"
        )

    # -- the main loop --------------------------------------------------------------------------
    def _check_miners(self) -> None:
        for name, proc in self.miners.items():
            if proc.exited_unexpectedly() and self.failure is None:
                assert proc.proc is not None
                self.failure = (
                    f"miner {name} exited unexpectedly with code {proc.proc.returncode}:\n"
                    f"{proc.tail()}"
                )

    async def _loop(self) -> str:
        assert self.rec is not None
        run = self.spec.run
        next_sample = 0.0
        next_progress = run.progress_seconds
        while True:
            elapsed = self.now()
            self._sync_changes()
            self._check_triggers()
            self._check_miners()
            progress = elapsed >= next_progress
            if elapsed >= next_sample or progress:
                self.rec.samples.append(self._sample())
                next_sample = elapsed + run.sample_seconds
            if progress:
                self.echo(self._progress(self.rec.samples))
                next_progress = elapsed + run.progress_seconds
            if self.interrupted.is_set():
                return "interrupted"
            if self.failure is not None:
                return self.failure
            if self.end_at is not None and elapsed >= self.end_at:
                return ""
            if elapsed >= run.max_seconds:
                return (
                    f"run.max_seconds ({run.max_seconds:g} s) reached before the end "
                    f"({self.spec.end.trigger.describe()})"
                )
            await asyncio.sleep(TICK_SECONDS)

    async def _stop_miners(self) -> None:
        for proc in self.miners.values():
            if proc.running:
                self._leave(proc.spec.name, self.now())
        for name, proc in self.miners.items():
            await proc.reap()
            self.records[name].exits = proc.exits

    async def run(self) -> RunResult:
        """Start, run the timeline, stop, write the reports. A failure before the pool runs
        raises (there is nothing to report); a failure later ends the run early and the
        report says why."""
        try:
            await self._start()
            self.echo(
                f"scenario {self.spec.name}{' --quick' if self.spec.quick else ''}: "
                f"{len(self.spec.miners)} miners, {self.spec.chain.retarget_interval} blocks "
                f"per period, {self.spec.chain.target_spacing_seconds:g} s spacing, "
                f"ends {self.spec.end.trigger.describe()}; pool on {self.url}, output in "
                f"{self.out}"
            )
            if self.dashboard:
                self.echo(f"dashboard (while it runs): {self.dashboard}")
            try:
                reason = await self._loop()
            except Exception as exc:
                log.exception("scenario_failed", error=repr(exc))
                reason = f"failed: {exc!r}"
        finally:
            await self._shutdown()
        assert self.rec is not None
        self.rec.completed = reason == ""
        self.rec.end_reason = reason
        report_json, report_html = self.write_reports()
        return RunResult(
            self.rec.completed, reason == "interrupted", reason, report_json, report_html
        )

    async def _shutdown(self) -> None:
        with contextlib.suppress(Exception):
            await self._stop_miners()
        if self.fees is not None:
            await self.fees.close()
        for proc in self.miners.values():  # anything still there after an error
            proc.kill()
        if self.app is not None:
            if self.rec is not None and self.app.chain_sim is not None:
                with contextlib.suppress(Exception):
                    self._sync_changes()
                    self.rec.samples.append(self._sample())
            await self.app.stop()
        if self.node is not None:
            await self.node.stop()
        if self.rec is not None:
            self.rec.duration = round(self.now(), 6)

    def write_reports(self) -> tuple[Path, Path]:
        assert self.rec is not None
        report = build_report(self.rec)
        if self.app is not None and self.app.ledger is not None:
            report["schemes"] = compare_run(
                self.app.ledger.journal_dir,
                self.app.ledger.store.path,
                names={r.address: r.name for r in self.records.values()},
                origin=self.origin,
                fee_bps=self.spec.run.fee_bps,
                settings=self.compare,
            )
        if self.fees is not None:
            report["fee_traffic"] = self.fees.summary()
            if isinstance(report.get("schemes"), dict):
                report["schemes"]["fee_traffic"] = report["fee_traffic"]
        json_path = self.out / "report.json"
        html_path = self.out / "report.html"
        json_path.write_text(json.dumps(report, indent=1) + "\n")
        html_path.write_text(render_html(report))
        log.info("scenario_reports_written", json=str(json_path), html=str(html_path))
        return json_path, html_path


def _summary_lines(result: RunResult) -> list[str]:
    report = json.loads(result.report_json.read_text())
    summary = report["summary"]
    lines = [
        f"blocks {summary['blocks']}, retargets {summary['retargets']}, "
        f"events {summary['events']}, {summary['duration_seconds']:.1f} s"
    ]
    key = summary.get("key_change")
    if key:
        lines.append(
            f"key change ({summary['key_change_reason']}): difficulty "
            f"{key['change'] * 100:+.2f} %, PPS value per share x{key['pps_value_ratio']:.4f}"
        )
    lines += summary_lines(report.get("schemes"))
    econ = report.get("economics")
    if econ:
        lines.append(
            f"hashprice ${econ['before']['hashprice_usd_per_ph_day']:.2f} -> "
            f"${econ['after']['hashprice_usd_per_ph_day']:.2f} per PH/s per day"
        )
    return lines


async def run_scenario(
    spec: ScenarioSpec,
    out: Path,
    echo: Echo = echo_line,
    compare: CompareSettings | None = None,
) -> RunResult:
    """Run ``spec`` into ``out`` (which must not hold a run yet); SIGINT/SIGTERM stop it early
    (the report is still written). ``compare``: the scheme comparison's Monte Carlo settings."""
    prepare_out_dir(out)
    log_file: IO[str] = (out / "scenario.log").open("a")
    logs.configure("info", "json", stream=log_file)
    runner = ScenarioRun(spec, out, echo, compare)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, runner.interrupted.set)
    try:
        result = await runner.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        logs.configure("info", "auto")  # the file is closed: log to stderr again
        log_file.close()
    status = "completed" if result.completed else f"NOT completed: {result.reason}"
    echo(f"scenario {spec.name}: {status}")
    for line in _summary_lines(result):
        echo(f"  {line}")
    echo(f"  report: {result.report_json}")
    echo(f"  report: {result.report_html}")
    return result
