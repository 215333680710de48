"""SOLO jobs: the coinbase builder (outputs, fee rounding, witness commitment kept), the
per-port cache of SOLO jobs, and the connection core on a SOLO port (pure, no loop)."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from pool.bitcoin import REGTEST, address_to_script, sha256d
from pool.bitcoin.address import encode_segwit
from pool.bitcoin.tx import TxOut, build_coinbase
from pool.config import ConfigError, limits_summary, load
from pool.jobs import Job, JobTable, solo_job, solo_outputs
from pool.server.core import CoreSettings, PoolConnection, ShareEvent
from pool.server.solo import SoloJobs
from stratum.notifications import encode_notification
from tests.unit.test_jobs import CONFIG
from tests.unit.test_pool_connection import (
    ADDR,
    NOW,
    line,
    make_job,
    messages,
    setup,
    submit,
)

OTHER = encode_segwit("bcrt", 0, bytes(range(20)))  # a second regtest address
OTHER_SCRIPT = address_to_script(OTHER, REGTEST)
MINER_SCRIPT = address_to_script(ADDR, REGTEST)


def read_outputs(tx: bytes) -> list[tuple[int, bytes]]:
    """The outputs of a non-witness transaction with one input (an independent parser)."""
    pos = 4 + 1 + 36  # version, input count, prevout
    script_len = tx[pos]
    pos += 1 + script_len + 4  # scriptSig, sequence
    count = tx[pos]
    pos += 1
    outs = []
    for _ in range(count):
        value = int.from_bytes(tx[pos : pos + 8], "little")
        n = tx[pos + 8]
        outs.append((value, tx[pos + 9 : pos + 9 + n]))
        pos += 9 + n
    assert tx[pos:] == bytes(4)  # locktime, nothing after it
    return outs


def test_solo_outputs_fee_rounds_down_and_sums_to_the_reward() -> None:
    value = 5_000_012_345
    outs = solo_outputs(value, MINER_SCRIPT, OTHER_SCRIPT, 150)
    fee = value * 150 // 10_000
    assert outs == [TxOut(value - fee, MINER_SCRIPT), TxOut(fee, OTHER_SCRIPT)]
    assert sum(o.value for o in outs) == value
    # a fee that rounds to 0 satoshis: no fee output at all
    assert solo_outputs(66, MINER_SCRIPT, OTHER_SCRIPT, 150) == [TxOut(66, MINER_SCRIPT)]
    assert solo_outputs(value, MINER_SCRIPT, OTHER_SCRIPT, 0) == [TxOut(value, MINER_SCRIPT)]
    # all of it to the pool: the miner's output is 0 satoshis (still there, still valid)
    assert solo_outputs(value, MINER_SCRIPT, OTHER_SCRIPT, 10_000)[0].value == 0
    for bad in (-1, 10_001):
        with pytest.raises(ValueError, match="basis points"):
            solo_outputs(value, MINER_SCRIPT, OTHER_SCRIPT, bad)


def _base_job(table: JobTable | None = None) -> Job:
    return make_job(table if table is not None else JobTable(max_jobs=4, seed=1))


def test_solo_job_pays_the_miner_keeps_coinb1_and_the_witness_commitment() -> None:
    base = _base_job()
    job = solo_job(base, OTHER_SCRIPT, fee_bps=200)
    assert job.job_id == base.job_id and job.base is base and job.template is base.template
    assert job.coinb1 == base.coinb1 and job.coinb2 != base.coinb2
    assert job.merkle_branch == base.merkle_branch and job.block_target == base.block_target
    en = bytes(8)
    outs = read_outputs(job.coinbase.tx(en))
    value = base.template.coinbase_value
    fee = value * 200 // 10_000
    commitment = base.template.witness_commitment
    assert commitment is not None
    assert outs == [(value - fee, OTHER_SCRIPT), (fee, CONFIG.payout_script), (0, commitment)]
    # the same bytes as a coinbase built from scratch with those outputs
    fresh = build_coinbase(
        height=base.height,
        outputs=[TxOut(value - fee, OTHER_SCRIPT), TxOut(fee, CONFIG.payout_script)],
        extranonce_size=CONFIG.extranonce_size,
        pool_tag=CONFIG.pool_tag,
        witness_commitment=commitment,
    )
    assert (fresh.coinb1, fresh.coinb2) == (job.coinb1, job.coinb2)
    # the hot path hashes the SOLO coinbase, and the block carries it in witness form
    assert job.header_hash(en, job.ntime, 7, job.version) == sha256d(
        job.header(en, job.ntime, 7, job.version)
    )
    assert job.header_hash(en, job.ntime, 7, job.version) != base.header_hash(
        en, job.ntime, 7, base.version
    )
    block = job.block(en, job.ntime, 7, job.version)
    assert job.coinbase.tx_with_witness(en) in block
    with pytest.raises(ValueError, match="pool's own job"):
        solo_job(job, MINER_SCRIPT)


def test_solo_jobs_one_per_job_and_script_pruned_with_their_job() -> None:
    table = JobTable(max_jobs=4, seed=1)
    first = _base_job(table)
    solo = SoloJobs(table, fee_bps=0)
    a1, n1 = solo.get(first, MINER_SCRIPT)
    a2, n2 = solo.get(first, MINER_SCRIPT)
    b1, nb = solo.get(first, OTHER_SCRIPT)
    assert n1 is not None and nb is not None
    assert a1 is a2 and n1 is n2 and solo.built == 2 and len(solo) == 2
    assert b1.coinb2 != a1.coinb2 and nb[1] != n1[1]
    assert json.loads(n1[1])["params"][3] == a1.coinb2.hex()
    # the line made by replacing coinb2 in the pool job's line is the encoding of the event
    assert n1[1] == encode_notification(n1[0]) and nb[1] == encode_notification(nb[0])
    assert n1[0].coinb1 == first.coinb1.hex() and n1[0].job_id == first.job_id
    newer = make_job(table, clean=False)  # the first stays live, its lines are dropped
    _, n_newer = solo.get(newer, MINER_SCRIPT)
    assert n_newer is not None and len(solo) == 3
    kept, dropped = solo.get(first, MINER_SCRIPT)
    assert kept is a1 and dropped is None  # the job itself is kept (shares of it validate)
    second = make_job(table, clean=True)  # retires both
    solo.get(second, MINER_SCRIPT)
    assert len(solo) == 1 and solo.built == 4


def solo_settings(core: PoolConnection, solo: SoloJobs) -> CoreSettings:
    return dataclasses.replace(core.settings, scheme="solo", solo=solo)


def _login(core: PoolConnection, user: str) -> list[dict[str, Any]]:
    data = line(1, "mining.subscribe", []) + line(2, "mining.authorize", [user, "x"])
    items, _ = core.receive_data(data, NOW)
    return messages(items)


def test_solo_port_miners_get_jobs_paying_their_own_address_and_shares_validate() -> None:
    core0, ctx, base = setup()
    settings = solo_settings(core0, SoloJobs(ctx.jobs))
    mine = PoolConnection(ctx, settings, conn_id=2, extranonce1=b"\x00\x00\x00\x02", now=NOW)
    other = PoolConnection(ctx, settings, conn_id=3, extranonce1=b"\x00\x00\x00\x03", now=NOW)
    twin = PoolConnection(ctx, settings, conn_id=4, extranonce1=b"\x00\x00\x00\x04", now=NOW)
    n_mine = _login(mine, f"{ADDR}.a")[-1]
    n_other = _login(other, f"{OTHER}.b")[-1]
    n_twin = _login(twin, ADDR)[-1]
    assert n_mine["method"] == "mining.notify" and n_mine["params"][0] == base.job_id
    assert n_mine["params"][2] == n_other["params"][2]  # coinb1: the same
    assert n_mine["params"][3] != n_other["params"][3]  # coinb2: each pays its own address
    assert n_mine["params"][3] == n_twin["params"][3]
    assert n_other["params"][3] != base.coinb2.hex()  # (the pool's own jobs pay ADDR too)
    outs = read_outputs(bytes.fromhex(n_other["params"][2] + "00" * 8 + n_other["params"][3]))
    assert outs[0] == (base.template.coinbase_value, OTHER_SCRIPT)
    # a new difficulty resends the current job under a new id: still the SOLO coinbase
    items, _ = other.receive_data(line(4, "mining.suggest_difficulty", [0.5]), NOW)
    resent = [m for m in messages(items) if m.get("method") == "mining.notify"]
    assert resent and resent[0]["params"][0] != base.job_id
    assert resent[0]["params"][3] == n_other["params"][3]
    # a second worker of the same address is welcome; one of another address is refused
    items, _ = mine.receive_data(line(5, "mining.authorize", [f"{ADDR}.c", "x"]), NOW)
    assert messages(items)[0]["result"] is True
    items, _ = mine.receive_data(line(6, "mining.authorize", [f"{OTHER}.d", "x"]), NOW)
    refused = messages(items)[0]
    assert refused["error"][0] == 24 and "SOLO port" in refused["error"][1]
    assert ADDR in refused["error"][1]
    # a share is judged against the SOLO coinbase the miner was sent
    items, shares = other.receive_data(submit(base.job_id, 9, worker=f"{OTHER}.b"), NOW)
    assert shares == 1
    event = items[0]
    assert isinstance(event, ShareEvent)
    job = event.result.job
    assert job is not None and job.base is base and job.coinb2.hex() == n_other["params"][3]
    extranonce = b"\x00\x00\x00\x03" + bytes.fromhex("00000001")
    expected = job.header_hash(extranonce, event.result.ntime, 9, job.version)
    assert event.result.hash_hex == expected[::-1].hex()
    # a new block: the SOLO jobs of the old one are stale
    fresh = make_job(ctx.jobs, clean=True)
    notify = (None, b"")  # broadcast replaces it by the SOLO job's own notify
    data = other.broadcast_job(fresh, notify, NOW)  # type: ignore[arg-type]
    sent = messages([data])[-1]
    assert sent["params"][0] == fresh.job_id and sent["params"][3] == n_other["params"][3]
    items, _ = other.receive_data(submit(base.job_id, 10, worker=f"{OTHER}.b", id=11), NOW)
    assert messages(items)[0]["error"][0] == 21


def test_pps_port_beside_keeps_the_pool_job() -> None:
    core, _, base = setup()
    msgs = _login(core, f"{ADDR}.p")
    assert msgs[-1]["params"][3] == base.coinb2.hex()


def test_fan_out_builds_one_solo_job_per_distinct_address() -> None:
    """1 000 SOLO connections over 10 addresses: 10 SOLO jobs per new job, one line each."""
    core0, ctx, _ = setup()
    solo = SoloJobs(ctx.jobs)
    settings = solo_settings(core0, solo)
    addresses = [encode_segwit("bcrt", 0, bytes([i + 1]) * 20) for i in range(10)]
    cores = []
    for i in range(1000):
        c = PoolConnection(ctx, settings, conn_id=i, extranonce1=i.to_bytes(4, "big"), now=NOW)
        _login(c, addresses[i % 10])
        cores.append(c)
    assert solo.built == 10
    fresh = make_job(ctx.jobs, clean=True)
    started = time.perf_counter()
    datas = [c.broadcast_job(fresh, (None, b""), NOW) for c in cores]  # type: ignore[arg-type]
    elapsed = time.perf_counter() - started
    assert solo.built == 20 and all(datas)
    assert len({d for d in datas}) == 10
    print(f"fan-out to 1000 SOLO connections, 10 addresses: {elapsed * 1e3:.2f} ms")


@pytest.mark.parametrize(
    ("port", "message"),
    [
        ('scheme = "solo2"', "stratum.ports[0].scheme must be one of"),
        ('scheme = "solo"\nsolo_fee_bps = 10001', "stratum.ports[0].solo_fee_bps must be 0..10000"),
        ('scheme = "solo"\nsolo_fee_bps = -1', "stratum.ports[0].solo_fee_bps must be 0..10000"),
        ("solo_fee_bps = 100", 'solo_fee_bps applies to scheme = "solo" ports only'),
    ],
)
def test_port_scheme_and_solo_fee_are_validated(port: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "pool.toml"
    path.write_text(f"[[stratum.ports]]\nport = 3333\n{port}\n")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(path, env={})


def test_solo_port_loads_and_its_fee_is_logged_at_start(tmp_path: Path) -> None:
    path = tmp_path / "pool.toml"
    path.write_text(
        '[[stratum.ports]]\nport = 3333\n\n[[stratum.ports]]\nport = 3334\nscheme = "solo"\n'
        "solo_fee_bps = 150\n"
    )
    config = load(path, env={})
    assert [(p.scheme, p.solo_fee_bps) for p in config.stratum.ports] == [("", 0), ("solo", 150)]
    assert limits_summary(config)["stratum.ports.solo_fee_bps"] == [0, 150]
