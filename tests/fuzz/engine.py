"""A seeded, reproducible mutation fuzzer for what a miner's bytes reach first: the line
framing (``stratum.framing.LineBuffer``), the codec (``stratum.codec.decode_request``) and the
pool's per-connection core (``pool.server.core.PoolConnection``).

Input ``i`` of a run with seed ``s`` is made by ``random.Random(f"{s}:{i}")`` alone, so any
input can be made again on its own. An input is a stream of one to three messages, each a real
valid request (subscribe, authorize, submit for a live job, configure, suggest_difficulty,
extranonce.subscribe, get_transactions) mutated at the JSON level (ids and params of every
type, missing and extra keys, deep nesting, huge numbers) and/or the byte level (flips,
interesting bytes, inserts, deletes, splices, truncation, runs longer than the line limit), or
plain random bytes; 60 % follow a valid handshake (fed whole), so submits reach the share
check. Every input is fed whole and byte by byte. The core's surroundings (job table, duplicate
filter, per-worker statistics) are made afresh every ``FRESH_CONTEXT_EVERY`` inputs, so a
failure replays from the start of its block (the hint printed says so).

Invariants checked for every input (a failure stops the run and prints how to replay it):

* framing: no exception but ``LineTooLong``; the same lines (and the error at the same place)
  whole and byte by byte; the unterminated tail never exceeds the limit (+1 for a ``\\r``);
* codec: ``decode_request`` never raises; a request with an id can be answered, and the answer
  decodes as JSON carrying that same id (same type);
* core: nothing escapes ``receive_data`` / ``share_recorded`` / ``handle_timer``; every line it
  sends is a JSON object, every response carries the id of a request of the input (or null);
  the same bytes out whole and byte by byte; its buffer stays within the line limit.
"""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog

from pool.bitcoin import REGTEST
from pool.jobs import Job, JobTable
from pool.server.context import PoolContext
from pool.server.core import CoreSettings, PoolConnection, ShareEvent
from pool.vardiff import VardiffConfig
from stratum.codec import decode_request, encode_response
from stratum.errors import LineTooLong
from stratum.framing import LineBuffer
from tests.unit.test_pool_connection import ADDR, EN1, NOW, WORKER, make_job

SMALL_LIMIT = 600  # 30 % of inputs run with this line limit (runs past it are inserted)
BIG_LIMIT = 16384
FRESH_CONTEXT_EVERY = 500  # per-worker stats and duplicate filters start afresh this often
INTERESTING = b'"\\{}[],:\n\r\x00\xff 0-.eE+'
NUMBERS: list[Any] = [
    0,
    -1,
    1,
    2**31,
    2**63,
    2**64 + 1,
    -(2**70),
    10**400,
    0.5,
    -0.0,
    1e308,
    1e-320,
    True,
    None,
]
STRINGS = ["", "x", "0" * 64, "ffffffff", "zz", "\u0000", "\ud7ff", "é" * 40, "a" * 700]


class FuzzFailure(AssertionError):
    pass


@dataclass
class Stats:
    inputs: int = 0
    bytes: int = 0
    lines: int = 0
    line_too_long: int = 0
    events: Counter[str] = field(default_factory=Counter)
    answers: int = 0
    shares: int = 0
    closes: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        rate = self.inputs / self.seconds if self.seconds else 0.0
        return {
            "inputs": self.inputs,
            "inputs_per_second": round(rate),
            "bytes": self.bytes,
            "lines": self.lines,
            "line_too_long": self.line_too_long,
            "decoded": dict(self.events.most_common()),
            "core_answers": self.answers,
            "shares_accepted": self.shares,
            "core_closes": dict(self.closes.most_common()),
            "seconds": round(self.seconds, 1),
        }


# -- inputs -------------------------------------------------------------------------------------


def valid_messages(job_id: str, rng: random.Random) -> list[dict[str, Any]]:
    """Real requests; the submits' nonces are the input's own (not duplicates of another's)."""
    nonce, en2 = f"{rng.getrandbits(32):08x}", f"{rng.getrandbits(32):08x}"
    return [
        {"id": 1, "method": "mining.subscribe", "params": ["cgminer/4.11", "deadbeef"]},
        {"id": 2, "method": "mining.authorize", "params": [WORKER, "x"]},
        {"id": 3, "method": "mining.authorize", "params": [f"{ADDR}.r2", "d=0.5"]},
        {
            "id": 4,
            "method": "mining.submit",
            "params": [WORKER, job_id, en2, f"{1_700_000_000:08x}", nonce],
        },
        {
            "id": 5,
            "method": "mining.submit",
            "params": [WORKER, job_id, en2, f"{1_700_000_050:08x}", nonce, "00002000"],
        },
        {
            "id": 6,
            "method": "mining.configure",
            "params": [
                ["version-rolling", "minimum-difficulty"],
                {"version-rolling.mask": "1fffe000", "minimum-difficulty.value": 2048},
            ],
        },
        {"id": 7, "method": "mining.suggest_difficulty", "params": [0.001]},
        {"id": 8, "method": "mining.extranonce.subscribe", "params": []},
        {"id": 9, "method": "mining.get_transactions", "params": [job_id]},
    ]


