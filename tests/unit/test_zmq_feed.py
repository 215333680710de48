"""The ZMQ hashblock feed's pure parts: message parsing, sequence numbers, endpoints, and the
watcher's credit to the first source that announced a block."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest

from pool.config import Config, ConfigError, NodeConfig, load, zmq_endpoint_problem
from pool.node.templates import SOURCES, TemplateWatcher
from pool.node.zmq_feed import (
    TOPIC,
    HashBlockFeed,
    SequenceTracker,
    ZmqMessageError,
    endpoint_from_notifications,
    parse_hashblock,
)

HASH = bytes(range(32))


def load_text(text: str, tmp_path: Path) -> Config:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return load(path, env={})


def test_parse_hashblock_reads_hash_in_display_order_and_the_sequence() -> None:
    msg = parse_hashblock([TOPIC, HASH, struct.pack("<I", 7)])
    assert msg.block_hash == HASH.hex()
    assert msg.sequence == 7


@pytest.mark.parametrize(
    ("frames", "why"),
    [
        ([TOPIC, HASH], "expected 3 frames"),
        ([b"rawblock", HASH, b"\0" * 4], "unexpected topic"),
        ([TOPIC, HASH[:31], b"\0" * 4], "31 bytes"),
        ([TOPIC, HASH, b"\0" * 8], "sequence of 8 bytes"),
    ],
)
def test_malformed_messages_are_refused_with_a_reason(frames: list[bytes], why: str) -> None:
    with pytest.raises(ZmqMessageError, match=why):
        parse_hashblock(frames)


def test_sequence_tracker_tells_next_gap_reset_and_wrap() -> None:
    seq = SequenceTracker()
    assert seq.observe(5) == ("first", 0)
    assert seq.observe(6) == ("next", 0)
    assert seq.observe(9) == ("gap", 2)
    assert seq.observe(0) == ("reset", 0)  # bitcoind started again
    assert seq.observe(1) == ("next", 0)
    assert (seq.gaps, seq.missed, seq.resets) == (1, 2, 1)
    wrap = SequenceTracker()
    wrap.observe(0xFFFFFFFF)
    assert wrap.observe(0) == ("next", 0)
    assert wrap.observe(2) == ("gap", 1)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("tcp://127.0.0.1:28332", "tcp://127.0.0.1:28332"),
        ("tcp://0.0.0.0:28332", "tcp://node.example:28332"),
        ("tcp://*:28332", "tcp://node.example:28332"),
        ("ipc:///tmp/x", ""),
    ],
)
def test_external_node_endpoint_from_getzmqnotifications(address: str, expected: str) -> None:
    notes = [
        {"type": "pubrawtx", "address": "tcp://127.0.0.1:1", "hwm": 1000},
        {"type": "pubhashblock", "address": address, "hwm": 1000},
    ]
    assert endpoint_from_notifications(notes, "node.example") == expected


def test_external_node_without_hashblock_has_no_endpoint() -> None:
    assert endpoint_from_notifications([], "h") == ""
    assert endpoint_from_notifications(None, "h") == ""
    notes = [{"type": "pubrawtx", "address": "tcp://127.0.0.1:1"}]
    assert endpoint_from_notifications(notes, "h") == ""
    wild = [{"type": "pubhashblock", "address": "tcp://0.0.0.0:5"}]
    assert endpoint_from_notifications(wild, "::1") == "tcp://[::1]:5"


@pytest.mark.parametrize(
    "endpoint",
    [
        "127.0.0.1:28332",
        "tcp://127.0.0.1",
        "tcp://127.0.0.1:0",
        "tcp://127.0.0.1:70000",
        "tcp://0.0.0.0:28332",
        "tcp://*:28332",
        "tcp://127.0.0.1:28332/x",
        "ipc:///tmp/s",
    ],
)
def test_bad_endpoints_have_a_reason(endpoint: str) -> None:
    assert zmq_endpoint_problem(endpoint) is not None


def test_good_endpoint() -> None:
    assert zmq_endpoint_problem("tcp://node.example:28332") is None
    assert NodeConfig().zmq_hashblock == "auto"


@pytest.mark.parametrize("value", ["0.5", "0", "-1", "3601"])
def test_zmq_heartbeat_out_of_range_is_refused(value: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"node\.zmq_heartbeat_seconds must be 1\.\.3600"):
        load_text(f"[node]\nzmq_heartbeat_seconds = {value}\n", tmp_path)


def test_zmq_heartbeat_reaches_the_socket_options() -> None:
    feed = HashBlockFeed("tcp://127.0.0.1:1", lambda _h: None, heartbeat_seconds=2.5)
    assert feed.heartbeat_ms == 2500


def test_config_refuses_a_bad_zmq_endpoint_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"node\.zmq_hashblock .*tcp://HOST:PORT"):
        load_text('[node]\nzmq_hashblock = "127.0.0.1:28332"\n', tmp_path)
    with pytest.raises(ConfigError, match=r"node\.zmq_hashblock .*127\.0\.0\.1"):
        load_text('[node]\nzmq_hashblock = "tcp://10.0.0.5:28332"\n', tmp_path)
    cfg = load_text(
        '[node]\nmode = "external"\ncookie_file = "c"\nzmq_hashblock = "tcp://10.0.0.5:28332"\n',
        tmp_path,
    )
    assert cfg.node.zmq_hashblock == "tcp://10.0.0.5:28332"
    assert load_text('[node]\nzmq_hashblock = ""\n', tmp_path).node.zmq_hashblock == ""


def test_watcher_credits_the_first_source_and_ignores_a_zmq_hash_it_mines_on() -> None:
    """A ZMQ message for the block the template is already on (a long-poll got there first)
    wakes nothing; another hash does, as source zmq; a later source does not take the credit."""

    async def on_template(*_: Any) -> None:
        return None

    watcher = TemplateWatcher(None, on_template)  # type: ignore[arg-type]
    assert watcher.zmq is None and set(watcher.new_blocks) == set(SOURCES)
    watcher._best_hash = "aa" * 32
    watcher._zmq_block("aa" * 32)
    assert not watcher._wake.is_set()
    watcher._zmq_block("bb" * 32)
    assert watcher._wake.is_set() and watcher._wake_source == "zmq"
    watcher.poke("longpoll")
    assert watcher._wake_source == "zmq"


def test_bench_counts_sources_from_the_pool_log_and_reports_each_way(tmp_path: Path) -> None:
    from benchmarks import report
    from benchmarks.zmq_latency import block_sources, node_keys

    log = tmp_path / "pool.log"
    lines = [
        '{"event": "new_block", "source": "start"}',
        '{"event": "new_block", "source": "zmq"}',
        '{"event": "new_block", "source": "longpoll"}',
        '{"event": "new_block", "source": "zmq"}',
        '{"event": "job_published"}',
        "not json: new_block",
    ]
    log.write_text("\n".join(lines) + "\n")
    assert block_sources(log) == {"longpoll": 1, "zmq": 2}
    assert node_keys("zmq", "tcp://127.0.0.1:5")["longpoll"] is False
    assert node_keys("longpoll", "tcp://127.0.0.1:5")["zmq_hashblock"] == ""
    assert node_keys("both", "tcp://127.0.0.1:5")["zmq_hashblock"] == "tcp://127.0.0.1:5"
    way = {"rounds": [{}], "miners": 10, "p50_ms": 3.0, "p99_ms": 9.0, "missing": 0}
    results = {"scenarios": {"zmq": {"zmq": {**way, "sources": {"zmq": 1}}}}}
    rows = report.rows(results)
    assert rows == [
        (
            "new block -> clean notify, zmq",
            "p50 3.0 ms, p99 9.0 ms (1 blocks, 10 miners; announced by: zmq 1)",
            "",
        )
    ]
