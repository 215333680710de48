"""The HTTP API on a real pool: two bundled miners on the session's regtest bitcoind.

The API's numbers must agree with the ledger store (exactly) and with what the miners report:
accepted shares per worker exactly (counting the shares a miner sent but stopped before reading
the answer to), hashrate within a Poisson tolerance. Also /metrics (parsed strictly) and the
404/400 answers. Admin endpoints and /healthz: ``test_api_admin.py``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from fractions import Fraction

import pytest
import pytest_asyncio

from pool.api.metrics import CONTENT_TYPE
from pool.bitcoin import DIFF1_TARGET, target_to_difficulty
from pool.hashrate import HASHES_PER_DIFF1
from pool.ledger.journal_read import read_records
from pool.ledger.pps import format_btc
from pool.ledger.store import Store
from pool.node.managed import ManagedNode
from tests.integration.api_harness import (
    COIN,
    DIFFICULTY,
    FEE_BPS,
    MINING_SECONDS,
    REGTEST_HALVING,
    SIM_DIFFICULTY,
    Mined,
    by_name,
    get,
    mined_pool,
)
from tests.integration.harness import journal_identity, miner_share_identity, wallet_address
from tests.unit.test_metrics import parse_exposition

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(scope="module")
async def mined(
    regtest_node: ManagedNode, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Mined]:
    async with mined_pool(regtest_node, tmp_path_factory.mktemp("api-pool")) as m:
        yield m


# -- agreement ----------------------------------------------------------------------------------


async def test_share_counts_agree_exactly_with_the_ledger_and_the_miners(mined: Mined) -> None:
    journal = [rec for _, rec in read_records(mined.journal_dir)]
    in_journal = {journal_identity(r) for r in journal}
    status, workers = await get(mined, "/api/workers")
    assert status == 200 and workers["count"] == workers["total"] == 2
    assert workers["next_offset"] is None
    api = by_name(workers)
    for i, name in enumerate(mined.names):
        w = api[name]
        stored = await mined.stored(Store.worker, name)
        summary = mined.summaries[i]
        # Shares the miner sent but stopped before reading the answer to (it stops reading at
        # once): the pool judged them; those it accepted are in the journal.
        pending = [p for c in mined.miners[i].connections for p in c.pending]
        answered_late = sum(1 for p in pending if miner_share_identity(p) in in_journal)
        accepted = w["shares"]["accepted"]
        assert accepted == summary["accepted"] + answered_late, (summary, len(pending))
        assert accepted == stored["shares"] == w["ledger"]["shares"]
        assert accepted == sum(1 for r in journal if r["worker"] == name)
        assert accepted > 300, "too few shares for the hashrate check"
        rejected = w["shares"]["rejected_total"]
        assert summary["rejected"] <= rejected <= summary["rejected"] + len(pending) - answered_late
        assert rejected == sum(w["shares"]["rejected"].values())
        # the sum of accepted difficulty: the store's and the miner's (fixed difficulty)
        assert w["shares"]["accepted_difficulty"] == pytest.approx(
            stored["difficulty_sum"], rel=1e-12
        )
        assert w["shares"]["accepted_difficulty"] == pytest.approx(
            summary["accepted_work"] + answered_late * DIFFICULTY, rel=1e-9
        )
        assert w["ledger"]["difficulty_sum"] == stored["difficulty_sum"]
        assert w["difficulty"] == DIFFICULTY
        assert w["last_share"] == stored["last_share"]
        assert (w["address"], w["worker"]) == (mined.addresses[i], f"rig{i}")
        assert not w["online"] and w["connections"] == 0
        # money: exact units, whole satoshis and the exact BTC string
        balance = await mined.stored(Store.balance, mined.addresses[i])
        assert w["balance"]["balance_units"] == balance.balance_units > 0
        assert w["balance"]["balance_sat"] == balance.balance_units // 1_000_000
        assert w["balance"]["balance_btc"] == format_btc(balance.balance_units)
        assert w["ledger"]["earned_units"] == stored["credit_units"] == balance.credited_units
        # the single-worker endpoint says the same
        status, one = await get(mined, f"/api/workers/{name}")
        assert status == 200
        one.pop("time")
        rates = one.pop("hashrate")  # read a moment later: the windows moved on
        assert rates == pytest.approx(w["hashrate"], rel=0.01)
        assert one == {k: v for k, v in w.items() if k != "hashrate"}


async def test_hashrate_agrees_with_the_miners(mined: Mined) -> None:
    """The pool's estimate, read while the miners ran, against the hashes they really did.

    Each accepted share stands for DIFFICULTY * 2^32 hashes on average; with n shares in the
    window the estimate's relative standard deviation is 1/sqrt(n) (Poisson; ~930 and ~1860
    shares here: 3.3 % and 2.3 %). The bound is 4.5 standard deviations (a correct pool fails
    less than once in 10 000 runs for both workers and the pool together) plus 3 % for timing
    (the meter starts at authorize, the miner's first hashes a moment later; shares in flight).
    """
    during = by_name(mined.workers_during)
    t_mid = sum(mined.times) / 2
    total_hashes = 0.0
    for i, name in enumerate(mined.names):
        hashes = sum(mined.hashes[i]) / 2
        total_hashes += hashes
        true_rate = hashes / (t_mid - mined.started[name])
        w = during[name]
        shares = w["shares"]["accepted"]
        tolerance = 4.5 / math.sqrt(shares) + 0.03
        for window in ("1m", "5m", "1h"):
            ratio = w["hashrate"][window] / true_rate
            assert abs(ratio - 1) < tolerance, (name, window, ratio, tolerance, true_rate)
        assert w["online"] and w["connections"] == 1
    assert mined.app.server is not None
    pool_started = mined.app.server.hashrate.pool.started
    pool = mined.pool_during
    shares = pool["shares"]["accepted"]
    ratio = pool["hashrate"]["1m"] / (total_hashes / (t_mid - pool_started))
    assert abs(ratio - 1) < 4.5 / math.sqrt(shares) + 0.03, ratio
    assert pool["miners"] == 2 and pool["workers"] == 2


async def test_pool_endpoint_agrees_with_the_ledger(mined: Mined) -> None:
    app = mined.app
    assert app.server is not None and app.ledger is not None and app.network is not None
    status, pool = await get(mined, "/api/pool")
    assert status == 200
    _, workers = await get(mined, "/api/workers")
    totals = await mined.stored(Store.totals)
    assert pool["chain"] == "regtest"
    assert pool["shares"]["accepted"] == totals["shares"] == pool["ledger"]["shares"]
    assert pool["shares"]["accepted"] == sum(w["shares"]["accepted"] for w in workers["workers"])
    assert pool["shares"]["rejected_total"] == sum(
        w["shares"]["rejected_total"] for w in workers["workers"]
    )
    assert (pool["miners"], pool["workers"]) == (0, 0)
    blocks = await mined.stored(Store.blocks)
    found = [b for b in blocks if b["status"] != "rejected"]  # refused blocks are not found
    assert pool["blocks"]["found"] == len(found)
    for status in ("pending", "confirmed", "orphaned", "rejected"):
        assert pool["blocks"][status] == sum(1 for b in blocks if b["status"] == status)
    assert pool["blocks"]["submitted"] == len(app.server.stats.blocks)
    job = app.server.jobs.current
    assert job is not None
    net = pool["network"]
    assert net["height"] == job.height
    assert net["difficulty"] == target_to_difficulty(job.template.target)
    assert net["block_difficulty"] == target_to_difficulty(job.block_target)
    assert net["simulated"]["difficulty"] == pytest.approx(SIM_DIFFICULTY, rel=1e-5)
    # the PPS rate (a difficulty-1 share's credit, uncapped), recomputed from the job
    subsidy = (50 * COIN) >> (job.height // REGTEST_HALVING)
    exact = Fraction(
        job.block_target * subsidy * 1_000_000 * (10_000 - FEE_BPS), 10_000 * DIFF1_TARGET
    )
    pps = pool["pps"]
    assert pps["value_units"] == exact.numerator // exact.denominator
    assert pps["value_btc"] == format_btc(pps["value_units"])
    assert pps["capped"] is True  # D = 0.01: a difficulty-1 share would be a block itself
    assert (pps["scheme"], pps["fee_bps"], pps["block_value_sat"]) == ("pps", FEE_BPS, subsidy)
    reserve = app.ledger.reserve()
    assert pool["reserve"]["reserve_units"] == reserve.reserve_units
    assert pool["reserve"]["credits_units"] == reserve.credits_units == totals["credit_units"]
    assert pool["reserve"]["fees_units"] == reserve.fees_units
    assert pool["luck"]["all"]["found_blocks"] == len(found)
    assert pool["luck"]["all"]["expected_blocks"] == pytest.approx(
        totals["shares"] * DIFFICULTY / target_to_difficulty(job.block_target), rel=1e-4
    )


async def test_history_matches_the_ledger_buckets(mined: Mined) -> None:
    status, hist = await get(mined, "/api/pool/history?minutes=10")
    assert status == 200
    points = hist["points"]
    assert sum(p["shares"] for p in points) == (await mined.stored(Store.totals))["shares"]
    for p in points:
        assert 0 <= p["seconds"] <= 60 and p["time"] % 60 == 0
        if p["hashrate"] is None:  # a minute seen for a few seconds only: shares, no rate
            assert p["seconds"] < 5 and p["shares"] > 0 and p["partial"]
            continue
        rate = p["difficulty_sum"] * HASHES_PER_DIFF1 / p["seconds"]
        assert p["hashrate"] == pytest.approx(rate, rel=1e-4)  # seconds are rounded to 1 ms
    times = [s["time"] for s in hist["samples"]]
    assert len(times) >= MINING_SECONDS / 2 and times == sorted(times)
    assert max(s["hashrate"] for s in hist["samples"]) > 0
    for name, address in zip(mined.names, mined.addresses, strict=True):
        _, worker = await get(mined, f"/api/workers/{name}")
        for query in (f"worker={name}", f"address={address}"):
            _, h = await get(mined, f"/api/pool/history?minutes=10&{query}")
            assert sum(p["shares"] for p in h["points"]) == worker["ledger"]["shares"]
            assert h["samples"] == []


async def test_address_page_data(mined: Mined) -> None:
    address, name = mined.addresses[0], mined.names[0]
    status, page = await get(mined, f"/api/addresses/{address}")
    assert status == 200
    balance = await mined.stored(Store.balance, address)
    assert page["address"] == address
    assert [w["name"] for w in page["workers"]] == [name] and page["workers_total"] == 1
    assert page["balance_units"] == balance.balance_units
    assert page["credited_units"] == balance.credited_units
    assert page["balance_btc"] == format_btc(balance.balance_units)
    assert set(page["hashrate"]) == {"1m", "5m", "1h"}
    assert page["estimate_per_day"]["value_units"] >= 0


async def test_workers_are_paged_in_name_order(mined: Mined) -> None:
    first_name, second_name = sorted(mined.names)
    status, first = await get(mined, "/api/workers?limit=1")
    assert status == 200
    assert (first["total"], first["count"], first["offset"], first["limit"]) == (2, 1, 0, 1)
    assert [w["name"] for w in first["workers"]] == [first_name]
    assert first["next_offset"] == 1
    _, second = await get(mined, f"/api/workers?limit=1&offset={first['next_offset']}")
    assert [w["name"] for w in second["workers"]] == [second_name]
    assert second["next_offset"] is None and second["total"] == 2
    _, beyond = await get(mined, "/api/workers?offset=5")
    assert (beyond["count"], beyond["workers"], beyond["next_offset"]) == (0, [], None)
    _, default = await get(mined, "/api/workers")
    assert default["limit"] == 100 and [w["name"] for w in default["workers"]] == sorted(
        mined.names
    )


async def test_blocks_endpoint_matches_the_store(mined: Mined) -> None:
    status, body = await get(mined, "/api/blocks?limit=1000")
    assert status == 200
    stored = await mined.stored(Store.blocks)
    assert [
        (b["hash"], b["height"], b["status"], b["reward_sat"], b["worker"]) for b in body["blocks"]
    ] == [(b["hash"], b["height"], b["status"], b["reward_sat"], b["worker"]) for b in stored]
    assert mined.app.server is not None
    assert len(body["submissions"]) == len(mined.app.server.stats.blocks)


# -- /metrics -----------------------------------------------------------------------------------


async def test_metrics_parse_and_agree(mined: Mined) -> None:
    async with mined.http.get(mined.base + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == CONTENT_TYPE
        text = await resp.text()
    families = parse_exposition(text)
    for fam in families.values():
        assert fam.help, fam.name
        assert fam.type in ("counter", "gauge"), fam.name
        if fam.type == "counter":
            assert fam.name.endswith("_total"), fam.name
            assert all(v >= 0 for _, _, v in fam.samples), fam.name
    _, pool = await get(mined, "/api/pool")

    def value(name: str, **labels: str) -> float:
        return families["stratum_pool_" + name].value(**labels)

    def labels(name: str, key: str) -> set[str]:
        return {lab[key] for _, lab, _ in families["stratum_pool_" + name].samples}

    shares, reserve = pool["shares"], pool["reserve"]
    assert value("shares_total", result="accepted") == shares["accepted"]
    assert value("shares_total", result="rejected") == shares["rejected_total"]
    rejected = families["stratum_pool_shares_rejected_total"].samples
    assert sum(v for _, _, v in rejected) == shares["rejected_total"]
    for name in mined.names:
        _, w = await get(mined, f"/api/workers/{name}")
        assert (
            value("worker_shares_total", worker=name, result="accepted") == w["shares"]["accepted"]
        )
    assert labels("worker_hashrate_hashes_per_second", "window") == {"1m", "5m", "1h"}
    assert labels("bitcoind_rpc_errors_total", "kind") == {"refused", "unavailable", "auth"}
    close = [
        ("accepted_difficulty_total", shares["accepted_difficulty"]),
        ("simulated_difficulty", SIM_DIFFICULTY),
        ("pps_value_per_difficulty_satoshis", pool["pps"]["value_units"] / 1e6),
        ("reserve_satoshis", reserve["reserve_units"] / 1e6),
    ]
    for name, expected in close:
        assert value(name) == pytest.approx(expected, rel=1e-5), name
    assert (value("connections"), value("template_watcher_up")) == (0, 1)
    assert value("blocks", status="pending") == pool["blocks"]["pending"]
    assert value("height") == pool["network"]["height"]
    assert value("bitcoind_rpc_calls_total") > 0 and value("bitcoind_rpc_latency_seconds_total") > 0
    for window in ("1m", "5m", "1h"):
        rate = value("hashrate_hashes_per_second", window=window)
        assert rate == pytest.approx(pool["hashrate"][window], rel=0.05)


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "words"),
    [
        ("/api/workers/{address}.nosuch", 404, "unknown worker: {address}.nosuch"),
        ("/api/workers/notanaddress.rig", 400, "not a worker name"),
        ("/api/workers/{address}.bad!name", 400, "worker name"),
        ("/api/addresses/{fresh}", 404, "unknown address: {fresh}"),
        ("/api/addresses/1BoatSLRHtKNngkdXEeobR76b53LETtpyT", 400, "not a valid regtest address"),
        ("/api/addresses/garbage", 400, "not a valid regtest address"),
        ("/api/blocks?limit=abc", 400, "limit must be a whole number"),
        ("/api/blocks?limit=0", 400, "limit must be 1..1000"),
        ("/api/payouts?limit=5000", 400, "limit must be 1..1000"),
        ("/api/workers?limit=1001", 400, "limit must be 1..1000"),
        ("/api/workers?limit=0", 400, "limit must be 1..1000"),
        ("/api/workers?offset=-1", 400, "offset must be 0.."),
        ("/api/workers?offset=x", 400, "offset must be a whole number"),
        ("/api/addresses/{address}?limit=0", 400, "limit must be 1..1000"),
        ("/api/payouts?address=nope", 400, "not a valid regtest address"),
        ("/api/pool/history?minutes=0", 400, "minutes must be"),
        ("/api/pool/history?worker={address}&address={address}", 400, "not both"),
        ("/api/nothing", 404, "no such endpoint: GET /api/nothing"),
    ],
)
async def test_bad_input_and_unknown_names(
    mined: Mined, regtest_node: ManagedNode, path: str, status: int, words: str
) -> None:
    fresh = await wallet_address(regtest_node)
    values = {"address": mined.addresses[0], "fresh": fresh}
    got, body = await get(mined, path.format(**values))
    assert got == status, body
    assert body["status"] == status
    assert words.format(**values) in body["error"]


async def test_wrong_method_is_json(mined: Mined) -> None:
    async with mined.http.post(mined.base + "/api/pool") as resp:
        assert resp.status == 405
        assert "method not allowed" in (await resp.json())["error"]
