"""PoolConnection, the pure per-connection core: bytes and ``now`` in, bytes and share events
out, no event loop. Answers are decoded with the miner-side codec, as a miner would."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pool.bitcoin import REGTEST, difficulty_to_target
from pool.jobs import Job, JobTable, Template, build_job
from pool.server.context import PoolContext
from pool.server.core import NOT_RECORDED, CoreSettings, PoolConnection, ShareEvent
from pool.shares import Reject
from pool.vardiff import VardiffConfig
from tests.unit.test_jobs import CONFIG, gbt

ADDR = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
WORKER = f"{ADDR}.rig"
NOW = 1_700_000_100.0
EN1 = bytes.fromhex("0a0b0c0d")


def make_job(table: JobTable, *, clean: bool = True) -> Job:
    job = build_job(
        Template.from_rpc(gbt()),
        CONFIG,
        job_id=table.next_id(),
        now=0.0,
        clean=clean,
        block_target=difficulty_to_target(1e9),
    )
    table.add(job)
    return job


def setup(
    difficulty: float = 1e-12, *, vardiff: bool = False, **kw: Any
) -> tuple[PoolConnection, PoolContext, Job]:
    table = JobTable(max_jobs=4, seed=1)
    ctx = PoolContext(network=REGTEST, jobs=table, extranonce1_size=4, now=NOW)
    job = make_job(table)
    settings = CoreSettings(
        extranonce2_size=4,
        version_rolling_mask=0x1FFFE000,
        vardiff=VardiffConfig(
            min_difficulty=1e-12, max_difficulty=1e6, enabled=vardiff, retarget_shares=8
        ),
        start_difficulty=difficulty,
        **kw,
    )
    core = PoolConnection(ctx, settings, conn_id=1, extranonce1=EN1, now=NOW)
    return core, ctx, job


def line(id: Any, method: str, params: list[Any]) -> bytes:
    return json.dumps({"id": id, "method": method, "params": params}).encode() + b"\n"


def messages(items: list[bytes | ShareEvent]) -> list[dict[str, Any]]:
    out = []
    for item in items:
        assert isinstance(item, bytes)
        out.extend(json.loads(x) for x in item.splitlines())
    return out


def handshake(core: PoolConnection) -> list[dict[str, Any]]:
    data = line(1, "mining.subscribe", ["test/1"]) + line(2, "mining.authorize", [WORKER, "x"])
    items, shares = core.receive_data(data, NOW)
    assert shares == 0
    return messages(items)


def submit(job_id: str, nonce: int, id: int = 10, **kw: str) -> bytes:
    params = [
        kw.get("worker", WORKER),
        job_id,
        kw.get("en2", "00000001"),
        kw.get("ntime", f"{1_700_000_000:08x}"),
        f"{nonce:08x}",
    ]
    return line(id, "mining.submit", params)


def test_handshake_answers_and_first_job_in_one_pass() -> None:
    core, ctx, job = setup()
    msgs = handshake(core)
    assert msgs[0]["id"] == 1 and msgs[0]["result"][1] == EN1.hex()
    assert msgs[1] == {"id": 2, "result": True, "error": None}
    assert msgs[2]["method"] == "mining.set_difficulty"
    assert msgs[3]["method"] == "mining.notify" and msgs[3]["params"][0] == job.job_id
    assert msgs[3]["params"][8] is True
    assert core.ready
    assert ctx.stats.workers[WORKER].connections == 1


def test_accepted_share_waits_for_the_ledger_and_keeps_request_order() -> None:
    core, ctx, job = setup()
    handshake(core)
    data = submit(job.job_id, 1, id=10) + submit("nope", 2, id=11) + submit(job.job_id, 3, id=12)
    items, shares = core.receive_data(data, NOW)
    assert shares == 2
    assert [type(i) for i in items] == [ShareEvent, bytes, ShareEvent]
    stale = messages([items[1]])[0]
    assert stale["id"] == 11 and stale["error"][0] == Reject.STALE.code
    first, second = items[0], items[2]
    assert isinstance(first, ShareEvent) and isinstance(second, ShareEvent)
    assert first.result.accepted and first.creds.name == WORKER
    ok = json.loads(core.share_recorded(first, True, NOW))
    assert ok == {"id": 10, "result": True, "error": None}
    refused = json.loads(core.share_recorded(second, False, NOW))
    assert refused["id"] == 12 and refused["error"][:2] == list(NOT_RECORDED)
    # the core never counts accepted shares itself (the server does, once recorded)
    assert ctx.stats.accepted == 0 and ctx.stats.rejected["stale"] == 1


def test_rejections_are_counted_not_logged_and_summarised() -> None:
    core, ctx, job = setup(difficulty=1e6)  # no random nonce meets it
    handshake(core)
    items, _ = core.receive_data(b"".join(submit(job.job_id, n, id=n) for n in range(5)), NOW)
    answers = messages(items)
    assert [a["error"][0] for a in answers] == [23] * 5
    assert all(a["error"][1].startswith("low difficulty") for a in answers)
    assert ctx.stats.workers[WORKER].rejected["low_difficulty"] == 5
    summary = ctx.take_reject_summary()
    assert summary is not None and summary.total == 5
    assert summary.by_worker == [(WORKER, "low_difficulty", 5)]
    assert ctx.take_reject_summary() is None


def test_not_subscribed_and_unauthorized() -> None:
    core, ctx, job = setup()
    items, _ = core.receive_data(submit(job.job_id, 1), NOW)
    assert messages(items)[0]["error"][0] == 25
    core.receive_data(line(1, "mining.subscribe", []), NOW)
    items, _ = core.receive_data(submit(job.job_id, 1, worker="someone"), NOW)
    assert messages(items)[0]["error"][0] == 24
    assert ctx.stats.rejected == {"not_subscribed": 1, "unauthorized": 1}


def test_duplicate_after_accept() -> None:
    core, _, job = setup()
    handshake(core)
    items, shares = core.receive_data(submit(job.job_id, 7) + submit(job.job_id, 7, id=11), NOW)
    assert shares == 1
    assert messages([items[1]])[0]["error"][0] == Reject.DUPLICATE.code


def test_clean_job_makes_old_ids_stale() -> None:
    core, ctx, job = setup()
    handshake(core)
    new = make_job(ctx.jobs, clean=True)
    msgs = messages([core.on_job(new, NOW)])
    assert msgs[-1]["params"][0] == new.job_id and msgs[-1]["params"][8] is True
    items, _ = core.receive_data(submit(job.job_id, 1), NOW)
    assert messages(items)[0]["error"][0] == Reject.STALE.code
    _, shares = core.receive_data(submit(new.job_id, 1, id=11), NOW)
    assert shares == 1


def test_clean_jobs_in_a_row_retire_only_the_jobs_of_the_last_block() -> None:
    """The connection's job dicts are reused at each clean job (not made anew): a job sent
    before the last clean one is stale (normal work on the previous block, not counted as
    abuse); one from before the clean job before that is a bad share like any other."""
    core, ctx, job0 = setup()
    handshake(core)
    jobs = [job0]
    for _ in range(3):
        jobs.append(make_job(ctx.jobs, clean=True))
        core.on_job(jobs[-1], NOW)
        items, _ = core.receive_data(submit(jobs[-2].job_id, 1, id=5), NOW)
        assert messages(items)[0]["error"][0] == Reject.STALE.code
        assert core.bad == 0.0  # the previous block's job: not abuse
    items, _ = core.receive_data(submit(jobs[-3].job_id, 1, id=6), NOW)
    assert messages(items)[0]["error"][0] == Reject.STALE.code
    assert core.bad == 1.0  # two blocks old: counted
    _, shares = core.receive_data(submit(jobs[-1].job_id, 1, id=7), NOW)
    assert shares == 1
    assert list(core.sent) == [jobs[-1].job_id] and list(core.retired) == [jobs[-2].job_id]


def test_share_is_judged_at_the_difficulty_of_its_job() -> None:
    core, ctx, job = setup(difficulty=1e-12)
    handshake(core)
    core.vardiff.suggest(1e6, NOW)  # harder from now on; the job already sent keeps 1e-12
    assert core.on_job(make_job(ctx.jobs, clean=False), NOW).count(b"set_difficulty") == 1
    _, shares = core.receive_data(submit(job.job_id, 1), NOW)
    assert shares == 1


def test_vardiff_change_sends_difficulty_then_the_job_again() -> None:
    core, _, job = setup(difficulty=1e-12, vardiff=True)
    handshake(core)
    answers = b""
    for n in range(40):
        now = NOW + n * 0.001  # far too fast for 5 s per share: the difficulty goes up
        items, _ = core.receive_data(submit(job.job_id, n, id=100 + n), now)
        event = items[0]
        assert isinstance(event, ShareEvent)
        answer = core.share_recorded(event, True, now)
        assert answer.count(b"\n") == 1  # only the answer: a new difficulty comes separately
        answers += answer + core.take_resend(now)
        assert core.take_resend(now) == b""
    msgs = [json.loads(x) for x in answers.splitlines()]
    changes = [m for m in msgs if m.get("method") == "mining.set_difficulty"]
    assert changes and changes[0]["params"][0] > 1e-12
    after = msgs.index(changes[0]) + 1
    assert msgs[after]["method"] == "mining.notify" and msgs[after]["params"][8] is False
    assert msgs[after]["params"][0] != job.job_id


def test_too_many_invalid_shares_in_a_row_close() -> None:
    core, _, job = setup(difficulty=1e6, max_invalid_in_row=3)
    handshake(core)
    items, _ = core.receive_data(b"".join(submit(job.job_id, n, id=n) for n in range(10)), NOW)
    assert len(items) == 3 and core.closing
    assert "invalid shares in a row" in core.close_reason


def test_handshake_and_idle_timeouts() -> None:
    core, _, _ = setup(handshake_timeout=30.0, idle_timeout=600.0)
    assert core.next_timer() == NOW + 30.0
    core.handle_timer(NOW + 29.0)
    assert not core.closing
    core.handle_timer(NOW + 30.0)
    assert core.closing and "in time" in core.close_reason

    core, _, _ = setup(handshake_timeout=30.0, idle_timeout=600.0)
    handshake(core)
    assert core.next_timer() <= NOW + 600.0
    core.handle_timer(NOW + 599.0)
    assert not core.closing
    core.handle_timer(NOW + 600.0)
    assert core.closing and core.close_reason == "idle timeout"


def test_line_too_long_closes_with_a_protocol_error() -> None:
    core, _, _ = setup(max_line_bytes=600)
    items, _ = core.receive_data(b"x" * 700, NOW)
    assert items == [] and core.closing and "protocol error" in core.close_reason
    assert core.receive_data(b"more\n", NOW) == ([], 0)


def test_peer_close_and_nothing_after() -> None:
    core, _, job = setup()
    handshake(core)
    core.receive_data(b"", NOW)
    assert core.closing and core.close_reason == "peer closed"
    assert core.on_job(job, NOW) == b""


def test_unknown_method_and_garbage_are_answered() -> None:
    core, _, _ = setup()
    items, _ = core.receive_data(b'{"id":5,"method":"x.y","params":[]}\nnot json\n', NOW)
    msgs = messages(items)
    assert msgs[0]["id"] == 5 and msgs[0]["error"][0] == 20
    assert msgs[1]["id"] is None and msgs[1]["error"] is not None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_fuzz_contract_any_bytes_give_bytes_or_share_events(chunks: list[bytes]) -> None:
    """Nothing a peer sends can make the core raise; it answers with bytes or share events."""
    core, _, job = setup()
    handshake(core)
    prefix = submit(job.job_id, 1)
    for i, chunk in enumerate(chunks):
        items, shares = core.receive_data((prefix if i == 0 else b"") + chunk, NOW + i)
        assert shares == sum(type(x) is ShareEvent for x in items)
        for item in items:
            if isinstance(item, ShareEvent):
                assert isinstance(core.share_recorded(item, True, NOW), bytes)
            else:
                assert isinstance(item, bytes)
        core.handle_timer(NOW + i)


def test_broadcast_job_equals_the_general_path() -> None:
    """The broadcast fast path sends what on_job would, and falls back to it for a new
    difficulty; nothing reaches a connection that is not subscribed and authorized."""
    from pool.server.core import notify_event
    from stratum.notifications import encode_notification

    fast, ctx, _ = setup(vardiff=False)
    slow = PoolConnection(ctx, fast.settings, conn_id=2, extranonce1=bytes(4), now=NOW)
    idle = PoolConnection(ctx, fast.settings, conn_id=3, extranonce1=bytes(3) + b"\x01", now=NOW)
    handshake(fast)
    handshake(slow)
    for clean in (True, False, True):
        job = make_job(ctx.jobs, clean=clean)
        event = notify_event(job, job.job_id, job.clean)
        notify = (event, encode_notification(event))
        assert fast.broadcast_job(job, notify, NOW) == slow.on_job(job, NOW, notify=notify)
        assert fast.sent == slow.sent and fast.sent_difficulty == slow.sent_difficulty
        assert idle.broadcast_job(job, notify, NOW) == b""
    fast.vardiff.suggest(0.5, NOW)
    job = make_job(ctx.jobs, clean=True)
    event = notify_event(job, job.job_id, True)
    data = fast.broadcast_job(job, (event, encode_notification(event)), NOW)
    assert data.count(b"mining.set_difficulty") == 1 and data.count(b"mining.notify") == 1


def test_answers_owed_are_still_made_when_the_connection_is_closing() -> None:
    """Accepted shares followed, in the same read, by enough invalid ones to close: the
    credited shares are still answered (not silently dropped)."""
    core, _, job = setup(difficulty=1e-12, max_invalid_in_row=3)
    handshake(core)
    data = submit(job.job_id, 1, id=1) + b"".join(submit("stale", n, id=10 + n) for n in range(5))
    items, shares = core.receive_data(data, NOW)
    assert shares == 1 and core.closing
    event = items[0]
    assert isinstance(event, ShareEvent)
    assert json.loads(core.share_recorded(event, True, NOW))["result"] is True
    assert core.on_job(job, NOW) == b""  # but nothing new goes out
    core.finished()
    assert core.share_recorded(event, True, NOW) == b""  # the socket is gone


def test_a_valid_share_ends_a_run_of_invalid_ones_when_judged() -> None:
    core, _, job = setup(difficulty=1e-12, max_invalid_in_row=4)
    handshake(core)
    run = b"".join(submit("stale", n, id=n) for n in range(3))
    _, shares = core.receive_data(run + submit(job.job_id, 1, id=50) + run, NOW)
    assert shares == 1
    assert not core.closing and core.invalid_in_row == 3  # 3 + valid + 3, not 6


def test_shares_refused_by_storage_still_count_for_vardiff() -> None:
    """Valid work the ledger could not record is still the miner's hashrate: during a storage
    fault the difficulty must not fall to the minimum (which would multiply refused shares)."""
    core, _, job = setup(vardiff=True)
    handshake(core)
    resends: list[bytes] = []
    for n in range(64):
        now = NOW + n * 0.5
        items, shares = core.receive_data(submit(job.job_id, n, id=100 + n, en2=f"{n:08x}"), now)
        assert shares == 1
        [event] = items
        assert isinstance(event, ShareEvent)
        answer = json.loads(core.share_recorded(event, False, now))
        assert answer["error"][:2] == list(NOT_RECORDED)
        resends.append(core.take_resend(now))
    changed = [messages([r]) for r in resends if r]
    assert changed, "vardiff never moved on 64 valid (unrecorded) shares"
    assert changed[0][0]["method"] == "mining.set_difficulty"
    assert changed[0][0]["params"][0] > 1e-12


def test_show_message_only_to_a_subscribed_open_connection() -> None:
    core, _, _ = setup()
    assert core.show_message("before subscribe") == b""  # the miner would not understand it
    handshake(core)
    [msg] = messages([core.show_message("pool maintenance at 12:00 UTC")])
    assert msg == {
        "id": None,
        "method": "client.show_message",
        "params": ["pool maintenance at 12:00 UTC"],
    }
    core.close("test")
    assert core.show_message("after close") == b""
