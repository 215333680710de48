"""The ledger's store on its own thread, and block outcomes, with real SQLite and a real journal
(and the session's regtest bitcoind where blocks are settled from the chain).

* a share is acknowledged once the journal has it, whatever the store's thread is doing;
* a failed apply marks the store broken and rolls it back; the journal keeps every share and
  the next start credits each exactly once;
* ``block_submitted``: a block bitcoind refused is ``rejected`` and never counts (reserve,
  luck, block checks); any other outcome leaves it pending until the chain settles it; a
  block whose share is not in the store is recorded; repeated calls change nothing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from pool.bitcoin import REGTEST, address_to_script
from pool.config import LedgerConfig
from pool.jobs import Job, JobConfig, Template, build_job
from pool.ledger.aggregates import CONFIRMED, PENDING, REJECTED
from pool.ledger.journal_read import read_records
from pool.ledger.ledger import Ledger
from pool.ledger.store import Store
from pool.node.managed import ManagedNode
from pool.node.submit import BlockSubmission, SubmitStatus
from pool.server.auth import Credentials, parse_credentials
from pool.shares import ShareResult
from tests.integration.harness import wallet_address
from tests.unit.test_jobs import gbt

pytestmark = pytest.mark.integration

ADDRESS = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
COIN = 100_000_000


def job_from(template: Template, script: bytes) -> Job:
    return build_job(
        template, JobConfig(payout_script=script), job_id="1", now=time.time(), clean=True
    )


OFFLINE_JOB = job_from(Template.from_rpc(gbt(height=5)), address_to_script(ADDRESS, REGTEST))


def creds(name: str) -> Credentials:
    return parse_credentials(name, "x", REGTEST)


_nonces = iter(range(1, 1 << 31))


def share(
    who: Credentials, job: Job = OFFLINE_JOB, *, block_hash: str = "", difficulty: float = 1e-3
) -> ShareResult:
    nonce = next(_nonces)
    return ShareResult(
        accepted=True,
        reject=None,
        message="",
        worker=who.username,
        job=job,
        difficulty=difficulty,
        share_difficulty=difficulty,
        block_candidate=bool(block_hash),
        extranonce=nonce.to_bytes(8, "big"),
        ntime=job.template.curtime,
        nonce=nonce,
        version=job.template.version,
        hash_hex=block_hash or f"{nonce:064x}",
        job_id=job.job_id,
    )


def submission(status: SubmitStatus, result: ShareResult) -> BlockSubmission:
    assert result.job is not None
    reason = "high-hash" if status is SubmitStatus.REJECTED else None
    return BlockSubmission(status, reason, result.hash_hex, result.job.height)


def on_backend(request: pytest.FixtureRequest, **config: Any) -> LedgerConfig:
    """``config`` on the test's backend (``backend`` parameter: SQLite or a fresh database
    of the session's real PostgreSQL)."""
    if getattr(request, "param", "sqlite") == "postgresql":
        config.update(backend="postgresql", dsn=request.getfixturevalue("pg_database"))
    return LedgerConfig(**config)


@pytest_asyncio.fixture(params=["sqlite", "postgresql"])
async def ledger(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Ledger]:
    ledger = Ledger(on_backend(request, block_maturity=2), tmp_path, REGTEST)
    await ledger.open()
    try:
        yield ledger
    finally:
        await ledger.close()


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


async def stored(ledger: Ledger) -> dict[str, Any]:
    """The store's own numbers (read on its thread), for comparison with the aggregates."""
    blocks = await ledger.store.run(Store.blocks)
    return {
        "totals": await ledger.store.run(Store.totals),
        "blocks": {b["hash"]: b["status"] for b in blocks},
    }


# -- the store's thread -------------------------------------------------------------------------


async def test_shares_are_acknowledged_while_the_store_thread_is_busy(ledger: Ledger) -> None:
    """Acknowledging waits for the journal only: with the store's thread held up, shares are
    journaled and on_share returns; the store catches up afterwards."""
    release = threading.Event()
    entered = threading.Event()

    def hold(store: Store) -> None:
        entered.set()
        release.wait(30)

    held = asyncio.ensure_future(ledger.store.run(hold))
    await wait_until(entered.is_set, "the store's thread to be held")
    miner = creds(f"{ADDRESS}.rig")
    try:
        for _ in range(50):
            await asyncio.wait_for(ledger.on_share(share(miner), miner, time.time(), None), 5)
        assert ledger.store.backlog == 50 and ledger.aggregates.shares == 0
        assert ledger.journal.records_written == 50
    finally:
        release.set()
        await held
    await ledger.commit()
    assert ledger.store.backlog == 0
    assert ledger.aggregates.shares == 50
    assert (await stored(ledger))["totals"]["shares"] == 50
    assert ledger.aggregates.totals() == (await stored(ledger))["totals"]


