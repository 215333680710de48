"""``make bench``'s outsider benchmark, smallest form: the pool as a separate process, the load
generator as another, 20 connections flooding random-nonce submits for one second. Proves the
harness end to end (config accepted by the pool's CLI, pinning, the generator's counting): every
submit sent is answered, none is accepted (a random nonce meets difficulty 1 once in 2^32),
and the answers read in full say "low difficulty" (23; a repeated random nonce may say 22)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import send_floor
from benchmarks.harness import Node, choose_cpus
from benchmarks.scenarios import Settings, submits
from pool.node.managed import ManagedNode
from tests.integration.harness import wallet_address

pytestmark = pytest.mark.integration


async def test_submits_flood_is_counted_exactly(regtest_node: ManagedNode, tmp_path: Path) -> None:
    node = Node(regtest_node, await wallet_address(regtest_node))
    settings = Settings(submit_connections=(20,), warmup=0.5, window=1.0)
    result = await submits(node, choose_cpus(), tmp_path, settings)
    run = result["20"]
    assert run["pool"]["exit_code"] == 0, result.get("pool_log_tail")
    assert run["connections_lost"] == 0
    assert run["answers_in_window"] > 0
    assert run["all_answered"], (run["answers_total"], run["submits_sent_total"])
    assert run["answers_total"] == run["submits_sent_total"]
    assert run["accepted_total"] == 0
    assert run["answer_sample"].get("error 23", 0) > 0, run["answer_sample"]
    assert set(run["answer_sample"]) <= {"error 22", "error 23"}, run["reject_examples"]


async def test_send_floor_times_every_round_and_every_line_arrives() -> None:
    """``send_floor`` (the machine's fan-out floor): one and two sender processes, each round
    timed, and the receiver got every byte of every line sent."""
    cpus = choose_cpus()
    for processes in (1, 2):
        result = await send_floor.measure(60, processes, 2, cpus, receiver_nice=0)
        assert result["processes"] == processes
        assert len(result["loop_ms"]) == 2 and all(ms > 0 for ms in result["loop_ms"])
        assert result["short_sends"] == 0
        assert result["bytes_received"] == 60 * 2 * len(send_floor.NOTIFY_LINE)
        assert result["all_received"] is True
    ((what, text, _target),) = send_floor.rows({"60/processes2": result})
    assert "60 sends, 2 processes" in what and "2 rounds" in text


def test_fanout_loops_are_read_from_the_pool_log_after_the_offset(tmp_path: Path) -> None:
    """The bench's ``pool_fanout_ms``: clean jobs' ``fanout_ms`` logged after the offset."""
    from benchmarks.report import fanout_row
    from benchmarks.scenarios import logged_fanouts

    log = tmp_path / "pool.log"
    before = '{"event": "job_published", "clean": true, "miners": 9, "fanout_ms": 99.0}\n'
    log.write_text(
        before
        + '{"event": "job_published", "clean": true, "miners": 10, "fanout_ms": 12.5}\n'
        + '{"event": "job_published", "clean": false, "miners": 10, "fanout_ms": 7.0}\n'
        + "not json job_published fanout_ms\n"
        + '{"event": "job_published", "clean": true, "miners": 10, "fanout_ms": 14.0}\n'
    )
    loops = logged_fanouts(log, len(before))
    assert loops == [12.5, 14.0]
    assert logged_fanouts(tmp_path / "missing.log", 0) == []
    summary = {"p50_ms": 1.0, "p99_ms": 2.0, "max_ms": 3.0, "rounds": [{}], "missing": 0}
    _what, text, _target = fanout_row("10", {**summary, "pool_fanout_ms": loops})
    assert text.endswith("the pool's loop over its miners 12-14 ms")
