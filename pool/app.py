"""Wiring: build everything, start-up checks, run, ordered shutdown.

Start-up order: bitcoind (managed or external) -> chain and payout address checks -> first
template -> Stratum listeners. Shutdown is the reverse: stop accepting and ask miners to
reconnect, stop the template watcher, stop the managed bitcoind.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog

from pool import gc_watch, preflight
from pool.api.live_merge import MonitorView, local_rows
from pool.api.server import ApiServer
from pool.bitcoin import (
    AddressError,
    Network,
    address_to_script,
    network_for_chain,
)
from pool.chain_sim import ChainSim, Retarget
from pool.chain_sim_state import (
    ChainSimStateError,
    SharedChainSim,
    load_chain_sim,
    save_chain_sim,
)
from pool.config import Config, SimulationConfig, limits_summary
from pool.jobs import JobConfig, Template, build_job
from pool.ledger.ledger import Ledger, LedgerError
from pool.ledger.payout_lock import PayoutLock
from pool.ledger.payouts import Payouts, RoundResult
from pool.ledger.store_best import load_best
from pool.node.managed import (
    ManagedNode,
    ensure_wallet,
    free_zmq_endpoint,
    prepare_regtest_wallet,
)
from pool.node.rpc import BitcoinRpc, RetryPolicy, RpcError, RpcRefused
from pool.node.spool import BlockSpool
from pool.node.submit import BlockSubmission, BlockSubmitter
from pool.node.templates import TemplateWatcher
from pool.node.zmq_feed import endpoint_from_notifications
from pool.server.auth import Credentials
from pool.server.bans import BansFileError, load_bans
from pool.server.server import StratumServer
from pool.server.shared_bans import SharedBans, attach_shared_bans
from pool.shares import ShareResult
from pool.stats import WorkerStats
from pool.tasks import Supervisor, run_until_signalled
from pool.webhook_subs import SubscriptionsFileError
from pool.webhook_wiring import PoolWebhooks
from pool.worker import WorkerRole, extranonces_for

PROCESS_HASHRATE_WINDOW = 300  # seconds: the heartbeat row's hashrate (a meter window)
log = structlog.get_logger("pool.app")


class StartupError(RuntimeError):
    """The pool refuses to start; the message says why and what to change."""


def payout_script_for(address: str, network: Network) -> bytes:
    try:
        return address_to_script(address, network)
    except AddressError as exc:
        raise StartupError(
            f"payout address {address} cannot be used on chain {network.name}: {exc}"
        ) from exc


class PoolApp:
    def __init__(self, config: Config, role: WorkerRole | None = None) -> None:
        self.config = config
        self.role = role  # None: the pool is this one process
        self.data_dir = Path(config.pool.data_dir).resolve()
        self.node: ManagedNode | None = None
        self.rpc: BitcoinRpc | None = None
        self.network: Network | None = None
        self.server: StratumServer | None = None
        self.watcher: TemplateWatcher | None = None
        self.job_config: JobConfig | None = None
        self.payout_address = ""
        self.ledger: Ledger | None = None
        self.payouts: Payouts | None = None
        self.payout_lock: PayoutLock | None = None
        self.shared_bans: SharedBans | None = None  # with a shared store
        self._new_block = asyncio.Event()
        self._payout_lock = asyncio.Lock()
        self.chain_sim: ChainSim | None = None
        self.sim_shared: SharedChainSim | None = None  # the chain_sim row of a shared store
        self.api: ApiServer | None = None
        self.tasks = Supervisor()  # every background task: restarted when it dies
        self.submitter: BlockSubmitter | None = None
        self.zmq_endpoint = ""  # bitcoind's hashblock feed the watcher subscribes to ("" none)
        self.webhooks: PoolWebhooks | None = None  # webhooks.enabled

    @property
    def watcher_task(self) -> asyncio.Task[None] | None:
        """The template watcher's task (None while it waits to be restarted)."""
        return self.tasks.task("template-watcher")

    # -- start-up -------------------------------------------------------------------------------
    async def _check_payout_wallet(self, rpc: BitcoinRpc, address: str, wallet: str) -> None:
        """PPS payouts are sent from ``wallet``; block rewards go to ``address``. Warn when the
        wallet is not loaded or does not own the address: then the wallet only has the funds
        the operator puts there, and payout rounds wait for them."""
        try:
            info = await rpc.call("getaddressinfo", address, wallet=wallet)
        except RpcRefused as exc:
            log.warning(
                "payout_wallet_unavailable",
                wallet=wallet,
                error=exc.message,
                note="PPS payouts need this wallet loaded in bitcoind (node.wallet)",
            )
            return
        if not info.get("ismine"):
            log.warning(
                "payout_address_not_in_wallet",
                address=address,
                wallet=wallet,
                note="block rewards go elsewhere: fund this wallet for PPS payouts",
            )

    async def _connect_node(self) -> BitcoinRpc:
        node_cfg = self.config.node
        retry = RetryPolicy(give_up_after=node_cfg.rpc_give_up_seconds)
        if node_cfg.mode == "managed":
            zmq = node_cfg.zmq_hashblock
            self.zmq_endpoint = free_zmq_endpoint() if zmq == "auto" else zmq
            self.node = ManagedNode(
                self.data_dir / "bitcoind",
                zmq_hashblock=self.zmq_endpoint,
                restart_backoff=(
                    node_cfg.restart_backoff_seconds,
                    node_cfg.restart_backoff_max_seconds,
                ),
                stop_timeout=node_cfg.stop_timeout_seconds,
            )
            rpc = await self.node.start()
            rpc.retry = retry
            self.node.restart_listeners.append(self._node_restarted)
            self.node.exit_listeners.append(self._node_exited)
            self.node.supervise()  # a node that dies while the pool runs is started again
            return rpc
        return self._external_rpc(retry)

    def _external_rpc(self, retry: RetryPolicy) -> BitcoinRpc:
        node_cfg = self.config.node
        password = os.environ.get(node_cfg.rpc_password_env) if node_cfg.rpc_user else None
        if node_cfg.rpc_user and password is None:
            raise StartupError(
                f"node.rpc_user is set but the environment variable {node_cfg.rpc_password_env} "
                "(node.rpc_password_env) holding the RPC password is not"
            )
        cookie = Path(node_cfg.cookie_file).expanduser() if node_cfg.cookie_file else None
        if not node_cfg.rpc_user and cookie is None:
            raise StartupError(
                "external node: set node.rpc_user (+ password env) or node.cookie_file"
            )
        return BitcoinRpc(
            node_cfg.rpc_url,
            user=node_cfg.rpc_user or None,
            password=password,
            cookie_file=cookie,
            max_concurrency=node_cfg.rpc_max_concurrency,
            timeout=node_cfg.rpc_timeout_seconds,
            retry=retry,
        )

    async def _external_zmq(self, rpc: BitcoinRpc) -> str:
        """node.zmq_hashblock = "auto" on an external node: the address it reports, if any."""
        try:
            notifications = await rpc.call("getzmqnotifications")
        except RpcRefused as exc:  # a bitcoind built without ZMQ has no such method
            log.info("zmq_unavailable", error=exc.message)
            return ""
        host = urlsplit(self.config.node.rpc_url).hostname or "127.0.0.1"
        return endpoint_from_notifications(notifications, host)

    async def start(self) -> None:
        cfg = self.config
        log.info("limits", **limits_summary(cfg))
        try:  # before bitcoind starts: ports free, data dir writable (one line naming the key)
            if self.role is None:  # (a worker's supervisor checked them: its siblings listen)
                preflight.check_environment(cfg)
        except preflight.PreflightError as exc:
            raise StartupError(str(exc)) from None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        bans_path = self.data_dir / "bans.json"
        try:  # first: a bad bans file stops the start before anything else happens
            bans = load_bans(bans_path)
        except BansFileError as exc:
            raise StartupError(f"{exc} (fix or remove it; the pool keeps its bans there)") from exc
        self.rpc = rpc = await self._connect_node()
        self.submitter = BlockSubmitter(
            rpc,
            retry_initial=cfg.node.submit_retry_seconds,
            retry_max=cfg.node.submit_retry_max_seconds,
            keep_recent=cfg.node.resubmit_recent_blocks,
            spool=BlockSpool(self.data_dir / "blocks"),
        )
        # blocks an earlier run found but could not get bitcoind to settle: submitted now
        self.submitter.resume_spooled()
        info = await rpc.call("getblockchaininfo")
        self.network = network = network_for_chain(info["chain"])
        if cfg.node.mode == "external":
            zmq = cfg.node.zmq_hashblock
            self.zmq_endpoint = await self._external_zmq(rpc) if zmq == "auto" else zmq
        log.info(
            "new_block_sources",
            zmq_hashblock=self.zmq_endpoint or "off",
            longpoll=cfg.node.longpoll,
            poll_interval_seconds=cfg.node.poll_interval_seconds,
        )
        address = cfg.pool.payout_address
        if not address:
            if self.node is not None:
                address = await prepare_regtest_wallet(self.node, cfg.node.wallet)
            elif network.name == "regtest":
                # An external regtest node (the compose stack): the pool's wallet on that node
                # gets the rewards, so PPS payouts can spend them once mature.
                await ensure_wallet(rpc, cfg.node.wallet)
                address = await rpc.call("getnewaddress", "", "bech32", wallet=cfg.node.wallet)
            else:
                raise StartupError(
                    f"pool.payout_address must be set for an external node on {network.name}"
                )
        script = payout_script_for(address, network)
        await self._check_payout_wallet(rpc, address, cfg.node.wallet)
        self.payout_address = address
        log.info("payout_address", address=address, chain=network.name)
        self.job_config = JobConfig(
            payout_script=script,
            extranonce1_size=cfg.pool.extranonce1_size,
            extranonce2_size=cfg.pool.extranonce2_size,
            pool_tag=cfg.pool.pool_tag.encode(),
        )
        if cfg.chain.simulation.enabled and network.name != "regtest":
            raise StartupError(
                f"chain.simulation.enabled is for regtest only; this bitcoind is on {network.name}"
            )
        # A worker journals on its own into the one store the others write too ("shared")
        self.ledger = ledger = Ledger(
            cfg.ledger,
            self.data_dir / "ledger",
            network,
            self.tasks,
            journal_id=self.role.journal_id if self.role else "",
            shared=self.role is not None,
            instance_id=cfg.pool.instance_id,
        )
        try:
            await ledger.open()
        except LedgerError as exc:
            raise StartupError(str(exc)) from exc
        if cfg.chain.simulation.enabled:
            self.chain_sim = await self._load_chain_sim(cfg.chain.simulation, ledger)
        await self._reconcile_blocks(ledger, rpc)
        # exactly one payout runner (and block checker) among the pool's processes/instances
        self.payout_lock = lock = PayoutLock(cfg.ledger, self.data_dir / "ledger")
        await lock.refresh()
        ledger.shared.payout_runner = lambda: lock.held
        self.tasks.spawn("payout-lock", lock.run)
        self.payouts = Payouts(ledger.store, rpc, cfg.ledger, network, cfg.node.wallet, lock)
        await self._settle_payouts()
        self.server = StratumServer(cfg, network, submit_block=self.submit)
        self.server.ctx.extranonces = extranonces_for(cfg, self.role.index if self.role else 0)
        self.server.use_bans(bans_path, bans)
        self.shared_bans = await attach_shared_bans(ledger, self.server, self.tasks)
        self.server.ctx.best.load(*await ledger.store.run(load_best))  # best shares: kept
        self.server.share_recorder = ledger.journal_shares
        ledger.shared.stats = self._process_stats
        if ledger.is_shared:  # live workers published, the others' read where the API runs
            server = self.server
            ledger.shared.live_rows = lambda now: local_rows(server, now)
            ledger.shared.read_live = self.role is None or self.role.lead
        self.server.block_listeners.append(self._block_settled)
        if cfg.webhooks.enabled:
            await self._start_webhooks(self.server)
        self.watcher = TemplateWatcher(
            rpc,
            self.on_template,
            refresh_interval=cfg.node.template_refresh_seconds,
            poll_interval=cfg.node.poll_interval_seconds,
            longpoll=cfg.node.longpoll,
            longpoll_timeout=cfg.node.longpoll_timeout_seconds,
            block_wait=cfg.node.block_wait_seconds,
            zmq_endpoint=self.zmq_endpoint,
            zmq_heartbeat=cfg.node.zmq_heartbeat_seconds,
        )
        await self.watcher.update(force=True)  # a job exists before the first miner arrives
        await self.server.start()
        self.tasks.spawn("template-watcher", self.watcher.run)
        self.tasks.spawn("ledger-upkeep", self._ledger_loop)
        if cfg.api.enabled and (self.role is None or self.role.lead):  # (the lead's only)
            self.api = ApiServer(self)
            await self.api.start()
        # Everything made so far lives as long as the pool (modules, config, node, ledger):
        # out of the garbage collector's full passes, which are timed from now on.
        gc_watch.settle()
        log.info(
            "pool_started",
            chain=network.name,
            height=await rpc.call("getblockcount"),
            stratum_ports=self.server.bound_ports,
            extranonce1_values=self.server.ctx.extranonces.space.capacity,
        )

    async def _start_webhooks(self, server: StratumServer) -> None:
        try:
            self.webhooks = hooks = PoolWebhooks.open(self.config, self.data_dir)
        except SubscriptionsFileError as exc:
            raise StartupError(str(exc)) from exc
        await hooks.start()
        server.block_listeners.append(hooks.block_settled)  # this process's own blocks
        if self.role is not None:  # subscriptions made through the lead's API reach every worker
            follow = functools.partial(hooks.book.follow, self.config.ledger.shared_refresh_seconds)
            self.tasks.spawn("webhook-subscriptions", follow)
        if self.role is not None and not self.role.lead:  # workers, health: the lead's
            return

        checker = ApiServer(self)  # the /healthz verdict, with or without the API

        async def health() -> list[str]:
            reasons: list[str] = (await checker.health_report())["reasons"]
            return reasons

        shared = self.ledger.shared if self.ledger is not None else None
        view = MonitorView(2 * self.config.webhooks.worker_offline_seconds)

        def workers() -> Mapping[str, WorkerStats]:  # every process's (merged)
            if shared is None:
                return server.stats.workers
            return view(server.stats.workers, shared.live, shared.live_stale, time.time())

        self.tasks.spawn("webhooks-monitor", hooks.monitor(workers, health))

    async def _reconcile_blocks(self, ledger: Ledger, rpc: BitcoinRpc) -> None:
        """The pool's blocks on the chain that the store is missing are recorded (a crash
        or a storage fault between finding a block and recording it loses nothing)."""
        assert self.job_config is not None
        try:
            await ledger.reconcile_chain(
                rpc, payout_script=self.job_config.payout_script, pool_tag=self.job_config.pool_tag
            )
        except Exception as exc:  # never stops the start: the scan is retried at the next
            log.error("chain_reconcile_failed", error=repr(exc))

    def _node_exited(self) -> None:
        """The managed node died: block submissions wait for its restart (and restore)."""
        if self.submitter is not None:
            self.submitter.node_down()

    def _node_restarted(self) -> None:
        """The managed node is back: it gets the pool's recent blocks again (a killed node may
        have lost them), then a fresh template (pending submissions wake by themselves)."""
        if self.submitter is not None:
            self.submitter.node_restarted()
        if self.watcher is not None:
            self.watcher.poke("restart")

    # -- simulated network difficulty (regtest) --------------------------------------------------
    @property
    def chain_sim_file(self) -> Path:
        return self.data_dir / "chain_sim.json"

    async def _load_chain_sim(self, sim: SimulationConfig, ledger: Ledger) -> ChainSim:
        """DATA/chain_sim.json; with a shared store, its chain_sim row (pool/chain_sim_state.py)."""
        try:
            if not ledger.is_shared:
                return load_chain_sim(self.chain_sim_file, sim)
            refresh, me = self.config.ledger.shared_refresh_seconds, ledger.shared
            shared = await SharedChainSim.open(
                ledger.store, sim, self.chain_sim_file, refresh, f"{me.instance_id}/{me.process}"
            )
        except ChainSimStateError as exc:
            raise StartupError(str(exc)) from exc
        self.sim_shared, shared.on_update = shared, self._sim_loaded
        self.tasks.spawn("chain-sim-sync", shared.run)
        return shared.chain

    async def _sim_loaded(self, chain: ChainSim, target_changed: bool) -> None:
        """A newer shared state: a new target goes out at once in a job on this template."""
        self.chain_sim = chain
        if target_changed and self.watcher is not None and self.watcher.current is not None:
            await self.on_template(self.watcher.current, False)

    def _save_chain_sim(self, chain: ChainSim) -> None:
        save_chain_sim(self.chain_sim_file, chain)

    def _sim_changed(self, changes: list[Retarget]) -> None:
        assert self.chain_sim is not None
        for change in changes:
            log.info(
                "simulated_difficulty_changed",
                kind=change.kind,
                height=change.height,
                old=change.old_difficulty,
                new=change.new_difficulty,
                change_percent=round(change.change * 100, 3),
                actual_timespan=change.actual_timespan,
                expected_timespan=change.expected_timespan,
            )
        if self.sim_shared is not None:
            self.sim_shared.local_change()  # (the store's row gets it; no file)
            return
        self._save_chain_sim(self.chain_sim)

    async def _settle_payouts(self) -> None:
        """A payout interrupted by a crash is completed (once) before anything else."""
        assert self.payouts is not None
        try:
            settled = await self.payouts.reconcile()
        except RpcError as exc:
            log.error("payout_reconcile_failed", error=str(exc))
        else:
            if settled:
                log.info("payouts_settled_at_startup", payouts=settled)

    async def run_payout_round(self) -> RoundResult:
        assert self.payouts is not None and self.ledger is not None
        async with self._payout_lock:
            await self.ledger.commit()
            result = await self.payouts.run_round()
        log.info("payout_round", **result.to_dict())
        if self.webhooks is not None:
            self.webhooks.payout_round(result)
        return result

    def _process_stats(self) -> dict[str, Any]:
        """This process's live numbers for the whole-pool views (its heartbeat row)."""
        server = self.server
        if server is None:
            return {}
        now = time.time()
        meter = server.hashrate.pool
        # a window the meter has (600 s is not one: it raised, and the row had no stats)
        window = PROCESS_HASHRATE_WINDOW
        return {
            "connections": len(server.sessions),
            "workers": sum(1 for w in server.stats.workers.values() if w.connections > 0),
            "accepted_shares": server.stats.accepted,
            "hashrate": meter.hashrate(window, now) if meter else 0.0,
            "hashrate_window": window,
            "shares_per_second": meter.shares(60, now) / meter.effective_window(60, now)
            if meter
            else 0.0,
        }

    async def _ledger_loop(self) -> None:
        """Found blocks are checked on every new block and every block_check_seconds; a payout
        round runs every payout_interval_seconds (0: only on request)."""
        assert self.ledger is not None and self.rpc is not None
        cfg = self.config.ledger
        loop = asyncio.get_running_loop()
        next_payout = loop.time() + cfg.payout_interval_seconds
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(cfg.block_check_seconds):
                    await self._new_block.wait()
            self._new_block.clear()
            if self.payout_lock is not None and not self.payout_lock.held:
                continue  # another process is the payout runner: it checks blocks and pays
            try:
                if not (self.submitter is not None and self.submitter.pending):
                    # (a block still being submitted is not checked: the node may not have it)
                    changes = await self.ledger.check_blocks(self.rpc)
                    if self.webhooks is not None:
                        self.webhooks.blocks_changed(changes)
                if self.ledger.degraded is not None:  # balances are behind: pay later
                    continue
                if cfg.payout_interval_seconds > 0 and loop.time() >= next_payout:
                    next_payout = loop.time() + cfg.payout_interval_seconds
                    await self.run_payout_round()
            except RpcError as exc:
                log.warning("ledger_upkeep_failed", error=str(exc))
            except Exception as exc:  # keep the loop alive; say what happened
                log.exception("ledger_upkeep_crashed", error=repr(exc))

    async def on_template(self, template: Template, new_block: bool) -> None:
        assert self.server is not None and self.job_config is not None
        block_target = None
        if self.chain_sim is not None:
            changes = self.chain_sim.on_time(time.time())
            if changes:
                self._sim_changed(changes)
            block_target = self.chain_sim.target
        job = build_job(
            template,
            self.job_config,
            job_id=self.server.jobs.next_id(),
            now=time.time(),
            clean=new_block,
            block_target=block_target,
        )
        self.server.publish(job)
        if self.sim_shared is not None:
            self.sim_shared.published(job.job_id, block_target)
        if new_block:
            self._new_block.set()

    async def _block_settled(
        self,
        result: ShareResult,
        creds: Credentials | None,
        now: float,
        submission: BlockSubmission,
    ) -> None:
        """A block candidate's submission is settled: the ledger records the outcome."""
        assert self.ledger is not None
        await self.ledger.block_submitted(result, creds, submission, now)

    async def submit(self, result: ShareResult) -> BlockSubmission:
        """A block candidate: assemble and submit it (in the background: the finder's answer
        never waits for bitcoind)."""
        assert self.submitter is not None and result.job is not None
        job = result.job
        block = job.block(result.extranonce, result.ntime, result.nonce, result.version)
        # Retried until bitcoind settles it (or the chain moves past it), whatever the outage.
        submission = await self.submitter.submit(
            block, block_hash=result.hash_hex, height=job.height
        )
        if submission.accepted and self.sim_shared is not None:
            for change in await self.sim_shared.on_block(job.height, time.time()):
                log.info("simulated_difficulty_changed", **change.to_dict())
        elif submission.accepted and self.chain_sim is not None:
            changes = self.chain_sim.on_block(job.height, time.time())
            self._save_chain_sim(self.chain_sim)
            if changes:
                self._sim_changed(changes)
        if submission.accepted and self.watcher is not None:
            self.watcher.poke("submit")  # new tip: clean jobs go out without waiting for a poll
        return submission

    # -- shutdown ---------------------------------------------------------------------------------
    async def stop(self) -> None:
        log.info("pool_stopping")
        try:
            await self._stop_services()
        finally:  # whatever failed before: the managed node never outlives the pool
            if self.node is not None:
                await self.node.stop()
            elif self.rpc is not None:
                await self.rpc.close()
        log.info("pool_stopped")

    async def _stop_services(self) -> None:
        if self.api is not None:
            await self.api.stop()
        if self.server is not None:
            await self.server.stop(reconnect=True)
        if self.submitter is not None:
            await self.submitter.close()  # spooled blocks still unsettled stay for the next start
        await self.tasks.stop()
        if self.webhooks is not None:
            await self.webhooks.close()  # deliveries still queued are kept for the next start
        if self.ledger is not None:
            await self.ledger.shared.forget_live()  # its live workers: gone from the store
            await self.ledger.close()  # every journaled share committed to the store

    async def run_until_signalled(self) -> None:
        await run_until_signalled(self.start, self.stop)


def with_overrides(
    config: Config,
    *,
    data_dir: str | None = None,
    stratum_port: int | None = None,
    api_port: int | None = None,
) -> Config:
    if data_dir is not None:
        config = dataclasses.replace(
            config, pool=dataclasses.replace(config.pool, data_dir=data_dir)
        )
    if stratum_port is not None:
        ports = list(config.stratum.ports)
        ports[0] = dataclasses.replace(ports[0], port=stratum_port)
        config = dataclasses.replace(
            config, stratum=dataclasses.replace(config.stratum, ports=tuple(ports))
        )
    if api_port is not None:
        config = dataclasses.replace(config, api=dataclasses.replace(config.api, port=api_port))
    return config