async def test_a_failed_apply_is_rolled_back_and_replayed_once_at_the_next_start(
    tmp_path: Path,
) -> None:
    miner, victim = creds(f"{ADDRESS}.good"), creds(f"{ADDRESS}.boom")
    config = LedgerConfig(checkpoint_seconds=3600)  # commits only when the test says so
    ledger = Ledger(config, tmp_path, REGTEST)
    await ledger.open()
    try:
        for _ in range(3):
            await ledger.on_share(share(miner), miner, time.time(), None)
        await ledger.commit()
        committed = ledger.aggregates.totals()
        # Inserting this worker now fails inside SQLite (a trigger of this connection only).
        await ledger.store.run(
            lambda s: s.conn.execute(
                "CREATE TEMP TRIGGER boom BEFORE INSERT ON workers WHEN NEW.name LIKE '%.boom' "
                "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
            )
        )
        await ledger.on_share(share(miner), miner, time.time(), None)  # applied, not committed
        await ledger.on_share(share(victim), victim, time.time(), None)
        await wait_until(lambda: ledger.broken is not None, "the store to fail")
        assert "injected failure" in (ledger.broken or "")
        # Still acknowledged (journaled); the store keeps its last commit, in memory too.
        for _ in range(4):
            await ledger.on_share(share(miner), miner, time.time(), None)
        await ledger.commit()  # refused while broken: nothing half-applied becomes durable
        assert ledger.aggregates.totals() == committed
        assert (await stored(ledger))["totals"] == committed
    finally:
        await ledger.close()
    journal = [rec for _, rec in read_records(tmp_path / "journal")]
    assert len(journal) == 3 + 1 + 1 + 4
    again = Ledger(config, tmp_path, REGTEST)
    await again.open()
    try:
        assert again.broken is None and again.replayed == 6
        totals = (await stored(again))["totals"]
        assert totals == again.aggregates.totals()
        assert totals["shares"] == len(journal)
        assert totals["credit_units"] == sum(r["credit"] for r in journal)
    finally:
        await again.close()


# -- block outcomes -----------------------------------------------------------------------------


async def live_job(node: ManagedNode) -> Job:
    assert node.rpc is not None
    template = Template.from_rpc(await node.rpc.call("getblocktemplate", {"rules": ["segwit"]}))
    script = address_to_script(await wallet_address(node), REGTEST)
    return job_from(template, script)


async def test_a_rejected_block_never_counts(regtest_node: ManagedNode, ledger: Ledger) -> None:
    rpc = regtest_node.rpc
    assert rpc is not None
    job = await live_job(regtest_node)
    finder = creds(f"{await wallet_address(regtest_node)}.finder")
    candidate = share(finder, job, block_hash="00" * 4 + "ab" * 28)
    # journaled before its submission: tracked as pending at once
    await ledger.on_share(candidate, finder, time.time(), None)
    [record] = [r for _, r in read_records(ledger.journal_dir)]
    assert record["block"] == {
        "hash": candidate.hash_hex,
        "height": job.height,
        "reward_sat": job.template.coinbase_value,
        "status": "submitted",
    }
    await ledger.commit()
    assert (await stored(ledger))["blocks"] == {candidate.hash_hex: PENDING}
    assert ledger.reserve().rewards_earned_units == job.template.coinbase_value * 1_000_000
    assert ledger.luck(time.time())["all"]["found_blocks"] == 1
    # bitcoind refused it
    await ledger.block_submitted(
        candidate, finder, submission(SubmitStatus.REJECTED, candidate), time.time()
    )
    assert (await stored(ledger))["blocks"] == {candidate.hash_hex: REJECTED}
    assert ledger.aggregates.blocks[candidate.hash_hex]["status"] == REJECTED
    reserve = ledger.reserve()
    assert reserve.rewards_earned_units == 0 and reserve.rewards_confirmed_units == 0
    assert reserve.credits_units == record["credit"]  # the share was real work: credited
    luck = ledger.luck(time.time())
    assert all(w["found_blocks"] == 0 and w["luck"] is None for w in luck.values())
    assert ledger.aggregates.block_counts()[REJECTED] == 1
    # the chain checks never look at it; a second outcome (even another status) changes nothing
    assert await ledger.check_blocks(rpc) == []
    for status in (SubmitStatus.REJECTED, SubmitStatus.ACCEPTED):
        await ledger.block_submitted(candidate, finder, submission(status, candidate), time.time())
    assert (await stored(ledger))["blocks"] == {candidate.hash_hex: REJECTED}
    # a refused block whose share never reached the store is recorded, as rejected
    lost = share(finder, job, block_hash="00" * 4 + "cd" * 28)
    await ledger.block_submitted(lost, finder, submission(SubmitStatus.REJECTED, lost), 5.0)
    assert (await stored(ledger))["blocks"][lost.hash_hex] == REJECTED
    assert ledger.aggregates.blocks[lost.hash_hex]["worker"] == finder.name
    assert ledger.reserve().rewards_earned_units == 0
    assert (await stored(ledger))["totals"]["shares"] == 1  # that share is not credited
    # stale (never accepted; the chain holds another block at its height): rejected too
    late = share(finder, job, block_hash="00" * 4 + "ef" * 28)
    await ledger.block_submitted(late, finder, submission(SubmitStatus.STALE, late), 6.0)
    assert (await stored(ledger))["blocks"][late.hash_hex] == REJECTED


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> pytest.FixtureRequest:
    return request