def _value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if roll < 0.3:
        return rng.choice(NUMBERS)
    if roll < 0.6:
        return rng.choice(STRINGS)
    if roll < 0.7 and depth < 3:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if roll < 0.75 and depth < 3:
        return {rng.choice(STRINGS[:5]): _value(rng, depth + 1) for _ in range(rng.randrange(3))}
    if roll < 0.8:
        n = rng.randrange(1, 1200)
        return json.loads("[" * n + "]" * n) if n < 900 else "[" * n
    return rng.choice(["mining.submit", "mining.notify", "client.reconnect", "1fffe000"])


def _json_mutation(rng: random.Random, msg: dict[str, Any]) -> Any:
    msg = json.loads(json.dumps(msg))
    for _ in range(rng.randrange(1, 4)):
        roll = rng.random()
        params = msg.get("params")
        if roll < 0.2:
            msg["id"] = _value(rng)
        elif roll < 0.5 and isinstance(params, list) and params:
            params[rng.randrange(len(params))] = _value(rng)
        elif roll < 0.6 and isinstance(params, list):
            params.append(_value(rng))
        elif roll < 0.68 and isinstance(params, list) and params:
            del params[rng.randrange(len(params)) :]
        elif roll < 0.76:
            msg.pop(rng.choice(["id", "method", "params"]), None)
        elif roll < 0.84:
            msg[rng.choice(["params", "method", "result", "error", "jsonrpc"])] = _value(rng)
        elif roll < 0.9:
            return [msg]  # an array, not an object
        else:
            return _value(rng)
    return msg


def _encode(rng: random.Random, obj: Any) -> bytes:
    try:
        text = json.dumps(obj, ensure_ascii=rng.random() < 0.5)
    except (ValueError, RecursionError):
        text = "{}"
    return text.encode("utf-8", "surrogatepass")


def _byte_mutation(rng: random.Random, data: bytes, limit: int) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        roll = rng.random()
        pos = rng.randrange(len(buf) + 1)
        if roll < 0.2 and buf:
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif roll < 0.4 and buf:
            buf[rng.randrange(len(buf))] = rng.choice(INTERESTING)
        elif roll < 0.55:
            buf[pos:pos] = bytes(rng.choice(INTERESTING) for _ in range(rng.randrange(1, 4)))
        elif roll < 0.7 and buf:
            end = min(len(buf), pos + rng.randrange(1, 16))
            del buf[pos:end]
        elif roll < 0.8 and buf:
            start = rng.randrange(len(buf))
            buf[pos:pos] = buf[start : start + rng.randrange(1, 32)]
        elif roll < 0.87:
            del buf[pos:]
        elif roll < 0.94 and limit == SMALL_LIMIT:
            run = rng.choice([limit - 1, limit, limit + 1, limit + 2, 2 * limit])
            buf[pos:pos] = rng.choice([b"a", b" ", b"\r", b"0"]) * max(0, run - len(buf))
        else:
            buf[pos:pos] = rng.randbytes(rng.randrange(1, 64))
    return bytes(buf)


@dataclass(frozen=True)
class Input:
    data: bytes
    handshake: bool  # sent after a valid subscribe + authorize
    limit: int  # max_line_bytes
    eof: bool  # the peer closes after it


def make_input(seed: int, index: int, job_id: str) -> Input:
    """Input ``index`` of seed ``seed``."""
    rng = random.Random(f"{seed}:{index}")
    limit = SMALL_LIMIT if rng.random() < 0.3 else BIG_LIMIT
    valid = valid_messages(job_id, rng)
    parts: list[bytes] = []
    for _ in range(rng.choice((1, 1, 2, 2, 3))):
        roll = rng.random()
        if roll < 0.1:
            parts.append(rng.randbytes(rng.randrange(1, 200)))
            continue
        obj: Any = rng.choice(valid)
        if 0.3 <= roll < 0.7:  # 0.1..0.3: valid as it is
            obj = _json_mutation(rng, obj)
        data = _encode(rng, obj)
        if roll >= 0.6:
            data = _byte_mutation(rng, data, limit)
        parts.append(data + rng.choice([b"\n", b"\n", b"\r\n", b"", b"\n\n"]))
    return Input(b"".join(parts), rng.random() < 0.6, limit, rng.random() < 0.2)


