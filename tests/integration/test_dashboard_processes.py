"""The dashboard shows the whole pool: ``stratum-pool run`` with ``server.processes = 2`` (a
supervisor, two real worker processes, a managed regtest bitcoind), a miner on each worker, and
a third ledger writer opened on the same store by the test (host name hostile HTML) and then
closed, so its heartbeat goes stale. Headless Chromium loads the page: the "Processes" table
lists all three, the closed one down, the live ones with their connections, exactly one marked
as the payout runner (the one /api/pool names), the host name shown as text (escaped), and the
headline figures are the pool-wide ones. Wall time: about 30 to 60 s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pool.bitcoin import REGTEST
from pool.config import LedgerConfig
from pool.ledger.ledger import Ledger
from tests.integration.harness import until
from tests.integration.procs_harness import (
    Miner,
    SupervisedPool,
    miners_on_every_process,
    write_config,
)
from tests.integration.test_dashboard import Dom, cards, chromium

pytestmark = pytest.mark.integration

ADDRESS = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
HOSTILE_HOST = '<img src=x onerror="document.title=1">h&st'
HEARTBEAT = 1.0  # seconds; a process is down 3 heartbeats after its last


async def pool_api(port: int) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/api/pool") as resp,
    ):
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


async def test_processes_table_shows_every_process(tmp_path: Path) -> None:
    data_dir = tmp_path / "pool"
    config = write_config(tmp_path / "pool.toml", data_dir)
    with config.open("a") as f:  # ([ledger] is the file's last table)
        f.write(f"heartbeat_seconds = {HEARTBEAT}\nshared_refresh_seconds = 0.2\n")
    pool = SupervisedPool(config, data_dir, tmp_path / "pool.log")
    await pool.start()
    miners: list[Miner] = []
    extra: Ledger | None = None
    try:
        assert pool.api_port
        miners = await miners_on_every_process(pool.port, f"{ADDRESS}.p-", per_process=1)
        for miner in miners:
            miner.start(every=0.2)
        # a third writer on the one store (another process of the pool, as far as the store
        # knows), with a host name that is HTML: opened, then closed (its heartbeat goes stale)
        ledger_config = LedgerConfig(heartbeat_seconds=HEARTBEAT, shared_refresh_seconds=0.2)
        extra = Ledger(ledger_config, data_dir / "ledger", REGTEST, journal_id="w9", shared=True)
        extra.shared.host = HOSTILE_HOST
        await extra.open()
        state: dict[str, Any] = {}

        async def seen() -> bool:
            state.update(await pool_api(pool.api_port))
            rows = {r["process"]: r for r in state["processes"]}
            return (
                set(rows) == {"w0", "w1", "w9"}
                and rows["w0"]["up"]
                and rows["w1"]["up"]
                and all(rows[w]["stats"].get("connections") == 1 for w in ("w0", "w1"))
                and all(rows[w]["stats"].get("shares_per_second", 0) > 0 for w in ("w0", "w1"))
                and state["payout_runner"]["process"] in ("w0", "w1")
                and state["pool_wide"]["hashrate"] > 0  # the heartbeat's stats are filled in
            )

        await until(seen, "three processes, the workers up with a miner each", state, 120)
        await extra.close()
        extra = None

        async def stale() -> bool:
            state.update(await pool_api(pool.api_port))
            rows = {r["process"]: r for r in state["processes"]}
            return not rows["w9"]["up"] and rows["w0"]["up"] and rows["w1"]["up"]

        await until(stale, "the closed writer shown down", state, 120)
        dom = Dom(
            (await chromium(f"http://127.0.0.1:{pool.api_port}/", tmp_path, "--dump-dom")).decode()
        )
        assert "hidden" in dom.by_id("error").attrs, dom.by_id("error").text
        assert "hidden" not in dom.by_id("processes-section").attrs
        rows = {e.attrs["data-process"]: e for e in dom.find("tr") if "data-process" in e.attrs}
        assert set(rows) == {"0/w0", "0/w1", "0/w9"}, set(rows)
        states = {k: r.attrs["data-state"] for k, r in rows.items()}
        assert states == {"0/w0": "up", "0/w1": "up", "0/w9": "down"}
        runner = state["payout_runner"]["process"]
        marked = {k for k, r in rows.items() if r.attrs["data-runner"] == "yes"}
        assert marked == {f"0/{runner}"}
        cells = {
            k: [e.text for e in dom.elements if e.tag == "td" and e.parents and e.parents[-1] is r]
            for k, r in rows.items()
        }
        assert cells[f"0/{runner}"][-1] == "payout runner"
        assert cells["0/w9"][2] == HOSTILE_HOST  # the host name as text, not markup
        assert not dom.find("img")  # nothing from the API became an element
        assert cells["0/w9"][4].startswith("down")
        for key in ("0/w0", "0/w1"):
            assert cells[key][6] == "1", cells[key]  # one connection each
        assert f"instance 0, process {runner}" in dom.by_id("processes-note").text
        # the headline figures are the pool-wide ones (the lead alone has one connection)
        value, sub, _ = cards(dom)["Connections"]
        assert value == "2", (value, sub)
        assert "2 workers online" in sub and "this process 1" in sub
        assert "2 of 3 processes up" in cards(dom)["Pool hashrate"][1]
    finally:
        for miner in miners:
            await miner.stop()
        if extra is not None:
            await extra.close()
        try:
            assert await pool.terminate() == 0, pool.tail()
        finally:
            pool.kill_all()
