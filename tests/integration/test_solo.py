"""SOLO ports and best shares with a real regtest bitcoind and the bundled CPU miner.

1. A pool with a SOLO port (1.5 % pool fee) and a PPS port: two SOLO miners of different
   addresses and a PPS miner mine at once until a SOLO miner finds a block; bitcoind's
   ``getblock`` (verbosity 2) shows the block's coinbase paying that miner's address, and the
   fee output paying the pool; the two SOLO miners were sent different coinb2 (same coinb1);
   the PPS miner's shares were accepted meanwhile. (~20-90 s: the simulated difficulty makes
   about one share in ten a block.)
   The dashboard (headless Chromium) shows the SOLO miners, their best share and chances.
2. Best share across a restart: a miner mines, the pool stops, a new pool starts on the same
   data directory, the API shows the same best share (all time and this round) before and
   after the miner reconnects. (~20 s.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pool.app import PoolApp
from pool.bitcoin.address import encode_segwit
from pool.config import ChainConfig, Config, PortConfig, SimulationConfig
from pool.ledger.recovery import classify_coinbase
from pool.ledger.store_best import load_best
from pool.miner import Miner, MinerOptions
from pool.node.managed import ManagedNode
from tests.integration.harness import RawClient, pool_config, start_pool, wait_for, wallet_address
from tests.integration.test_dashboard import Dom, cards, chromium

pytestmark = pytest.mark.integration

COIN = 100_000_000
SHARE_DIFF = 2e-4
FEE_BPS = 150
SOLO_A = encode_segwit("bcrt", 0, bytes([0xA1]) * 20)
SOLO_B = encode_segwit("bcrt", 0, bytes([0xB2]) * 20)


def _ports(*schemes: str) -> tuple[PortConfig, ...]:
    return tuple(
        PortConfig(
            port=0,
            start_difficulty=SHARE_DIFF,
            min_difficulty=1e-9,
            max_difficulty=1e6,
            scheme=scheme,
            solo_fee_bps=FEE_BPS if scheme == "solo" else 0,
        )
        for scheme in schemes
    )


def _sats(btc: float) -> int:
    return round(btc * COIN)


async def test_solo_miner_finds_a_block_paying_its_own_address_beside_a_pps_port(
    regtest_node: ManagedNode, tmp_path: Path
) -> None:
    rpc = regtest_node.rpc
    assert rpc is not None
    payout = await wallet_address(regtest_node)
    config = dataclasses.replace(
        pool_config(regtest_node, tmp_path, payout, ports=_ports("solo", "")),
        chain=ChainConfig(
            simulation=SimulationConfig(enabled=True, initial_difficulty=SHARE_DIFF * 10)
        ),
    )
    app = await start_pool(config)
    server = app.server
    assert server is not None
    solo_port, pps_port = server.bound_ports
    clients: list[RawClient] = []
    miners: list[Miner] = []
    try:
        # What each miner is sent: SOLO coinbases differ per address, coinb1 is shared.
        notifies = {}
        for user, port in ((f"{SOLO_A}.raw", solo_port), (SOLO_B, solo_port), (payout, pps_port)):
            client = await RawClient.connect(port)
            clients.append(client)
            _, notifies[user] = await client.handshake(user)
        a, b, p = (n["params"] for n in notifies.values())
        assert a[0] == b[0] == p[0]  # the same pool job
        assert a[2] == b[2] == p[2]  # coinb1: height, extranonce place
        assert len({a[3], b[3], p[3]}) == 3  # coinb2: each pays someone else

        users = {f"{SOLO_A}.cpu": solo_port, f"{SOLO_B}.cpu": solo_port, f"{payout}.pps": pps_port}
        miners = [
            Miner(MinerOptions(host="127.0.0.1", port=port, user=u)) for u, port in users.items()
        ]
        tasks = [asyncio.create_task(m.run()) for m in miners]
        solo_names = {f"{SOLO_A}.cpu": SOLO_A, f"{SOLO_B}.cpu": SOLO_B}

        def solo_blocks() -> list[Any]:
            return [
                blk
                for blk in server.stats.blocks
                if blk.worker in solo_names and blk.status == "accepted"
            ]

        pps = f"{payout}.pps"
        await wait_for(  # and the PPS miner at work beside it
            lambda: (
                bool(solo_blocks())
                and pps in server.stats.workers
                and server.stats.workers[pps].accepted >= 3
            ),
            240,
            "a block found on the SOLO port and shares accepted on the PPS port",
            lambda: [(blk.worker, blk.status) for blk in server.stats.blocks],
        )
        pps_accepted_while = server.stats.workers[pps].accepted
        async with aiohttp.ClientSession() as http:
            pool_view = await _api(http, app, "/api/pool")
            finder = solo_blocks()[0].worker  # it has shares: a best, a hashrate
            worker_view = await _api(http, app, f"/api/workers/{finder}")
        _check_solo_view(pool_view, worker_view, solo_port)
        await _check_dashboard(
            app, tmp_path, [f"{SOLO_A}.cpu", f"{SOLO_B}.cpu"], solo_names[finder]
        )
        for m in miners:
            m.stopping.set()
        summaries = await asyncio.gather(*tasks)
        # the PPS port kept working beside it
        assert pps_accepted_while > 0 and summaries[2]["accepted"] > 0, summaries
        for summary in summaries:
            assert all("stale" in r for r in summary["reasons"]), summary

        assert app.job_config is not None
        script_and_tag = (app.job_config.payout_script, app.job_config.pool_tag)
        for found in solo_blocks():
            block = await rpc.call("getblock", found.hash, 2)
            coinbase = block["tx"][0]
            outs = coinbase["vout"]
            total = sum(_sats(o["value"]) for o in outs)
            fee = total * FEE_BPS // 10_000
            paying = [o for o in outs if o["value"] > 0]
            assert paying[0]["scriptPubKey"]["address"] == solo_names[found.worker], outs
            assert _sats(paying[0]["value"]) == total - fee
            assert paying[1]["scriptPubKey"]["address"] == payout
            assert _sats(paying[1]["value"]) == fee
            # the witness commitment is kept (a zero-value OP_RETURN output, last)
            assert outs[-1]["value"] == 0 and outs[-1]["scriptPubKey"]["hex"].startswith(
                "6a24aa21a9ed"
            )
            # found again on the chain after a crash (reconcile): the miner's, not the pool's
            assert classify_coinbase(coinbase, *script_and_tag) == (
                "solo",
                total,
                solo_names[found.worker],
            )
        # the PPS miner's blocks (if any) pay the pool, as before
        for found in server.stats.blocks:
            if found.worker == f"{payout}.pps" and found.status == "accepted":
                block = await rpc.call("getblock", found.hash, 2)
                assert block["tx"][0]["vout"][0]["scriptPubKey"]["address"] == payout
                pool_block = classify_coinbase(block["tx"][0], *script_and_tag)
                assert pool_block is not None and pool_block[0] == "", pool_block
        # the pool's best share of the round began again at its last block
        assert server.ctx.best.pool.difficulty >= SHARE_DIFF * 10
        assert server.ctx.best.round_started > 0
    finally:
        for m in miners:
            m.stopping.set()
        for client in clients:
            await client.close()
        await app.stop()


def _check_solo_view(pool: dict[str, Any], worker: dict[str, Any], solo_port: int) -> None:
    """The SOLO section: the port, the miners, and chances that follow the formula."""
    solo = pool["solo"]
    assert [p["port"] for p in solo["ports"]] == [solo_port]
    assert solo["workers"] == 4  # two CPU miners and two raw clients on the SOLO port
    difficulty = solo["network_difficulty"]
    assert difficulty == pool["network"]["block_difficulty"]  # the simulated one
    assert worker["solo"] is not None and worker["best_share"]["best_difficulty"] > 0
    for entry in [*solo["top"], worker["solo"]]:
        rate, chance = entry["hashrate"], entry["chance"]
        for period, seconds in (("day", 86_400), ("week", 604_800), ("year", 31_536_000)):
            expected = 1 - math.exp(-rate * seconds / (difficulty * 2**32))
            assert chance[period] == pytest.approx(expected, rel=1e-9, abs=1e-12)
        if rate > 0:
            assert chance["expected_seconds"] == pytest.approx(difficulty * 2**32 / rate)


async def _check_dashboard(app: PoolApp, tmp: Path, names: list[str], address: str) -> None:
    """The dashboard (headless Chromium) shows the SOLO miners with their best share and
    chances, and an address page its best share and chance."""
    assert app.api is not None
    base = f"http://127.0.0.1:{app.api.port}"
    dom = Dom((await chromium(base + "/", tmp, "--dump-dom")).decode())
    assert "hidden" in dom.by_id("error").attrs, dom.by_id("error").text
    assert "hidden" not in dom.by_id("solo-section").attrs
    links = {e.text for e in dom.find("a") if e.inside("solo")}
    assert set(names) <= links, links
    cells = [e.text for e in dom.find("td") if e.inside("solo")]
    assert sum(1 for c in cells if c.endswith("%")) >= 3 * len(names), cells
    assert "Best share (round)" in cards(dom)
    page = await chromium(f"{base}/address/{address}", tmp, "--dump-dom")
    shown = cards(Dom(page.decode()))
    assert "Best share" in shown and "SOLO: chance of a block" in shown, shown
    assert shown["SOLO: chance of a block"][0].endswith("/ day")


async def _api(http: aiohttp.ClientSession, app: PoolApp, path: str) -> Any:
    assert app.api is not None
    async with http.get(f"http://127.0.0.1:{app.api.port}{path}") as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def _bests(http: aiohttp.ClientSession, app: PoolApp, name: str) -> list[dict[str, Any]]:
    address = name.partition(".")[0]
    worker = await _api(http, app, f"/api/workers/{name}")
    listed = {w["name"]: w for w in (await _api(http, app, "/api/workers"))["workers"]}
    addr = await _api(http, app, f"/api/addresses/{address}")
    return [worker["best_share"], listed[name]["best_share"], addr["best_share"]]


async def test_best_share_survives_a_restart_and_the_miner_reconnecting(
    regtest_node: ManagedNode, tmp_path: Path
) -> None:
    payout = await wallet_address(regtest_node)
    config: Config = dataclasses.replace(
        pool_config(regtest_node, tmp_path, payout, ports=_ports("solo")),
        chain=ChainConfig(simulation=SimulationConfig(enabled=True, initial_difficulty=1e9)),
    )
    name = f"{SOLO_A}.bitaxe"
    http = aiohttp.ClientSession()
    app = await start_pool(config)
    try:
        assert app.server is not None
        miner = Miner(
            MinerOptions(host="127.0.0.1", port=app.server.bound_ports[0], user=name, max_shares=30)
        )
        summary = await miner.run()
        assert summary["accepted"] >= 20, summary
        before = await _bests(http, app, name)
        best = before[0]["best_difficulty"]
        assert best >= SHARE_DIFF  # an achieved difficulty, at least the share's own
        assert before[0]["round_best_difficulty"] == best  # no block yet: one round
        assert all(b["best_difficulty"] == best for b in before), before
        pool_best = (await _api(http, app, "/api/pool"))["best_share"]
        assert pool_best["best_difficulty"] == best
    finally:
        await app.stop()
    app2 = await start_pool(config)  # the same data directory
    try:
        assert app2.server is not None and app2.ledger is not None
        # in the store itself, and in memory for the API, before any miner is back
        rows, _ = await app2.ledger.store.run(load_best)
        assert ("worker", name, best) in {(r[0], r[1], r[2]) for r in rows}
        after = await _bests(http, app2, name)
        assert after == before
        # the miner reconnects and mines on: the best is kept (or beaten, never lost)
        miner = Miner(
            MinerOptions(host="127.0.0.1", port=app2.server.bound_ports[0], user=name, max_shares=5)
        )
        await miner.run()
        again = await _bests(http, app2, name)
        assert again[0]["best_difficulty"] >= best
        if again[0]["best_difficulty"] == best:
            assert again[0]["best_at"] == before[0]["best_at"]
    finally:
        await http.close()
        await app2.stop()
