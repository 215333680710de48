"""The load generator's modes: flood (submits, accepted), idle, fanout and api."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from typing import Any

from benchmarks.loadgen.common import (
    Meter,
    Spec,
    emit,
    now,
    percentiles,
    proc_rss_kib,
    stratum_prevhash,
)
from benchmarks.loadgen.generator import Generator, drain
from benchmarks.loadgen.http import HttpPoller
from benchmarks.loadgen.miners import FloodMiner, IdleMiner, PacedMiner


async def mode_flood(gen: Generator, spec: Spec) -> dict[str, Any]:
    """N connections, each keeping ``in_flight`` submits outstanding; answers counted over a
    steady window after a warm-up. Afterwards sending stops and every submit must be
    answered: answers == submits sent."""
    n, in_flight, unique = spec["connections"], spec["in_flight"], spec["unique_nonces"]
    await gen.connect_many(
        n,
        lambda i: FloodMiner(gen, i, [gen.user(f"b{i}")], in_flight, unique),
        batch=n,
        timeout=spec.get("connect_timeout", 60.0),
    )
    miners = [m for m in gen.miners if isinstance(m, FloodMiner) and m.ready]
    if len(miners) < n:
        return {"error": f"only {len(miners)} of {n} connections ready", **_conn_report(gen)}
    gen.sending = True
    for m in miners:
        m.fill()
    await asyncio.sleep(spec["warmup"])
    for m in miners:
        m.sample_left = 8
    meter = Meter(gen.pool_pid)
    answers0, trues0, sent0 = gen.answers, gen.trues, gen.sent
    meter.start()
    await asyncio.sleep(spec["window"])
    window = meter.stop()
    answers, trues = gen.answers - answers0, gen.trues - trues0
    sent_in_window = gen.sent - sent0
    gen.sending = False
    drained = await drain(lambda: sum(m.outstanding for m in miners), spec["drain_timeout"])
    lost = sum(m.lost for m in miners)
    result = {
        "connections": n,
        "in_flight_per_connection": in_flight,
        "window": window,
        "answers_in_window": answers,
        "answers_per_s": round(answers / window["seconds"]),
        "accepted_in_window": trues,
        "accepted_per_s": round(trues / window["seconds"]),
        "submits_sent_in_window": sent_in_window,
        "pool_cpu_us_per_answer": round(window["pool_cpu_seconds"] / max(answers, 1) * 1e6, 2),
        "loadgen_cpu_us_per_answer": round(
            window["loadgen_cpu_seconds"] / max(answers, 1) * 1e6, 2
        ),
        "submits_sent_total": gen.sent,
        "answers_total": gen.answers,
        "accepted_total": gen.trues,
        "all_answered": drained and gen.answers == gen.sent,
        "connections_lost": lost,
        "answer_sample": gen.sample,
        "reject_examples": gen.sample_text,
    }
    gen.close_all()
    return result


async def mode_idle(gen: Generator, spec: Spec) -> dict[str, Any]:
    """N miners connect at once (every connect started together), subscribe, authorize and
    then idle. Counts those that got a mining.notify by the deadline and the pool's RSS."""
    n = spec["connections"]
    rss_before = proc_rss_kib(gen.pool_pid)
    cpu = Meter(gen.pool_pid)
    cpu.start()
    t0 = now()
    tasks = [
        asyncio.create_task(gen.connect(functools.partial(IdleMiner, gen, i, [gen.user(f"i{i}")])))
        for i in range(n)
    ]
    await gen.wait_settled(n, t0 + spec["deadline"])
    t_all = now() - t0
    all_in = gen.ready_count >= n
    await asyncio.sleep(spec["settle"])
    pending = [t for t in tasks if not t.done()]
    for t in pending:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    usage = cpu.stop()
    rss_after = proc_rss_kib(gen.pool_pid)
    ready = [m for m in gen.miners if m.ready]
    still = sum(1 for m in ready if not m.lost)
    times = [m.t_ready - t0 for m in ready if m.t_ready is not None]
    result = {
        "connections": n,
        "got_in": sum(1 for t in times if t <= spec["deadline"]),
        "still_connected_after_settle": still,
        "all_in": all_in,
        "deadline_seconds": spec["deadline"],
        "seconds_until_last_in": round(max(times), 3) if times else None,
        "seconds_to_notify": percentiles(times, scale=1.0),
        "seconds_until_all_in_or_deadline": round(t_all, 3),
        "connects_still_pending_at_end": len(pending),
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "kib_per_connection": round((rss_after - rss_before) / n, 2),
        "kib_per_connection_in": round((rss_after - rss_before) / max(len(ready), 1), 2),
        "cpu": usage,
        **_conn_report(gen),
    }
    gen.close_all()
    return result