HANDSHAKE = (
    json.dumps({"id": 1, "method": "mining.subscribe", "params": ["fuzz/1"]}).encode()
    + b"\n"
    + json.dumps({"id": 2, "method": "mining.authorize", "params": [WORKER, "x"]}).encode()
    + b"\n"
)


# -- targets ------------------------------------------------------------------------------------


def _lines(data: bytes, limit: int, step: int, eof: bool) -> tuple[list[bytes], bool]:
    buf = LineBuffer(limit)
    out: list[bytes] = []
    chunks = [data] if step == 0 else [data[i : i + step] for i in range(0, len(data), step)]
    try:
        for chunk in chunks:
            buf.feed(chunk)
            if len(buf._partial) > limit + 1:
                raise FuzzFailure(f"framing holds {len(buf._partial)} bytes of one line")
            while (line := buf.next_line()) is not None:
                out.append(line)
        if eof:
            buf.close()
            while (line := buf.next_line()) is not None:
                out.append(line)
    except LineTooLong:
        return out, True
    return out, False


def check_framing(data: bytes, limit: int, eof: bool, stats: Stats) -> list[bytes]:
    whole = _lines(data, limit, 0, eof)
    if _lines(data, limit, 1, eof) != whole:
        raise FuzzFailure("framing: byte by byte differs from whole")
    stats.lines += len(whole[0])
    stats.line_too_long += whole[1]
    return whole[0]


def request_ids(lines: list[bytes]) -> list[Any]:
    """The ids the input's lines carry (what a response may echo)."""
    ids: list[Any] = [None]
    for line in lines:
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(obj, dict) and "id" in obj:
            ids.append(obj["id"])
    return ids


def check_codec(lines: list[bytes], stats: Stats) -> None:
    for line in lines:
        event = decode_request(line)
        stats.events[type(event).__name__] += 1
        answer = encode_response(event.id, True)
        back = json.loads(answer)
        if back["id"] != event.id or type(back["id"]) is not type(event.id):
            raise FuzzFailure(f"codec: answer id {back['id']!r} for request id {event.id!r}")


@dataclass
class CoreRig:
    """The cores' surroundings, twice (whole, byte by byte), made alike and kept in step: a job
    table each (a vardiff change sends the job again under the table's next id) and a context
    each (duplicate filter, per-worker statistics). Made afresh every ``FRESH_CONTEXT_EVERY``
    inputs (at indexes that are multiples of it), so a block of inputs replays alike."""

    settings: dict[int, CoreSettings]
    job: Job | None = None
    contexts: tuple[PoolContext, PoolContext] | None = None

    @classmethod
    def make(cls) -> CoreRig:
        vardiff = VardiffConfig(min_difficulty=1e-12, max_difficulty=1e6, retarget_shares=8)
        settings = {
            limit: CoreSettings(
                extranonce2_size=4,
                version_rolling_mask=0x1FFFE000,
                vardiff=vardiff,
                start_difficulty=1e-12,
                max_line_bytes=limit,
                max_invalid_in_row=50,
            )
            for limit in (SMALL_LIMIT, BIG_LIMIT)
        }
        rig = cls(settings)
        rig.fresh()
        return rig

    def fresh(self) -> None:
        tables = (JobTable(max_jobs=4, seed=1), JobTable(max_jobs=4, seed=1))
        self.job, twin = make_job(tables[0]), make_job(tables[1])
        assert self.job.job_id == twin.job_id
        self.contexts = tuple(  # type: ignore[assignment]
            PoolContext(network=REGTEST, jobs=table, extranonce1_size=4, now=NOW)
            for table in tables
        )


def _run_core(
    rig: CoreRig, ctx: PoolContext, given: Input, step: int
) -> tuple[bytes, PoolConnection, int]:
    limit = given.limit
    core = PoolConnection(ctx, rig.settings[limit], conn_id=1, extranonce1=EN1, now=NOW)
    out = bytearray()
    shares = 0
    stream = given.data
    chunks = [stream] if step == 0 else [stream[i : i + step] for i in range(0, len(stream), step)]
    if given.handshake:  # whole in both runs: the fuzzed bytes are what follows
        chunks.insert(0, HANDSHAKE)
    if given.eof:
        chunks.append(b"")
    tail = core.conn._core._buffer._partial  # the unterminated line held
    for chunk in chunks:
        items, _ = core.receive_data(chunk, NOW)
        for item in items:
            if type(item) is ShareEvent:
                shares += 1
                out += core.share_recorded(item, shares % 3 != 0, NOW)
                out += core.take_resend(NOW)
            else:
                assert isinstance(item, bytes)
                out += item
        if len(tail) > limit + 1:
            raise FuzzFailure(f"the core holds {len(tail)} bytes of one line")
    out += core.handle_timer(NOW + 10_000)  # past every deadline
    return bytes(out), core, shares


