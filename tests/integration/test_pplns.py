"""Payout schemes per port, end to end: PPLNS and SOLO beside PPS on one pool.

Real bitcoind (regtest, a node of the module's own: a block gets invalidated here), bundled
CPU miners on three ports (pplns, pps, solo), the real journal and store. The PPLNS credits
are recomputed from the journal with the test's own loop (not ``pool.ledger.pplns``) and must
equal the balances to the unit, with one block orphaned for real (``invalidateblock``); a
restart, and a rebuild of the store from the journal alone, credit nothing twice.

Wall time: about 1-2 minutes (most of it the miners finding blocks at the simulated
difficulty).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from pool.bitcoin.target import DIFF1_TARGET
from pool.config import ChainConfig, LedgerConfig, PortConfig, SimulationConfig, VardiffSettings
from pool.ledger.journal_read import read_records
from pool.ledger.store import Store
from pool.miner import Miner, MinerOptions
from pool.node.binaries import Binaries
from pool.node.managed import ManagedNode
from tests.integration.harness import own_node, pool_config, start_pool, wait_for, wallet_address

pytestmark = pytest.mark.integration

FEE_BPS = 150
# PPLNS window: half the (simulated) network difficulty, so that windows end inside the log
# and their oldest share straddles the window start (the edge rule is exercised for real)
FACTOR = 0.5
MATURITY = 3
UNITS = 1_000_000


@pytest_asyncio.fixture(scope="module")
async def schemes_node(
    bitcoind_binaries: Binaries, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ManagedNode]:
    async with own_node(bitcoind_binaries, tmp_path_factory.mktemp("bitcoind-pplns")) as node:
        yield node


def schemes_config(node: ManagedNode, data_dir: Path, payout: str) -> Any:
    def port(scheme: str) -> PortConfig:
        return PortConfig(
            port=0, start_difficulty=1e-5, min_difficulty=1e-8, max_difficulty=1e6, scheme=scheme
        )

    config = pool_config(
        node,
        data_dir,
        payout,
        ports=(port("pplns"), port(""), port("solo")),  # "": the [ledger] scheme, pps
        vardiff=VardiffSettings(enabled=True, target_interval_seconds=0.5, retarget_seconds=10),
    )
    return dataclasses.replace(
        config,
        chain=ChainConfig(simulation=SimulationConfig(enabled=True, initial_difficulty=1e-4)),
        ledger=LedgerConfig(
            scheme="pps",
            fee_bps=FEE_BPS,
            block_maturity=MATURITY,
            block_check_seconds=1.0,
            payout_interval_seconds=0,
            pplns_window_factor=FACTOR,
        ),
    )


def own_pplns_credits(
    journal: list[dict[str, Any]], status: dict[str, str]
) -> tuple[Counter[str], dict[str, Counter[str]], int]:
    """The test's own PPLNS: per confirmed pplns block, walk the pplns shares back from its
    share until FACTOR x its network difficulty is gathered (the oldest share partly), pay
    reward x (1 - fee) by weight, rounded down per address. Returns the confirmed total per
    address, every block's split (orphaned ones too) and how many confirmed blocks' windows
    were full (ended inside the log, their oldest share counted partly)."""
    log: list[tuple[str, Fraction]] = []
    total: Counter[str] = Counter()
    splits: dict[str, Counter[str]] = {}
    full = 0
    for record in journal:
        if record["scheme"] != "pplns":
            continue
        log.append((record["address"], Fraction(record["difficulty"])))
        block = record.get("block")
        if block is None:
            continue
        window = Fraction(FACTOR) * DIFF1_TARGET / int.from_bytes(record["target"], "big")
        weights: Counter[str] = Counter()
        room = window
        index = len(log) - 1
        while index >= 0 and room > 0:
            address, difficulty = log[index]
            part = difficulty if difficulty < room else room
            weights[address] += part  # type: ignore[assignment]
            room -= part
            index -= 1
        gathered = sum(weights.values(), Fraction(0))
        net = Fraction(block["reward_sat"] * UNITS * (10_000 - FEE_BPS), 10_000)
        split: Counter[str] = Counter()
        for address, weight in weights.items():
            share = net * weight / gathered
            split[address] = share.numerator // share.denominator
        splits[block["hash"]] = split
        if status.get(block["hash"]) == "confirmed":
            total.update(split)
            full += room == 0 and part < difficulty
    return total, splits, full


async def balances(app: Any) -> dict[str, int]:
    rows = await app.ledger.store.run(Store.balances)
    return {b.address: b.credited_units for b in rows}


async def settle(app: Any, rpc: Any, blocks: int) -> dict[str, str]:
    """Check the blocks until none is pending; their statuses."""

    async def statuses() -> dict[str, str]:
        return {b["hash"]: b["status"] for b in await app.ledger.store.run(Store.blocks)}

    for _ in range(60):
        await app.ledger.check_blocks(rpc)
        found = await statuses()
        if len(found) >= blocks and "pending" not in found.values():
            return found
        await asyncio.sleep(0.5)
    raise AssertionError(f"blocks did not settle: {await statuses()}")


async def test_pplns_credits_equal_an_independent_calculation_with_an_orphan(
    schemes_node: ManagedNode, tmp_path: Path
) -> None:
    rpc = schemes_node.rpc
    assert rpc is not None
    payout = await wallet_address(schemes_node, "pool")
    pplns_addr = [await wallet_address(schemes_node, "miners") for _ in range(2)]
    pps_addr = await wallet_address(schemes_node, "miners")
    solo_addr = await wallet_address(schemes_node, "miners")
    config = schemes_config(schemes_node, tmp_path, payout)
    app = await start_pool(config)
    try:
        assert app.server is not None and app.ledger is not None
        ports = app.server.bound_ports
        assert [p["scheme"] for p in app.server.port_list] == ["pplns", "pps", "solo"]
        rigs = [
            (ports[0], f"{pplns_addr[0]}.a", 30_000.0),
            (ports[0], f"{pplns_addr[1]}.b", 60_000.0),
            (ports[1], f"{pps_addr}.p", 30_000.0),
            (ports[2], f"{solo_addr}.s", 30_000.0),
        ]
        miners = [
            Miner(MinerOptions(host="127.0.0.1", port=p, user=u, duration=300.0, hashrate=h))
            for p, u, h in rigs
        ]
        tasks = [asyncio.create_task(m.run()) for m in miners]

        def found_by() -> Counter[str]:
            assert app.ledger is not None
            return Counter(str(b.get("scheme")) for b in app.ledger.aggregates.blocks.values())

        def newest_is_pplns() -> bool:
            # the block to orphan must still be pending when it is invalidated: a block with
            # block_maturity (3) confirmations is confirmed for good by the pool's own checks
            assert app.ledger is not None
            found = app.ledger.aggregates.blocks.values()
            return bool(found) and max(found, key=lambda b: int(b["height"]))["scheme"] == "pplns"

        try:
            await wait_for(
                lambda: found_by()["pplns"] >= 3 and found_by()["solo"] >= 1 and newest_is_pplns(),
                300,
                "3 pplns blocks and a solo one, the newest a pplns one",
                found_by,
            )
        finally:
            for m in miners:
                m.stopping.set()
            await asyncio.gather(*tasks)
        ledger = app.ledger
        await ledger.commit()
        await wait_for(
            lambda: len(app.server.stats.blocks) >= len(ledger.aggregates.blocks),  # type: ignore[union-attr]
            30,
            "every block submission answered",
        )
        blocks = await ledger.store.run(Store.blocks)  # newest first
        pplns_blocks = [b for b in blocks if b["scheme"] == "pplns"]
        # orphan the newest pplns block for real (and whatever the pool found after it)
        orphan = pplns_blocks[0]
        await ledger.check_blocks(rpc)  # (the chain does not move now: nothing is mined)
        pending = {b["hash"] for b in await ledger.store.run(Store.blocks, ("pending",))}
        assert orphan["hash"] in pending, "the block to orphan was confirmed already"
        await rpc.call("invalidateblock", orphan["hash"])
        sink = await wallet_address(schemes_node, "miners")
        await rpc.call("generatetoaddress", MATURITY + 2, sink)
        status = await settle(app, rpc, len(blocks))
        assert app.api is not None  # the blocks list says which scheme found each block
        listed = app.api.views.blocks(100)["blocks"]
        assert {b["hash"]: b["scheme"] for b in listed} == {b["hash"]: b["scheme"] for b in blocks}
        assert {"pplns", "solo"} <= {b["scheme"] for b in listed}
        assert status[orphan["hash"]] == "orphaned"
        confirmed_pplns = [b for b in pplns_blocks if status[b["hash"]] == "confirmed"]
        assert confirmed_pplns, status  # at least one credited, one orphaned
        snapshots = {b["hash"]: await ledger.pplns_split(b["hash"]) for b in pplns_blocks}
        solo_block = next(b for b in blocks if b["scheme"] == "solo")
        assert await ledger.pplns_split(solo_block["hash"]) is None
        await ledger.commit()
    except BaseException:  # a failed check: the pool stops all the same
        await app.stop()
        raise
    await app.stop()

    journal = [r for _, r in read_records(tmp_path / "ledger" / "journal")]
    schemes = Counter(r["scheme"] for r in journal)
    assert schemes["pplns"] and schemes["pps"] and schemes["solo"], schemes
    expected, splits, full = own_pplns_credits(journal, status)
    assert full >= 1, "no confirmed block's window ended inside the log"
    assert sum(splits[orphan["hash"]].values()) > 0  # the orphan would have paid: it does not
    for block_hash, snapshot in snapshots.items():  # every split as snapshotted, orphan too
        assert snapshot is not None and snapshot["credits"] == splits[block_hash]
        assert snapshot["credited"] == (status[block_hash] == "confirmed")
        reward = snapshot["reward_units"]
        assert (
            sum(splits[block_hash].values()) + snapshot["fee_units"] + snapshot["remainder_units"]
            == reward
        )
    for record in journal:
        if record["scheme"] in ("pplns", "solo"):
            assert (record["credit"], record["fee"]) == (0, 0), record

    print("pplns run: statuses", status, "expected", dict(expected), "schemes", schemes)

    async def check(app: Any) -> None:
        got = await balances(app)
        for address in pplns_addr:
            assert got.get(address, 0) == expected[address], (address, got, expected)
        assert got.get(solo_addr, 0) == 0  # solo: credited to nobody
        assert got.get(pps_addr, 0) == sum(r["credit"] for r in journal if r["address"] == pps_addr)
        assert {a: b.credited_units for a, b in app.ledger.aggregates.balances.items()} == got
        # the PPS reserve holds only the blocks found on the pps port
        pps_earned = sum(
            b["reward_sat"]
            for b in blocks
            if b["scheme"] == "pps" and status[b["hash"]] in ("pending", "confirmed")
        )
        assert app.ledger.reserve().rewards_earned_units == pps_earned * UNITS

    # a restart replays nothing twice, and a check of the settled blocks credits nothing more
    app = await start_pool(config)
    try:
        await check(app)
        await app.ledger.check_blocks(rpc)  # type: ignore[union-attr]
        await check(app)
    finally:
        await app.stop()

    # the store rebuilt from the journal alone: same splits, credited once the chain says so
    for name in ("ledger.sqlite3", "ledger.sqlite3-wal", "ledger.sqlite3-shm"):
        (tmp_path / "ledger" / name).unlink(missing_ok=True)
    app = await start_pool(config)
    try:
        assert app.ledger is not None
        rebuilt = await settle(app, rpc, len(blocks))
        assert rebuilt == status
        await check(app)
        rows = await app.ledger.store.run(Store.blocks)
        assert {b["hash"]: b["scheme"] for b in rows} == {b["hash"]: b["scheme"] for b in blocks}
    finally:
        await app.stop()