def _conn_report(gen: Generator) -> dict[str, Any]:
    return {
        "connect_errors": gen.connect_errors,
        "handshake_failures": gen.failures(),
        "lost": gen.lost_count,
    }


async def read_command(reader: asyncio.StreamReader) -> dict[str, Any]:
    line = await reader.readline()
    if not line:
        return {"cmd": "stop"}
    cmd: dict[str, Any] = json.loads(line)
    return cmd


async def mode_fanout(gen: Generator, spec: Spec, commands: asyncio.StreamReader) -> dict[str, Any]:
    """Miners idle (on ``StampedConnection``s); for each block the runner mines (command
    ``block`` with its hash and the instant its RPC call returned), each miner's clean
    mining.notify for that block is timed from that instant. Commands: ``grow`` (connect up to
    ``to`` miners), ``block``, ``stop``."""
    rounds: list[dict[str, Any]] = []
    while True:
        cmd = await read_command(commands)
        if cmd["cmd"] == "grow":
            more = cmd["to"] - len([m for m in gen.miners if m.ready and not m.lost])
            await gen.connect_many(
                more,
                lambda i: IdleMiner(gen, i, [gen.user(f"f{i}")]),
                batch=spec["batch"],
                timeout=spec["connect_timeout"],
                stamped=True,
            )
            live = [m for m in gen.miners if m.ready and not m.lost]
            for m in live:
                if isinstance(m, IdleMiner):
                    m.notifies.clear()  # earlier jobs (the handshake's, refreshes) do not count
            emit("grown", connected=len(live), **_conn_report(gen))
        elif cmd["cmd"] == "block":
            rounds.append(await fanout_round(gen, cmd, spec["deadline"], spec.get("processes", 1)))
            emit("round", **rounds[-1])
        else:
            break
    gen.close_all()
    return {"rounds": rounds}


def process_of(extranonce1: str, processes: int) -> int:
    """The worker process that gave ``extranonce1`` (pool/server/extranonce.py: after the
    instance's byte, the worker index in the top bits of the next byte)."""
    bits = (processes - 1).bit_length()
    return int(extranonce1[2:4] or "0", 16) >> (8 - bits) if bits else 0


async def fanout_round(
    gen: Generator, cmd: dict[str, Any], deadline_s: float, processes: int = 1
) -> dict[str, Any]:
    """Time every live miner's clean notify for the block ``cmd["hash"]``: by the kernel's
    receive stamp from ``cmd["t_wall"]`` (the headline figure), and by when this process read
    it from ``cmd["t"]`` (monotonic; includes the generator's own queueing). While waiting only
    a counter is looked at, so reading stays quick."""
    want = stratum_prevhash(cmd["hash"])
    miners = [m for m in gen.miners if isinstance(m, IdleMiner) and m.ready and not m.lost]
    deadline = now() + deadline_s
    process0 = time.process_time()

    def arrival(m: IdleMiner) -> tuple[float, float | None] | None:
        """(read time, kernel stamp) of the clean notify for the block, if it came."""
        for t, stamp, line in m.notifies:
            if want.encode() in line:
                params = json.loads(line)["params"]
                if params[1] == want and params[8] is True:
                    return t, stamp
        return None

    while now() < deadline:
        if sum(len(m.notifies) > 0 for m in miners) < len(miners):
            await asyncio.sleep(0.02)  # cheap: not everyone has had any notify yet
            continue
        if all(arrival(m) is not None for m in miners):
            break
        await asyncio.sleep(0.1)
    stamped: list[float] = []
    by_process: dict[int, list[float]] = {}
    seen: list[float] = []
    not_clean = unstamped = 0
    for m in miners:
        got = arrival(m)
        if got is None:
            not_clean += any(want.encode() in line for _, _, line in m.notifies)
        else:
            seen.append(got[0] - cmd["t"])
            if got[1] is None:
                unstamped += 1
            else:
                stamped.append(got[1] - cmd["t_wall"])
                by_process.setdefault(process_of(m.extranonce1, processes), []).append(stamped[-1])
        m.notifies.clear()
    return {
        "miners": len(miners),
        "notified": len(seen),
        "missing": len(miners) - len(seen),
        "notify_without_clean_jobs": not_clean,
        "without_kernel_stamp": unstamped,
        "rpc_seconds": round(cmd["t"] - cmd["t_call"], 4),
        "latency_ms": percentiles(stamped),
        "latency_ms_by_process": {str(p): percentiles(v) for p, v in sorted(by_process.items())},
        "first_ms": round(min(stamped) * 1000, 3) if stamped else None,
        "read_by_loadgen_ms": percentiles(seen),
        "loadgen_cpu_seconds": round(time.process_time() - process0, 3),
    }


