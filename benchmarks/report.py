"""The results file as a markdown table (for the README), next to issue 11's targets."""

from __future__ import annotations

from typing import Any


def _n(value: Any) -> str:
    """12345.6 -> '12 346' (the README's thin grouping); None -> '-'."""
    if value is None:
        return "-"
    if isinstance(value, float) and abs(value) < 100:
        return f"{value:.1f}"
    return f"{round(value):,}".replace(",", " ")


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.1f} ms"


FANOUT_TARGETS = {"1000": "p99 <= 30 ms", "10000": "p99 <= 100 ms"}


def fanout_row(
    count: str, v: dict[str, Any], label: str = "", note: str = ""
) -> tuple[str, str, str]:
    """One fan-out line: ``count`` miners, ``v`` the rounds' summary (scenarios.summarize)."""
    text = (
        f"p50 {_ms(v['p50_ms'])}, p99 {_ms(v['p99_ms'])}, max {_ms(v['max_ms'])} "
        f"({len(v['rounds'])} blocks"
        + (f", {v['missing']} notifies missing" if v["missing"] else "")
        + note
        + ")"
        + _own(v.get("pool_fanout_ms"))
    )
    what = f"new block -> clean notify at {_n(int(count))} miners{label}"
    return what, text, FANOUT_TARGETS.get(count, "")


def _own(loops: Any) -> str:
    """The pool's own fan-out loops (its log's ``fanout_ms``), sends included."""
    if not loops:
        return ""
    return f"; the pool's loop over its miners {min(loops):.0f}-{max(loops):.0f} ms"


def _pct(share: Any) -> str:
    return "-" if share is None else f"{share * 100:.0f} %"


