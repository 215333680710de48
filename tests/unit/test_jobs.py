"""Jobs: the Stratum encoding of a real block, the coinbase split, the live-job table."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from pool.bitcoin import REGTEST, address_to_script, block_hash, hash_to_display, sha256d
from pool.jobs import JobConfig, JobTable, Template, TemplateError, build_job, prevhash_to_stratum
from pool.miner import stratum_prevhash_to_internal

# Mainnet block 125552 (the Bitcoin wiki's "Block hashing algorithm" example), as bitcoind
# prints its fields: a real header to check the Stratum encoding against.
B125552: dict[str, Any] = {
    "version": 1,
    "prev": "00000000000008a3a41b85b8b29ad444def299fee21793cd8b9e567eab02cd81",
    "merkle": "2b12fcf1b09288fcaff797d71e950e71ae42b91e8bdb2304758dfcffc2b620e3",
    "time": 1305998791,
    "bits": 0x1A44B9F2,
    "nonce": 2504433986,
    "hash": "00000000000000001e8d6829a8a21adc5d38d0a473b144b6765798e61f98bd1d",
}


def test_stratum_prevhash_of_a_real_block_rebuilds_its_header() -> None:
    prev_internal = bytes.fromhex(B125552["prev"])[::-1]
    stratum = prevhash_to_stratum(prev_internal)
    # The documented rule, on the display hex: reverse the order of the eight 4-byte words.
    words = [B125552["prev"][i : i + 8] for i in range(0, 64, 8)]
    assert stratum == "".join(reversed(words))
    # What a miner does with it: swap each word back, then hash the header.
    header = (
        struct.pack("<I", B125552["version"])
        + stratum_prevhash_to_internal(stratum)
        + bytes.fromhex(B125552["merkle"])[::-1]
        + struct.pack("<III", B125552["time"], B125552["bits"], B125552["nonce"])
    )
    assert hash_to_display(block_hash(header)) == B125552["hash"]


def gbt(height: int = 5, txs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "version": 0x20000000,
        "previousblockhash": "11" * 32,
        "transactions": txs or [],
        "coinbasevalue": 50 * 10**8,
        "target": "7fffff" + "00" * 29,
        "bits": "207fffff",
        "curtime": 1_700_000_000,
        "mintime": 1_699_999_000,
        "height": height,
        "default_witness_commitment": "6a24aa21a9ed" + "22" * 32,
        "longpollid": "x",
    }


CONFIG = JobConfig(
    payout_script=address_to_script("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", REGTEST)
)


def test_template_from_rpc_rejects_missing_and_wrong_fields() -> None:
    bad = gbt()
    del bad["height"]
    with pytest.raises(TemplateError, match="height"):
        Template.from_rpc(bad)
    bad = gbt()
    bad["coinbasevalue"] = "lots"
    with pytest.raises(TemplateError, match="coinbasevalue"):
        Template.from_rpc(bad)


def test_coinb1_extranonce_coinb2_is_the_coinbase_and_notify_fields() -> None:
    tx = {"data": "00" * 60, "txid": "ab" * 32, "fee": 1000, "weight": 240}
    template = Template.from_rpc(gbt(txs=[tx]))
    job = build_job(template, CONFIG, job_id="7", now=0.0, clean=True)
    extranonce = bytes(range(8))
    coinbase = job.coinbase.coinb1 + extranonce + job.coinbase.coinb2
    assert job.coinbase.tx(extranonce) == coinbase
    assert sha256d(coinbase) == job.coinbase.txid(extranonce)
    params = job.notify_params()
    assert params[0] == "7"
    assert params[4] == [bytes.fromhex("ab" * 32)[::-1].hex()]
    assert params[5:8] == ["20000000", "207fffff", f"{1_700_000_000:08x}"]
    assert params[8] is True
    assert template.fees == 1000


def test_job_table_clean_retires_everything_and_is_bounded() -> None:
    table = JobTable(max_jobs=3, seed=1)
    template = Template.from_rpc(gbt())
    jobs = [
        build_job(template, CONFIG, job_id=table.next_id(), now=0.0, clean=i == 0) for i in range(5)
    ]
    retired = []
    for job in jobs:
        retired += table.add(job)
    assert [j.job_id for j in table] == [j.job_id for j in jobs[2:]]
    assert retired == jobs[:2]
    clean = build_job(template, CONFIG, job_id=table.next_id(), now=0.0, clean=True)
    assert table.add(clean) == jobs[2:]
    assert table.current is clean and len(table) == 1
    assert table.get(jobs[4].job_id) is None
    assert len({j.job_id for j in jobs}) == 5  # ids are unique


def test_block_target_is_never_easier_than_the_template() -> None:
    template = Template.from_rpc(gbt())
    easy = build_job(template, CONFIG, job_id="1", now=0.0, clean=True, block_target=2**256 - 1)
    hard = build_job(template, CONFIG, job_id="2", now=0.0, clean=True, block_target=1 << 200)
    assert easy.block_target == template.target
    assert hard.block_target == 1 << 200