def check_core(rig: CoreRig, given: Input, lines: list[bytes], stats: Stats) -> None:
    assert rig.contexts is not None
    whole, core, shares = _run_core(rig, rig.contexts[0], given, 0)
    bytewise, _, _ = _run_core(rig, rig.contexts[1], given, 1)
    if whole != bytewise:
        raise FuzzFailure("core: byte by byte answers differ from whole")
    allowed = [*request_ids(lines), 1, 2]  # and the handshake's
    for raw in whole.splitlines():
        msg = json.loads(raw)
        if not isinstance(msg, dict):
            raise FuzzFailure(f"core sent a non-object: {raw[:200]!r}")
        if "method" in msg:
            continue  # a notification
        if "id" not in msg or not ("result" in msg and "error" in msg):
            raise FuzzFailure(f"core sent a malformed response: {raw[:200]!r}")
        if not any(msg["id"] == i and type(msg["id"]) is type(i) for i in allowed):
            raise FuzzFailure(f"core answered id {msg['id']!r}, not a request's: {allowed!r}")
        stats.answers += 1
    stats.shares += shares
    stats.closes[core.close_reason.split(":")[0] or "open"] += 1


# -- the run ------------------------------------------------------------------------------------

CHUNK = 10 * FRESH_CONTEXT_EVERY  # inputs per task of a parallel run


def replay_hint(seed: int, index: int) -> str:
    first = index - index % FRESH_CONTEXT_EVERY
    return f"--seed {seed} --start {first} --count {index - first + 1}"


def run_range(seed: int, start: int, count: int) -> Stats:
    """Fuzz inputs ``start .. start+count-1`` of ``seed`` in this process; FuzzFailure (with
    the input's index, how to replay it and its bytes) at the first broken invariant."""
    rig = CoreRig.make()
    stats = Stats()
    began = time.perf_counter()
    saved = structlog.get_config()
    # The core logs handshakes and refusals: at a million inputs, only its errors matter.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    try:
        for index in range(start, start + count):
            if index % FRESH_CONTEXT_EVERY == 0 and index != start:
                rig.fresh()
            assert rig.job is not None
            given = make_input(seed, index, rig.job.job_id)
            try:
                lines = check_framing(given.data, given.limit, given.eof, stats)
                check_codec(lines, stats)
                check_core(rig, given, lines, stats)
            except Exception as exc:
                data = given.data
                raise FuzzFailure(
                    f"input {index} of seed {seed} (replay: {replay_hint(seed, index)}; "
                    f"{given.limit=}, {given.handshake=}, {given.eof=}): "
                    f"{type(exc).__name__}: {exc}\ninput: {data[:400]!r}"
                    f"{'...' if len(data) > 400 else ''}"
                ) from exc
            stats.inputs += 1
            stats.bytes += len(given.data)
    finally:
        structlog.configure(**saved)
    stats.seconds = time.perf_counter() - began
    return stats


def merge(total: Stats, part: Stats) -> None:
    total.inputs += part.inputs
    total.bytes += part.bytes
    total.lines += part.lines
    total.line_too_long += part.line_too_long
    total.events.update(part.events)
    total.answers += part.answers
    total.shares += part.shares
    total.closes.update(part.closes)


def _task(args: tuple[int, int, int]) -> Stats:
    return run_range(*args)


def run(
    count: int,
    seed: int,
    *,
    start: int = 0,
    jobs: int = 1,
    progress: Callable[[Stats], None] | None = None,
) -> Stats:
    """Inputs ``start .. start+count-1`` of ``seed`` in ``jobs`` processes (the inputs and
    their verdicts do not depend on ``jobs``); ``progress`` after every ``CHUNK`` inputs."""
    began = time.perf_counter()
    # tasks end at multiples of CHUNK (and so of FRESH_CONTEXT_EVERY)
    edges = [start, *range((start // CHUNK + 1) * CHUNK, start + count, CHUNK), start + count]
    tasks = [(seed, a, b - a) for a, b in itertools.pairwise(edges) if b > a]
    total = Stats()
    if jobs <= 1:
        parts: Iterable[Stats] = map(_task, tasks)
        for part in parts:
            merge(total, part)
            total.seconds = time.perf_counter() - began
            if progress is not None:
                progress(total)
    else:
        with multiprocessing.get_context("spawn").Pool(jobs) as pool:
            for part in pool.imap_unordered(_task, tasks):
                merge(total, part)
                total.seconds = time.perf_counter() - began
                if progress is not None:
                    progress(total)
    total.seconds = time.perf_counter() - began
    return total