async def test_blocks_not_refused_stay_pending_until_the_chain_settles_them(
    regtest_node: ManagedNode, tmp_path: Path, backend: pytest.FixtureRequest
) -> None:
    rpc = regtest_node.rpc
    assert rpc is not None
    config = on_backend(backend, block_maturity=3)
    ledger = Ledger(config, tmp_path, REGTEST)
    await ledger.open()
    sink = await wallet_address(regtest_node)
    finder = creds(f"{await wallet_address(regtest_node)}.finder")
    try:
        # a real block (mined by the node) stands for the candidate the pool submitted
        job = await live_job(regtest_node)
        [mined] = await rpc.call("generatetoaddress", 1, sink)
        won = share(finder, job, block_hash=mined)
        await ledger.on_share(won, finder, time.time(), None)
        for status in (SubmitStatus.ACCEPTED, SubmitStatus.DUPLICATE):
            await ledger.block_submitted(won, finder, submission(status, won), time.time())
        # one whose share was not journaled, and one bitcoind never got (unreachable)
        job2 = await live_job(regtest_node)
        [mined2] = await rpc.call("generatetoaddress", 1, sink)
        unjournaled = share(finder, job2, block_hash=mined2)
        await ledger.block_submitted(
            unjournaled, finder, submission(SubmitStatus.INCONCLUSIVE, unjournaled), time.time()
        )
        never = share(finder, job2, block_hash="00" * 4 + "ef" * 28)
        await ledger.on_share(never, finder, time.time(), None)
        await ledger.block_submitted(never, finder, submission(SubmitStatus.FAILED, never), 1.0)
        expected = {mined: PENDING, mined2: PENDING, never.hash_hex: PENDING}
        assert (await stored(ledger))["blocks"] == expected
        reward = job.template.coinbase_value + 2 * job2.template.coinbase_value
        assert ledger.reserve().rewards_earned_units == reward * 1_000_000
        assert ledger.luck(time.time())["all"]["found_blocks"] == 3
        # the chain settles them: on it and deep enough -> confirmed. One bitcoind never had
        # is never "orphaned": it stays pending while the chain is not past its height (its
        # submission may still be retried), then it is rejected (never accepted)
        assert await ledger.check_blocks(rpc) == []
        assert (await stored(ledger))["blocks"] == expected
        await rpc.call("generatetoaddress", 1, sink)
        assert sorted(await ledger.check_blocks(rpc)) == sorted(
            [f"{mined}:pending->confirmed", f"{never.hash_hex}:pending->rejected"]
        )
        await rpc.call("generatetoaddress", 1, sink)
        assert await ledger.check_blocks(rpc) == [f"{mined2}:pending->confirmed"]
        settled = {mined: CONFIRMED, mined2: CONFIRMED, never.hash_hex: REJECTED}
        assert (await stored(ledger))["blocks"] == settled
        assert {h: b["status"] for h, b in ledger.aggregates.blocks.items()} == settled
        confirmed_units = (job.template.coinbase_value + job2.template.coinbase_value) * 1_000_000
        assert ledger.reserve().rewards_confirmed_units == confirmed_units
        assert ledger.luck(time.time())["all"]["found_blocks"] == 2  # never a solution on chain
        # a late outcome (even a refusal) of a settled block changes nothing
        await ledger.block_submitted(won, finder, submission(SubmitStatus.REJECTED, won), 9.0)
        assert (await stored(ledger))["blocks"] == settled
    finally:
        await ledger.close()
    # restarted: the same, from the store (nothing replayed twice)
    again = Ledger(config, tmp_path, REGTEST)
    await again.open()
    try:
        assert again.replayed == 0
        assert {h: b["status"] for h, b in again.aggregates.blocks.items()} == settled
        assert (await stored(again))["totals"]["shares"] == 2
    finally:
        await again.close()


# -- batches (the server's share recorder) --------------------------------------------------


async def test_on_shares_journals_a_batch_and_credits_each_share_once(ledger: Ledger) -> None:
    a, b = creds(f"{ADDRESS}.a"), creds(f"{ADDRESS}.b")
    batch = [(share(a), a), (share(b), b), (share(a), a)]
    assert await ledger.on_shares(batch, time.time()) == [True, True, True]
    records = [r for _, r in read_records(ledger.journal_dir)]
    assert [r["worker"] for r in records] == [a.name, b.name, a.name]
    await wait_until(lambda: ledger.aggregates.workers.get(a.name) is not None, "the store")
    await wait_until(lambda: ledger.aggregates.workers[a.name].shares == 2, "a's shares")
    assert ledger.aggregates.workers[b.name].shares == 1


async def test_on_shares_says_not_recorded_when_the_journal_fails(ledger: Ledger) -> None:
    a = creds(f"{ADDRESS}.a")
    await ledger.journal.close()  # nothing can be journaled any more
    assert await ledger.on_shares([(share(a), a), (share(a), a)], time.time()) == [False, False]
    assert ledger.aggregates.workers.get(a.name) is None
