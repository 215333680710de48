"""Found blocks are kept on disk until bitcoind settles them: a pool that stops while bitcoind
is away submits them at its next start (real regtest bitcoind, real files)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pool.jobs import build_job
from pool.node.managed import ManagedNode, free_port
from pool.node.rpc import BitcoinRpc, RetryPolicy
from pool.node.spool import BlockSpool, block_hash_of
from pool.node.submit import BlockSubmitter
from tests.integration.harness import wait_for
from tests.integration.test_blocks import EXTRANONCE, payout_config, solve, template

pytestmark = pytest.mark.integration


async def test_a_block_left_unsettled_is_submitted_at_the_next_start(
    regtest_node: ManagedNode, tmp_path: Path
) -> None:
    rpc = regtest_node.rpc
    assert rpc is not None
    config = await payout_config(rpc, "spool")
    job = build_job(await template(rpc), config, job_id="1", now=0.0, clean=True)
    nonce = solve(job)
    block = job.block(EXTRANONCE, job.ntime, nonce, job.version)
    block_hash = block_hash_of(block)
    assert block_hash == job.block_hash_hex(EXTRANONCE, job.ntime, nonce, job.version)
    spool = BlockSpool(tmp_path / "blocks")

    # bitcoind unreachable: the block is retried, kept on disk, and still there after the stop
    away = BitcoinRpc(
        f"http://127.0.0.1:{free_port()}/",
        user="u",
        password="p",
        retry=RetryPolicy(give_up_after=0.0),
    )
    first = BlockSubmitter(away, retry_initial=0.05, retry_max=0.2, spool=spool)
    task = asyncio.create_task(first.submit(block, block_hash=block_hash, height=job.height))
    await wait_for(lambda: first.retries >= 2, 30, "two retries of an unreachable node")
    assert [b.block_hash for b in spool.load()] == [block_hash]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await away.close()
    [kept] = spool.load()
    assert (kept.height, kept.block) == (job.height, block)

    # the next start: submitted to the real node, accepted, and the file is gone
    second = BlockSubmitter(rpc, retry_initial=0.05, retry_max=0.2, spool=spool)
    assert second.resume_spooled() == 1
    await wait_for(
        lambda: not list((tmp_path / "blocks").glob("*.block")), 60, "the spool file removed"
    )
    header = await rpc.call("getblockheader", block_hash, True)
    assert header["height"] == job.height and header["confirmations"] >= 1
    assert second.resume_spooled() == 0
    await second.close()


def test_a_damaged_spool_file_is_set_aside_not_submitted(tmp_path: Path) -> None:
    spool = BlockSpool(tmp_path)
    block = bytes(range(200))
    good = block_hash_of(block)
    assert spool.keep(7, good, block)
    (tmp_path / f"8-{'ab' * 32}.block").write_bytes(block)  # name and header disagree
    (tmp_path / "x-y.block").write_bytes(block)  # no height
    [loaded] = spool.load()
    assert (loaded.height, loaded.block_hash, loaded.block) == (7, good, block)
    assert sorted(p.name for p in tmp_path.glob("*.bad")) == [f"8-{'ab' * 32}.bad", "x-y.bad"]
    spool.drop(7, good)
    assert spool.load() == []