async def mode_api(gen: Generator, spec: Spec) -> dict[str, Any]:
    """Known workers first (idle connections authorizing many workers each), then paced
    submitters: answer latency over a window without, then with, HTTP pollers hammering the
    API."""
    wc, per = spec["worker_connections"], spec["workers_per_connection"]
    t0 = now()
    await gen.connect_many(
        wc,
        lambda i: IdleMiner(gen, i, [gen.user(f"w{i}x{k}") for k in range(per)]),
        batch=spec["worker_batch"],
        timeout=spec["connect_timeout"],
    )
    workers_ready = gen.ready_count
    workers_seconds = now() - t0
    if workers_ready < wc:
        return {"error": f"only {workers_ready} of {wc} worker connections", **_conn_report(gen)}
    emit("workers", connections=workers_ready, workers=workers_ready * per)
    s = spec["submitters"]
    await gen.connect_many(
        s,
        lambda i: PacedMiner(gen, i, [gen.user(f"s{i}")]),
        batch=s,
        timeout=spec["connect_timeout"],
        stamped=True,
    )
    paced = [m for m in gen.miners if isinstance(m, PacedMiner) and m.ready]
    if len(paced) < s:
        return {"error": f"only {len(paced)} of {s} submitters ready", **_conn_report(gen)}

    per_conn_rate = spec["rate"] / s
    stop_pacing = asyncio.Event()

    async def pacer() -> None:
        start = now()
        while not stop_pacing.is_set():
            due = int((now() - start) * per_conn_rate)
            for m in paced:
                m.send(due - m.count)
            await asyncio.sleep(0.002)

    pacing = asyncio.create_task(pacer())
    await asyncio.sleep(spec["warmup"])
    windows: dict[str, tuple[float, float, dict[str, float]]] = {}
    meter = Meter(gen.pool_pid)
    meter.start()
    a = now()
    await asyncio.sleep(spec["window"])
    windows["quiet"] = (a, now(), meter.stop())

    host_header = f"{spec['http_host']}:{spec['http_port']}"
    pollers: list[HttpPoller] = []
    gen.polling = True
    for _ in range(spec["http_clients"]):
        poller: HttpPoller | None = None

        def make() -> HttpPoller:
            nonlocal poller
            poller = HttpPoller(gen, host_header, spec["http_paths"])
            return poller

        await gen.loop.create_connection(make, spec["http_host"], spec["http_port"])
        assert poller is not None
        pollers.append(poller)
    await asyncio.sleep(spec["api_warmup"])
    meter.start()
    http_before = {k: len(v) for k, v in gen.http.items()}
    a = now()
    await asyncio.sleep(spec["window"])
    windows["api_polled"] = (a, now(), meter.stop())
    http_in_window = {k: len(v) - http_before.get(k, 0) for k, v in gen.http.items()}
    gen.polling = False
    stop_pacing.set()
    await pacing
    drained = await drain(lambda: sum(len(m.pending) for m in paced), spec["drain_timeout"])
    await asyncio.wait([p.done for p in pollers], timeout=spec["drain_timeout"])
    for p in pollers:
        if p.transport is not None:
            p.transport.close()

    report: dict[str, Any] = {
        "known_workers": workers_ready * per,
        "workers_authorized_seconds": round(workers_seconds, 2),
        "submitters": s,
        "rate_per_s": spec["rate"],
        "http_clients": spec["http_clients"],
        "http_paths": spec["http_paths"],
        "all_answered": drained,
        "answers_total": gen.answers,
        "accepted_total": gen.trues,
        "sent_total": gen.sent,
    }
    unanswered = [t for m in paced for t, _ in m.pending.values()]
    for name, (a, b, usage) in windows.items():
        timed = [x for x in gen.timed if a <= x[0] < b]
        report[name] = {
            "answer_ms": percentiles([stamped for _, stamped, _, _ in timed]),
            "answer_read_by_loadgen_ms": percentiles([read for _, _, read, _ in timed]),
            "unanswered": sum(1 for t in unanswered if a <= t < b),
            "rejected": sum(1 for *_, ok in timed if not ok),
            "cpu": usage,
        }
    report["api_polled"]["http_requests_in_window"] = http_in_window
    report["http"] = {
        "requests": {k: percentiles(v) for k, v in gen.http.items()},
        "status": gen.http_status,
        "bytes": gen.http_bytes,
    }
    report.update(_conn_report(gen))
    gen.close_all()
    return report
