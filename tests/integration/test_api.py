"""The HTTP API on a real pool: two bundled miners on the session's regtest bitcoind.

The API's numbers must agree with the ledger store (exactly) and with what the miners report:
accepted shares per worker exactly (counting the shares a miner sent but stopped before reading
the answer to), hashrate within a Poisson tolerance. Also /metrics (parsed strictly), the
admin endpoints with and without the token, bans, 404/400 answers and /healthz.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from structlog.testing import capture_logs

from pool.api.metrics import CONTENT_TYPE
from pool.api.server import ApiServer
from pool.app import PoolApp
from pool.bitcoin import DIFF1_TARGET, target_to_difficulty
from pool.config import ApiConfig, ChainConfig, LedgerConfig, PortConfig, SimulationConfig
from pool.hashrate import HASHES_PER_DIFF1
from pool.ledger.journal import read_records
from pool.ledger.pps import format_btc
from pool.miner import Miner, MinerOptions
from pool.node.managed import ManagedNode
from pool.node.rpc import BitcoinRpc
from tests.integration.harness import RawClient, pool_config, start_pool, wait_for, wallet_address
from tests.unit.test_metrics import parse_exposition

pytestmark = pytest.mark.integration

TOKEN_ENV = "STRATUM_POOL_TEST_API_TOKEN"
TOKEN = "test-" + secrets.token_hex(16)
DIFFICULTY = 5e-7  # fixed (vardiff off): 2147 hashes per share
RATES = (100_000.0, 200_000.0)  # hashes/s per miner: ~47 and ~93 shares/s
MINING_SECONDS = 20.0
# Blocks stay rare (~0.1 expected), so the PPS credits (~5 BTC) fit the node wallet's funds.
SIM_DIFFICULTY = 0.01
FEE_BPS = 200
REGTEST_HALVING = 150
COIN = 100_000_000


@dataclasses.dataclass
class Mined:
    app: PoolApp
    api: ApiServer
    http: aiohttp.ClientSession
    base: str
    addresses: list[str]
    names: list[str]
    miners: list[Miner]
    summaries: list[dict[str, Any]]
    journal_dir: Path
    # taken while the miners ran
    workers_during: dict[str, Any]
    pool_during: dict[str, Any]
    times: tuple[float, float]
    hashes: list[tuple[int, int]]
    started: dict[str, float]

    @property
    def store(self) -> Any:
        assert self.app.ledger is not None
        return self.app.ledger.store


def api_config(base: Any) -> Any:
    return dataclasses.replace(
        base,
        chain=ChainConfig(
            simulation=SimulationConfig(enabled=True, initial_difficulty=SIM_DIFFICULTY)
        ),
        ledger=LedgerConfig(
            fee_bps=FEE_BPS,
            payout_threshold_sat=1000,
            payout_interval_seconds=0,
            payout_fee_rate_sat_vb=2.0,
            block_check_seconds=1.0,
        ),
        api=ApiConfig(port=0, admin_token_env=TOKEN_ENV),
    )


async def get(m: Mined, path: str, **headers: str) -> tuple[int, Any]:
    async with m.http.get(m.base + path, headers=headers) as resp:
        return resp.status, await resp.json()


async def post(m: Mined, path: str, body: Any = None, token: str | None = TOKEN) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with m.http.post(m.base + path, json=body, headers=headers) as resp:
        return resp.status, await resp.json()


def by_name(workers: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {w["name"]: w for w in workers["workers"]}


@pytest_asyncio.fixture(scope="module")
async def mined(
    regtest_node: ManagedNode, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Mined]:
    """A pool with the API; two miners ran for MINING_SECONDS; the API was read meanwhile."""
    tmp = tmp_path_factory.mktemp("api-pool")
    payout = await wallet_address(regtest_node)
    addresses = [await wallet_address(regtest_node) for _ in range(2)]
    ports = (
        PortConfig(port=0, start_difficulty=DIFFICULTY, min_difficulty=1e-9, max_difficulty=1e6),
    )
    os.environ[TOKEN_ENV] = TOKEN
    app = await start_pool(api_config(pool_config(regtest_node, tmp, payout, ports=ports)))
    api = ApiServer(app, sample_seconds=1.0)
    http = aiohttp.ClientSession()
    try:
        port = await api.start()
        server = app.server
        assert server is not None
        names = [f"{addresses[i]}.rig{i}" for i in range(2)]
        miners = [
            Miner(
                MinerOptions(
                    host="127.0.0.1", port=server.bound_ports[0], user=names[i], hashrate=RATES[i]
                )
            )
            for i in range(2)
        ]
        tasks = [asyncio.create_task(m.run()) for m in miners]
        await wait_for(
            lambda: all(
                n in server.stats.workers and server.stats.workers[n].connections for n in names
            ),
            15,
            "both miners authorized",
        )
        await asyncio.sleep(MINING_SECONDS)
        base = f"http://127.0.0.1:{port}"
        t0, h0 = time.time(), [m.stats.hashes for m in miners]
        async with http.get(base + "/api/workers") as resp:
            workers_during = await resp.json()
        t1, h1 = time.time(), [m.stats.hashes for m in miners]
        async with http.get(base + "/api/pool") as resp:
            pool_during = await resp.json()
        started = {n: meter.started for n in names if (meter := server.hashrate.worker(n))}
        for m in miners:
            m.stopping.set()
        summaries = list(await asyncio.gather(*tasks))
        await wait_for(lambda: not server.sessions, 10, "the pool to close the miners' sessions")
        yield Mined(
            app=app,
            api=api,
            http=http,
            base=base,
            addresses=addresses,
            names=names,
            miners=miners,
            summaries=summaries,
            journal_dir=tmp / "ledger" / "journal",
            workers_during=workers_during,
            pool_during=pool_during,
            times=(t0, t1),
            hashes=list(zip(h0, h1, strict=True)),
            started=started,
        )
    finally:
        await http.close()
        await api.stop()
        await app.stop()
        os.environ.pop(TOKEN_ENV, None)


def journal_identity(record: dict[str, Any]) -> tuple[str, str, str, str]:
    return (record["extranonce"], record["job"], f"{record['ntime']:08x}", f"{record['nonce']:08x}")


def pending_identity(share: dict[str, Any]) -> tuple[str, str, str, str]:
    return (
        share["extranonce1"] + share["extranonce2"],
        share["job_id"],
        share["ntime"],
        share["nonce"],
    )


# -- agreement ----------------------------------------------------------------------------------


async def test_share_counts_agree_exactly_with_the_ledger_and_the_miners(mined: Mined) -> None:
    journal = [rec for _, rec in read_records(mined.journal_dir)]
    in_journal = {journal_identity(r) for r in journal}
    status, workers = await get(mined, "/api/workers")
    assert status == 200 and workers["count"] == 2
    api = by_name(workers)
    for i, name in enumerate(mined.names):
        w = api[name]
        stored = mined.store.worker(name)
        summary = mined.summaries[i]
        # Shares the miner sent but stopped before reading the answer to (it stops reading at
        # once): the pool judged them; those it accepted are in the journal.
        pending = [p for c in mined.miners[i].connections for p in c.pending]
        answered_late = sum(1 for p in pending if pending_identity(p) in in_journal)
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
        balance = mined.store.balance(mined.addresses[i])
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
    totals = mined.store.totals()
    assert pool["chain"] == "regtest"
    assert pool["shares"]["accepted"] == totals["shares"] == pool["ledger"]["shares"]
    assert pool["shares"]["accepted"] == sum(w["shares"]["accepted"] for w in workers["workers"])
    assert pool["shares"]["rejected_total"] == sum(
        w["shares"]["rejected_total"] for w in workers["workers"]
    )
    assert (pool["miners"], pool["workers"]) == (0, 0)
    blocks = mined.store.blocks()
    assert pool["blocks"]["found"] == len(blocks)
    assert pool["blocks"]["pending"] == sum(1 for b in blocks if b["status"] == "pending")
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
    assert pool["luck"]["all"]["found_blocks"] == len(blocks)
    assert pool["luck"]["all"]["expected_blocks"] == pytest.approx(
        totals["shares"] * DIFFICULTY / target_to_difficulty(job.block_target), rel=1e-4
    )


async def test_history_matches_the_ledger_buckets(mined: Mined) -> None:
    status, hist = await get(mined, "/api/pool/history?minutes=10")
    assert status == 200
    points = hist["points"]
    assert sum(p["shares"] for p in points) == mined.store.totals()["shares"]
    for p in points:
        rate = p["difficulty_sum"] * HASHES_PER_DIFF1 / p["seconds"]
        assert p["hashrate"] == pytest.approx(rate, rel=1e-4)  # seconds are rounded to 1 ms
        assert 0 < p["seconds"] <= 60 and p["time"] % 60 == 0
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
    balance = mined.store.balance(address)
    assert page["address"] == address
    assert [w["name"] for w in page["workers"]] == [name]
    assert page["balance_units"] == balance.balance_units
    assert page["credited_units"] == balance.credited_units
    assert page["balance_btc"] == format_btc(balance.balance_units)
    assert set(page["hashrate"]) == {"1m", "5m", "1h"}
    assert page["estimate_per_day"]["value_units"] >= 0


async def test_blocks_endpoint_matches_the_store(mined: Mined) -> None:
    status, body = await get(mined, "/api/blocks?limit=1000")
    assert status == 200
    stored = mined.store.blocks()
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


# -- admin --------------------------------------------------------------------------------------


async def test_admin_needs_the_bearer_token(mined: Mined) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        async with mined.http.get(mined.base + "/api/admin/bans", headers=headers) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            assert TOKEN_ENV in (await resp.json())["error"]
    status, body = await post(mined, "/api/admin/ban", {"ip": "10.1.2.3"}, token="wrong")
    assert status == 401
    assert mined.app.server is not None and not mined.app.server.banned_ips
    status, body = await get(mined, "/api/admin/bans", Authorization=f"Bearer {TOKEN}")
    assert status == 200 and body == {"ips": [], "workers": []}


async def test_admin_is_off_without_a_token(mined: Mined) -> None:
    os.environ.pop(TOKEN_ENV)
    second = ApiServer(mined.app)
    try:
        port = await second.start()
        async with mined.http.post(
            f"http://127.0.0.1:{port}/api/admin/payout", headers={"Authorization": "Bearer x"}
        ) as resp:
            assert resp.status == 403
            body = await resp.json()
        assert "admin endpoints are off" in body["error"] and TOKEN_ENV in body["error"]
    finally:
        os.environ[TOKEN_ENV] = TOKEN
        await second.stop()


async def test_admin_payout_round_and_payouts_endpoint(mined: Mined) -> None:
    status, result = await post(mined, "/api/admin/payout")
    assert status == 200, result
    assert result["status"] in ("paid", "waiting_for_funds"), result
    status, body = await get(mined, "/api/payouts")
    assert status == 200
    stored = mined.store.payouts()
    assert [(p["id"], p["status"], p["total_sat"], p["txid"]) for p in body["payouts"]] == [
        (p["id"], p["status"], p["total_sat"], p["txid"]) for p in stored
    ]
    if result["status"] == "paid":
        assert result["paid"] == {
            a: mined.store.balance(a).paid_units // 1_000_000 for a in mined.addresses
        }
        [payout] = body["payouts"]
        assert payout["id"] == result["payout_id"] and payout["txid"] == result["txid"]
        assert {i["address"]: i["amount_sat"] for i in payout["items"]} == result["paid"]
        for address in mined.addresses:
            _, page = await get(mined, f"/api/addresses/{address}")
            assert page["paid_sat"] == result["paid"][address]
            assert [p["amount_sat"] for p in page["payouts"]] == [result["paid"][address]]
            _, mine = await get(mined, f"/api/payouts?address={address}")
            assert [p["id"] for p in mine["payouts"]] == [result["payout_id"]]


async def test_admin_reconnect_all(mined: Mined) -> None:
    assert mined.app.server is not None
    client = await RawClient.connect(mined.app.server.bound_ports[0])
    try:
        await client.handshake(f"{mined.addresses[0]}.reconnect")
        status, body = await post(mined, "/api/admin/reconnect", {"wait": 0})
        assert status == 200 and body["reconnected"] >= 1
        msg = await client.notification("client.reconnect")
        assert msg["params"][2] == 0
        with pytest.raises(ConnectionError):
            await client.next_message(timeout=5)
    finally:
        await client.close()
    for bad in ({"wait": -1}, {"wait": "soon"}, {"wait": 1.5}, [1]):
        status, body = await post(mined, "/api/admin/reconnect", bad)
        assert status == 400, (bad, body)


async def authorize(port: int, user: str) -> tuple[RawClient, dict[str, Any]]:
    client = await RawClient.connect(port)
    client.send(1, "mining.subscribe", ["test-client/1"])
    await client.response(1)
    client.send(2, "mining.authorize", [user, "x"])
    return client, await client.response(2)


async def test_bans(mined: Mined) -> None:
    server = mined.app.server
    assert server is not None
    port = server.bound_ports[0]
    address = mined.addresses[1]
    name = f"{address}.banme"
    try:
        # a worker: its live connection is dropped, a new authorize is refused
        client = await RawClient.connect(port)
        await client.handshake(name)
        status, body = await post(mined, "/api/admin/ban", {"worker": name})
        assert status == 200 and body["dropped"] == 1 and body["workers"] == [name]
        with pytest.raises(ConnectionError):
            await client.next_message(timeout=5)
        refused, reply = await authorize(port, name)
        assert reply["result"] is not True
        assert reply["error"][0] == 24 and f"worker {name} is banned" in reply["error"][1]
        other, reply = await authorize(port, f"{address}.other")  # the address's other workers
        assert reply["result"] is True
        for c in (refused, other):
            await c.close()
        status, body = await post(mined, "/api/admin/unban", {"worker": name})
        assert status == 200 and body["workers"] == []
        again, reply = await authorize(port, name)
        assert reply["result"] is True
        await again.close()
        # a bare address bans all its workers
        status, body = await post(mined, "/api/admin/ban", {"worker": address})
        assert status == 200
        refused, reply = await authorize(port, f"{address}.any")
        assert reply["error"][0] == 24
        await refused.close()
        assert (await post(mined, "/api/admin/unban", {"worker": address}))[0] == 200
        # an IP: live connections dropped, new ones refused at accept (with a log line)
        client = await RawClient.connect(port)
        await client.handshake(f"{address}.ip")
        status, body = await post(mined, "/api/admin/ban", {"ip": "127.0.0.1"})
        assert status == 200 and body["dropped"] >= 1 and body["ips"] == ["127.0.0.1"]
        with pytest.raises(ConnectionError):
            await client.next_message(timeout=5)
        with capture_logs() as logs:
            refused = await RawClient.connect(port)
            with pytest.raises(ConnectionError):
                await refused.next_message(timeout=5)
        assert {
            "event": "connection_refused",
            "peer": "127.0.0.1",
            "reason": "banned IP",
        }.items() <= next(e for e in logs if e["event"] == "connection_refused").items()
        status, body = await post(mined, "/api/admin/unban", {"ip": "127.0.0.1"})
        assert status == 200 and body["ips"] == []
        client, reply = await authorize(port, f"{address}.ip")
        assert reply["result"] is True
        await client.close()
    finally:
        server.banned_ips.clear()
        server.banned_workers.clear()


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("/api/admin/ban", {"ip": "300.1.2.3"}, 400, "not an IP address"),
        ("/api/admin/ban", {"worker": "nope.rig"}, 400, "not a worker name"),
        ("/api/admin/ban", {}, 400, "the body must be"),
        ("/api/admin/ban", {"ip": "10.0.0.1", "worker": "x"}, 400, "the body must be"),
        ("/api/admin/ban", {"ip": 5}, 400, "must be a string"),
        ("/api/admin/ban", [1, 2], 400, "JSON object"),
        ("/api/admin/unban", {"ip": "10.9.9.9"}, 404, "not banned"),
    ],
)
async def test_ban_input_errors(
    mined: Mined, path: str, body: Any, status: int, words: str
) -> None:
    got, answer = await post(mined, path, body)
    assert got == status and words in answer["error"], answer


async def test_ban_body_must_be_json(mined: Mined) -> None:
    async with mined.http.post(
        mined.base + "/api/admin/ban",
        data=b"{not json",
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as resp:
        assert resp.status == 400 and "not JSON" in (await resp.json())["error"]


# -- /healthz -----------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_healthz(regtest_node: ManagedNode, tmp_path: Path) -> None:
    payout = await wallet_address(regtest_node)
    app = await start_pool(api_config(pool_config(regtest_node, tmp_path, payout)))
    api = ApiServer(app)
    try:
        port = await api.start()
        url = f"http://127.0.0.1:{port}/healthz"
        async with aiohttp.ClientSession() as http:
            async with http.get(url) as resp:
                body = await resp.json()
                assert resp.status == 200, body
            assert body["status"] == "ok" and body["reasons"] == []
            assert body["checks"]["bitcoind"]["ok"] and body["checks"]["job"]["ok"]
            # bitcoind unreachable
            real, app.rpc = (
                app.rpc,
                BitcoinRpc(f"http://127.0.0.1:{closed_port()}/", user="u", password="p"),
            )
            try:
                async with http.get(url) as resp:
                    body = await resp.json()
                    assert resp.status == 503, body
                assert body["status"] == "unhealthy"
                assert [r for r in body["reasons"] if r.startswith("bitcoind does not answer")]
            finally:
                assert app.rpc is not None
                await app.rpc.close()
                app.rpc = real
            # the template watcher dies
            task = app._watch_task
            assert task is not None
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            async with http.get(url) as resp:
                body = await resp.json()
                assert resp.status == 503, body
            assert body["reasons"] == ["the template watcher is not running (cancelled)"]
            assert body["checks"]["bitcoind"]["ok"] and not body["checks"]["template_watcher"]["ok"]
    finally:
        await api.stop()
        await app.stop()
