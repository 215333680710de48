"""The PPS ledger end to end: real bitcoind, bundled miners, the journal, the store, payouts."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
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
from pool.ledger.payouts import btc_to_sat
from pool.ledger.store import Store
from pool.miner import Miner, MinerOptions
from pool.node.binaries import Binaries
from pool.node.managed import ManagedNode
from tests.integration.harness import (
    RawClient,
    journal_identity,
    own_node,
    pool_config,
    solve,
    start_pool,
    told_accepted,
    wait_for,
    wallet_address,
)

pytestmark = pytest.mark.integration

FEE_BPS = 150
REGTEST_HALVING = 150
COIN = 100_000_000


@pytest_asyncio.fixture(scope="module")
async def ledger_node(
    bitcoind_binaries: Binaries, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ManagedNode]:
    """A regtest bitcoind of its own (blocks get invalidated here), pool wallet funded."""
    async with own_node(bitcoind_binaries, tmp_path_factory.mktemp("bitcoind-ledger")) as node:
        yield node


def ledger_config(node: ManagedNode, data_dir: Path, payout: str, **ledger: Any) -> Any:
    config = pool_config(
        node,
        data_dir,
        payout,
        ports=(PortConfig(port=0, start_difficulty=1e-4, min_difficulty=1e-8, max_difficulty=1e6),),
        vardiff=VardiffSettings(enabled=True, target_interval_seconds=0.5, retarget_seconds=10),
    )
    return dataclasses.replace(
        config,
        chain=ChainConfig(simulation=SimulationConfig(enabled=True, initial_difficulty=3e-4)),
        ledger=LedgerConfig(
            fee_bps=FEE_BPS,
            payout_threshold_sat=1000,
            payout_interval_seconds=0,
            payout_fee_rate_sat_vb=2.0,
            block_check_seconds=1.0,
            **ledger,
        ),
    )


async def settled_blocks(app: Any) -> list[dict[str, Any]]:
    """The store's blocks, once bitcoind has answered every submission (the server submits
    block candidates in the background, after journaling their shares)."""
    assert app.ledger is not None and app.server is not None
    await app.ledger.commit()
    blocks: list[dict[str, Any]] = await app.ledger.store.run(Store.blocks)
    await wait_for(
        lambda: len(app.server.stats.blocks) >= len(blocks),
        30,
        "every block submission to be answered",
        lambda: (len(app.server.stats.blocks), len(blocks)),
    )
    return blocks


def independent_credit(record: dict[str, Any]) -> int:
    """The PPS formula recomputed from the journal record's inputs, not from its result."""
    subsidy = (50 * COIN) >> (record["height"] // REGTEST_HALVING)
    target = int.from_bytes(record["target"], "big")
    blocks_worth = min(Fraction(record["difficulty"]) * target / DIFF1_TARGET, Fraction(1))
    exact = blocks_worth * subsidy * 1_000_000 * (10_000 - FEE_BPS) / 10_000
    return exact.numerator // exact.denominator


async def test_miners_credits_blocks_and_a_confirmed_payout(
    ledger_node: ManagedNode, tmp_path: Path
) -> None:
    rpc = ledger_node.rpc
    assert rpc is not None
    payout = await wallet_address(ledger_node, "pool")
    miners_addr = [await wallet_address(ledger_node, "miners") for _ in range(2)]
    app = await start_pool(ledger_config(ledger_node, tmp_path, payout))
    assert app.server is not None and app.ledger is not None
    records = [tmp_path / f"miner{i}.jsonl" for i in range(2)]
    try:
        miners = [
            Miner(
                MinerOptions(
                    host="127.0.0.1",
                    port=app.server.bound_ports[0],
                    user=f"{miners_addr[i]}.rig{i}",
                    duration=120.0,  # "a few minutes" of mining, kept inside the CI budget
                    hashrate=40_000.0 * (i + 1),
                    record=str(records[i]),
                )
            )
            for i in range(2)
        ]
        summaries = await asyncio.gather(*(m.run() for m in miners))
        ledger = app.ledger
        await ledger.commit()

        # 1. The credits equal the formula recomputed from the journal, to the unit.
        journal = [rec for _, rec in read_records(tmp_path / "ledger" / "journal")]
        assert len(journal) >= 100, summaries
        totals = await ledger.store.run(Store.totals)
        assert ledger.aggregates.totals() == totals  # what the API reads, in memory
        assert totals["shares"] == len(journal)
        assert totals["credit_units"] == sum(independent_credit(r) for r in journal)
        per_address: Counter[str] = Counter()
        for rec in journal:
            per_address[rec["address"]] += independent_credit(rec)
        for address in miners_addr:
            balance = await ledger.store.run(Store.balance, address)
            assert balance is not None and balance.credited_units == per_address[address]
            assert ledger.aggregates.balances[address] == balance

        # 2. Every share a miner was told "accepted" is in the journal, exactly once.
        identities = Counter(journal_identity(r) for r in journal)
        assert max(identities.values()) == 1
        told = [s for f in records for s in told_accepted(f)]
        assert len(told) == sum(s["accepted"] for s in summaries)
        assert set(told) <= set(identities)

        # 3. Found blocks are recorded and mature after 100 confirmations.
        found = await settled_blocks(app)
        assert found, "no block found: the simulated difficulty is too high for the test"
        # Both miners can solve the same height within a few ms: the second block is valid but
        # stale (bitcoind says "inconclusive") and must end orphaned, never confirmed.
        in_chain = {
            b["hash"] for b in found if await rpc.call("getblockhash", b["height"]) == b["hash"]
        }
        assert in_chain, found
        # Journaled before their submission ("submitted"); with the older order (submitted
        # first) the record holds the outcome.
        submitted = {r["block"]["hash"]: r["block"]["status"] for r in journal if "block" in r}
        won_heights = {b["height"] for b in found if b["hash"] in in_chain}
        for b in found:
            assert b["status"] == "pending", b  # none refused by bitcoind
            if b["hash"] in in_chain:
                assert submitted[b["hash"]] in ("submitted", "accepted"), b
            else:  # only ever the loser of a same-height race, never a block bitcoind refused
                assert b["height"] in won_heights, b
                assert submitted[b["hash"]] in ("submitted", "inconclusive"), b
        await ledger.check_blocks(rpc)
        status = {b["hash"]: b["status"] for b in await ledger.store.run(Store.blocks)}
        assert status == {
            b["hash"]: "pending" if b["hash"] in in_chain else "orphaned" for b in found
        }
        sink = await wallet_address(ledger_node, "miners")
        await rpc.call("generatetoaddress", 100, sink)
        await ledger.check_blocks(rpc)
        status = {b["hash"]: b["status"] for b in await ledger.store.run(Store.blocks)}
        assert status == {
            b["hash"]: "confirmed" if b["hash"] in in_chain else "orphaned" for b in found
        }
        assert {h: b["status"] for h, b in ledger.aggregates.blocks.items()} == status
        luck = ledger.luck(time.time())["all"]
        assert luck["found_blocks"] == len(found)
        expected = sum(
            min(r["difficulty"] * int.from_bytes(r["target"], "big") / DIFF1_TARGET, 1.0)
            for r in journal
        )
        assert luck["expected_blocks"] == pytest.approx(expected, rel=1e-9)
        assert luck["luck"] == pytest.approx(expected / len(found), rel=1e-9)
        reserve = ledger.reserve()
        assert reserve.rewards_confirmed_units == (
            sum(b["reward_sat"] for b in found if b["hash"] in in_chain) * 1_000_000
        )

        # 4. Balances over the threshold are paid: one sendmany, exact amounts.
        before = {a: await ledger.store.run(Store.balance, a) for a in miners_addr}
        result = await app.run_payout_round()
        assert result.status == "paid", result
        assert set(result.paid) == set(miners_addr)
        for address in miners_addr:
            bal_before = before[address]
            assert bal_before is not None
            assert result.paid[address] == bal_before.balance_units // 1_000_000
            after = await ledger.store.run(Store.balance, address)
            assert after is not None and ledger.aggregates.balances[address] == after
            assert after.paid_units == result.paid[address] * 1_000_000
            assert after.balance_units == bal_before.balance_units % 1_000_000
        await rpc.call("generatetoaddress", 1, sink)
        for address in miners_addr:
            received = await rpc.call("getreceivedbyaddress", address, 1, wallet="miners")
            assert btc_to_sat(received) == result.paid[address]
        assert app.payouts is not None
        await app.payouts.update_confirmations()
        [paid] = await ledger.store.run(Store.payouts)
        assert paid["status"] == "confirmed" and paid["txid"] == result.txid
        # Nothing more is due: a second round pays nothing.
        assert (await app.run_payout_round()).status == "nothing_due"
    finally:
        await app.stop()


async def test_invalidated_block_is_orphaned_and_leaves_the_reserve(
    ledger_node: ManagedNode, tmp_path: Path
) -> None:
    rpc = ledger_node.rpc
    assert rpc is not None
    payout = await wallet_address(ledger_node, "pool")
    miner_addr = await wallet_address(ledger_node, "miners")
    app = await start_pool(ledger_config(ledger_node, tmp_path, payout))
    assert app.server is not None and app.ledger is not None
    ledger = app.ledger
    miner = Miner(
        MinerOptions(
            host="127.0.0.1",
            port=app.server.bound_ports[0],
            user=f"{miner_addr}.solo",
            duration=60.0,
            hashrate=100_000.0,
        )
    )
    task = asyncio.create_task(miner.run())
    try:
        await wait_for(lambda: bool(app.server and app.server.stats.blocks), 60, "a block")
        miner.stopping.set()
        await task
        await settled_blocks(app)
        await ledger.check_blocks(rpc)
        # the highest: invalidating it orphans only it
        block = (await ledger.store.run(Store.blocks))[0]
        assert block["status"] == "pending"
        before = ledger.reserve()
        balance_before = await ledger.store.run(Store.balance, miner_addr)
        await rpc.call("invalidateblock", block["hash"])
        try:
            # Settled by this check or by the pool's own upkeep, which checks blocks on every
            # new tip (invalidateblock makes one), whichever comes first: both run here.
            await ledger.check_blocks(rpc)
            await wait_for(
                lambda: ledger.aggregates.blocks[block["hash"]]["status"] == "orphaned",
                30,
                "the invalidated block orphaned",
            )
            stored = await ledger.store.run(Store.block, block["hash"])
            assert stored is not None and stored["status"] == "orphaned"
            after = ledger.reserve()
            assert (
                before.rewards_earned_units - after.rewards_earned_units
                == block["reward_sat"] * 1_000_000
            )
            assert after.credits_units == before.credits_units  # PPS credits stay
            assert await ledger.store.run(Store.balance, miner_addr) == balance_before
            assert after.reserve_units == before.reserve_units - block["reward_sat"] * 1_000_000
        finally:
            await rpc.call("reconsiderblock", block["hash"])
        await ledger.check_blocks(rpc)  # back on the best chain: pending again
        assert (await ledger.store.run(Store.blocks))[0]["status"] == "pending"
    finally:
        miner.stopping.set()
        await task
        await app.stop()


async def test_a_share_the_ledger_cannot_record_is_not_acknowledged(
    ledger_node: ManagedNode, tmp_path: Path
) -> None:
    """The journal refuses writes (here: it was closed under the pool): the miner hears an
    error, never "accepted", and the share is counted nowhere."""
    payout = await wallet_address(ledger_node, "pool")
    miner_addr = await wallet_address(ledger_node, "miners")
    app = await start_pool(ledger_config(ledger_node, tmp_path, payout))
    assert app.server is not None and app.ledger is not None
    client = await RawClient.connect(app.server.bound_ports[0])
    try:
        difficulty, notify = await client.handshake(f"{miner_addr}.x")
        await app.ledger.journal.close()  # every append now raises
        solution = solve(notify["params"], client.extranonce1, b"\0" * 4, difficulty)
        client.send(9, "mining.submit", solution.params(f"{miner_addr}.x"))
        answer = await client.response(9)
        assert answer["result"] is not True
        assert "share not recorded" in json.dumps(answer["error"])
        assert app.server.stats.accepted == 0
        assert (await app.ledger.store.run(Store.totals))["shares"] == 0
    finally:
        await client.close()
        await app.stop()


async def test_a_block_whose_share_cannot_be_journaled_is_still_tracked(
    ledger_node: ManagedNode, tmp_path: Path
) -> None:
    """A share that is also a block: if the journal refuses it, the miner hears an error and is
    not credited, but the block (submitted to bitcoind all the same, on the chain, with its
    reward) is recorded in the store, pending maturity like any other."""
    rpc = ledger_node.rpc
    assert rpc is not None
    payout = await wallet_address(ledger_node, "pool")
    miner_addr = await wallet_address(ledger_node, "miners")
    config = ledger_config(ledger_node, tmp_path, payout)
    # Simulated network difficulty = the port's start difficulty: every share is a block.
    config = dataclasses.replace(
        config,
        chain=ChainConfig(simulation=SimulationConfig(enabled=True, initial_difficulty=1e-4)),
    )
    app = await start_pool(config)
    assert app.server is not None and app.ledger is not None
    client = await RawClient.connect(app.server.bound_ports[0])
    try:
        difficulty, notify = await client.handshake(f"{miner_addr}.lucky")
        assert difficulty == pytest.approx(1e-4)
        await app.ledger.journal.close()  # every append now raises
        solution = solve(notify["params"], client.extranonce1, b"\0" * 4, difficulty)
        client.send(5, "mining.submit", solution.params(f"{miner_addr}.lucky"))
        answer = await client.response(5)
        assert answer["result"] is not True
        assert "share not recorded" in json.dumps(answer["error"])
        [block] = await app.ledger.store.run(Store.blocks)
        assert block["status"] == "pending" and block["worker"] == f"{miner_addr}.lucky"
        # submitted in the background (or before the answer): on the chain soon
        deadline = time.monotonic() + 30
        while await rpc.call("getblockcount") < block["height"]:
            assert time.monotonic() < deadline, "the block never reached the chain"
            await asyncio.sleep(0.05)
        assert await rpc.call("getblockhash", block["height"]) == block["hash"]  # on the chain
        header = await rpc.call("getblockheader", block["hash"])
        assert int(header["nonce"]) == int(solution.nonce, 16)
        await wait_for(lambda: bool(app.server and app.server.stats.blocks), 10, "the outcome")
        [block] = await app.ledger.store.run(Store.blocks)
        assert block["status"] == "pending"  # accepted: the chain checks settle it
        assert app.ledger.reserve().rewards_earned_units == block["reward_sat"] * 1_000_000
        totals = await app.ledger.store.run(Store.totals)
        assert totals["shares"] == 0  # the share itself is not credited
        assert await app.ledger.store.run(Store.balance, miner_addr) is None
    finally:
        await client.close()
        await app.stop()