def _flood_row(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"failed: {r['error']}"
    w = r["window"]
    return (
        f"{_n(r['answers_per_s'])}/s ({r['pool_cpu_us_per_answer']:.1f} us pool CPU each, pool "
        f"{_pct(w['pool_cpu_share'])} of its core, load generator {_pct(w['loadgen_cpu_share'])}"
        f"{_others(w)})"
    )


def _others(window: dict[str, Any]) -> str:
    """Notes when other processes used the pool's core, or the generator's core was full
    (then the figure may be the generator's limit, not the pool's)."""
    notes = ""
    busy = window.get("pool_core_busy_share")
    if busy is not None and busy - window["pool_cpu_share"] >= 0.05:
        notes += f"; other load on the pool's core {_pct(busy - window['pool_cpu_share'])}"
    gen_busy = window.get("loadgen_core_busy_share")
    if gen_busy is not None and gen_busy >= 0.9:
        notes += f"; load generator's core {_pct(gen_busy)} busy"
    return notes


def _cell(text: str) -> str:
    """A failure message in one table cell: its first line and its last (the exception)."""
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    shown = lines[0] if len(lines) < 2 else f"{lines[0]} ... {lines[-1]}"
    return shown.replace("|", "/")[:300]


def rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(measure, this run, target) for every scenario present in ``results["scenarios"]``."""
    sc = results.get("scenarios", {})
    out: list[tuple[str, str, str]] = []

    def failed(name: str) -> str | None:
        r = sc.get(name)
        if isinstance(r, dict) and "failed" in r:
            return "failed: " + _cell(r["failed"])
        return None

    if "submits" in sc:
        for n, target in (("20", ">= 40 000/s (ckpool ~45 700)"), ("100", ">= 35 000/s")):
            r = sc["submits"].get(n) if not failed("submits") else None
            text = failed("submits") or (_flood_row(r) if r else "-")
            out.append((f"random-nonce submits answered, {n} connections", text, target))
    if "accepted" in sc:
        r = sc["accepted"]
        text = failed("accepted") or _flood_row(r)
        if not failed("accepted") and "error" not in r:
            text = text.replace("/s (", "/s accepted (", 1)
            if not r.get("all_accepted"):
                text += f"; NOT all true: {r['accepted_total']} of {r['answers_total']}"
        out.append(
            ("accepted, journaled shares (default fsync), 20 connections", text, ">= 25 000/s")
        )
    if "accepted_pg" in sc:
        r = sc["accepted_pg"]
        text = failed("accepted_pg") or r.get("error") or _flood_row(r)
        if not failed("accepted_pg") and "error" not in r:
            text = text.replace("/s (", "/s accepted (", 1)
            if not r.get("all_accepted"):
                text += f"; NOT all true: {r['accepted_total']} of {r['answers_total']}"
        out.append(
            ("the same, PostgreSQL ledger (ledger.backend), 20 connections", text, "as SQLite")
        )
    if "idle" in sc:
        r = sc["idle"]
        if failed("idle") or "error" in r:
            text = failed("idle") or r["error"]
            out.append(("miners connecting at once: got in", text, "all"))
        else:
            n = r["connections"]
            last = r["seconds_until_last_in"]
            out.append(
                (
                    f"{_n(n)} miners connecting at once: got a job",
                    f"{_n(r['got_in'])} ({r['got_in'] / n * 100:.0f} %)"
                    + (f", the last after {last:.1f} s" if last is not None else ""),
                    "all",
                )
            )
            out.append(
                (
                    f"memory per idle connection at {_n(n)}",
                    f"{r['kib_per_connection']:.1f} KiB",
                    "<= 8 KiB (ckpool 5.4)",
                )
            )
    if "fanout" in sc:
        for count, v in sc["fanout"].items():
            if isinstance(v, dict) and "rounds" in v:
                out.append(fanout_row(count, v))
        if failed("fanout"):
            out.append(("new block -> clean notify", str(failed("fanout")), "p99 <= 100 ms"))
    if "api" in sc:
        r = sc["api"]
        if failed("api") or "error" in r:
            out.append(("Stratum answers while the API is polled", failed("api") or r["error"], ""))
        else:
            workers = _n(r["known_workers"])
            for key, label, target in (
                ("quiet", f"Stratum answer p50 / p99, {workers} workers known, no API load", ""),
                (
                    "api_polled",
                    f"same, {r['http_clients']} clients polling /api/workers and /metrics",
                    "p99 < 50 ms",
                ),
            ):
                a = r[key]["answer_ms"]
                text = f"{_ms(a['p50'])} / {_ms(a['p99'])} (max {_ms(a['max'])})"
                if r[key]["unanswered"]:
                    text += f", {r[key]['unanswered']} unanswered"
                text += _others(r[key]["cpu"]).replace("; ", ", ")
                if key == "api_polled":
                    done = sum(r[key]["http_requests_in_window"].values())
                    text += f"; {done} API requests answered in {r[key]['cpu']['seconds']:.0f} s"
                out.append((label, text, target))
    if "zmq" in sc:
        r = sc["zmq"]
        if failed("zmq"):
            out.append(("new block -> clean notify, ZMQ vs long-poll", str(failed("zmq")), ""))
        for way in ("zmq", "longpoll", "both"):
            v = r.get(way)
            if not isinstance(v, dict) or "rounds" not in v:
                continue
            sources = ", ".join(f"{k} {n}" for k, n in v["sources"].items()) or "none"
            text = (
                f"p50 {_ms(v['p50_ms'])}, p99 {_ms(v['p99_ms'])} ({len(v['rounds'])} blocks, "
                f"{v['miners']} miners; announced by: {sources}"
                + (f"; {v['missing']} notifies missing" if v["missing"] else "")
                + ")"
            )
            out.append((f"new block -> clean notify, {way}", text, ""))
    if "processes" in sc:  # issue 13: 2 worker processes vs 1 (benchmarks/processes.py)
        from benchmarks.processes import rows as process_rows

        out += process_rows(sc["processes"])
    if "fanout_processes" in sc:  # the fan-out spread over worker processes
        from benchmarks.fanout_processes import rows as fanout_process_rows

        out += fanout_process_rows(sc["fanout_processes"])
    if "send_floor" in sc:  # what the machine allows any fan-out (benchmarks/send_floor.py)
        from benchmarks.send_floor import rows as send_floor_rows

        out += send_floor_rows(sc["send_floor"])
    return out


def markdown(results: dict[str, Any]) -> str:
    lines: list[str] = []
    table = rows(results)
    if table:
        lines += ["| measure | this pool | target (issue 11) |", "| --- | --- | --- |"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in table]
    micro = results.get("micro")
    if isinstance(micro, dict) and micro:
        if lines:
            lines.append("")
        lines += ["| micro-benchmark (in process, one core) | result |", "| --- | --- |"]
        for name, value in micro.items():
            shown = f"skipped: {value['skipped']}" if isinstance(value, dict) else _n(value)
            lines.append(f"| {name} | {shown} |")
    return "\n".join(lines)
