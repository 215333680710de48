"""The dashboard in headless Chromium (Debian's ``chromium``) against a running pool with two
real miners on it: the rendered DOM holds the hashrate chart and both workers, and a
screenshot shows the chart (its colours are found in the PNG's pixels). Once the miners stop,
every figure shown is checked against the API's numbers: effort (not "luck"), one balance per
address, the PPS credit a difficulty-1 share really gets, and an orphaned block (made with
``invalidateblock``) shown as orphaned, not with confirmations -1. About a minute."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import shutil
import struct
import zlib
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from pool.api.server import ApiServer
from pool.app import PoolApp
from pool.config import ApiConfig, ChainConfig, PortConfig, SimulationConfig
from pool.ledger.pps import FEE_DENOMINATOR, UNITS_PER_SAT
from pool.ledger.store import Store
from pool.miner import Miner, MinerOptions
from pool.node.managed import ManagedNode
from tests.integration.harness import pool_config, start_pool, wait_for, wallet_address

pytestmark = pytest.mark.integration

# testing.md: without the background-networking flags Chromium tries the internet and stalls.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    # run the page's scripts (fetches, chart) before the DOM dump or the screenshot
    "--virtual-time-budget=5000",
)
CHROMIUM_TIMEOUT = 120.0
WIDTH, HEIGHT = 1280, 900
BLUE = (0x4A, 0xA3, 0xFF)  # the live 1-minute line (--blue)
# the per-minute bars: --accent (f7931a) at fill-opacity .32 over the panel (161c24)
BAR = (94, 66, 33)


def chromium_binary() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail(
            "the dashboard test needs Debian's chromium: apt-get install -y chromium "
            "(make test installs it when missing)"
        )
    return found


_profiles = itertools.count()


async def chromium(url: str, tmp: Path, *args: str) -> bytes:
    profile = tmp / f"chromium-profile-{next(_profiles)}"
    proc = await asyncio.create_subprocess_exec(
        chromium_binary(),
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        *args,
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CHROMIUM_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"chromium did not finish {url} within {CHROMIUM_TIMEOUT} s") from None
    assert proc.returncode == 0, f"chromium failed on {url}: {err.decode()[-2000:]}"
    return out


@dataclasses.dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    parents: list[Element]
    text: str = ""

    def inside(self, element_id: str) -> bool:
        return any(p.attrs.get("id") == element_id for p in self.parents)


class Dom(HTMLParser):
    """Every element with its attributes, ancestors and direct text."""

    VOID = frozenset({"meta", "input", "br", "img", "link", "hr"})

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[Element] = []
        self._stack: list[Element] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs}, list(self._stack))
        self.elements.append(element)
        if tag not in self.VOID:
            self._stack.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append(Element(tag, {k: v or "" for k, v in attrs}, list(self._stack)))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self._stack) - 1, -1, -1):
            if self._stack[i].tag == tag:
                del self._stack[i:]
                return

    def handle_data(self, data: str) -> None:
        if self._stack:
            self._stack[-1].text += data

    def find(self, tag: str | None = None, **attrs: str) -> list[Element]:
        return [
            e
            for e in self.elements
            if (tag is None or e.tag == tag)
            and all(e.attrs.get(k.rstrip("_")) == v for k, v in attrs.items())
        ]

    def by_id(self, element_id: str) -> Element:
        [element] = self.find(id=element_id)
        return element


@dataclasses.dataclass
class Dashboard:
    base: str
    names: list[str]
    addresses: list[str]
    app: PoolApp
    miners: list[Miner]


@pytest_asyncio.fixture(scope="module")
async def dashboard(
    regtest_node: ManagedNode, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Dashboard]:
    """A pool with the API and two miners hashing (blocks every few seconds, at a simulated
    difficulty of 2e-4), until the chart has a few live samples."""
    tmp = tmp_path_factory.mktemp("dashboard-pool")
    payout = await wallet_address(regtest_node)
    addresses = [await wallet_address(regtest_node) for _ in range(2)]
    ports = (PortConfig(port=0, start_difficulty=1e-6, min_difficulty=1e-9, max_difficulty=1e6),)
    config = dataclasses.replace(
        pool_config(regtest_node, tmp, payout, ports=ports),
        chain=ChainConfig(simulation=SimulationConfig(enabled=True, initial_difficulty=2e-4)),
        api=ApiConfig(port=0),
    )
    app = await start_pool(config)
    api = ApiServer(app, sample_seconds=1.0)
    miners: list[Miner] = []
    tasks: list[asyncio.Task[dict[str, Any]]] = []
    try:
        port = await api.start()
        server = app.server
        assert server is not None
        names = [f"{addresses[i]}.rig{i}" for i in range(2)]
        miners = [
            Miner(
                MinerOptions(
                    host="127.0.0.1",
                    port=server.bound_ports[0],
                    user=names[i],
                    hashrate=50_000.0 * (i + 1),
                )
            )
            for i in range(2)
        ]
        tasks = [asyncio.create_task(m.run()) for m in miners]
        await wait_for(
            lambda: (
                all(
                    n in server.stats.workers and server.stats.workers[n].accepted >= 100
                    for n in names
                )
                and len(api.samples) >= 10
            ),
            60,
            "100 shares from each miner and 10 hashrate samples",
            lambda: {n: w.accepted for n, w in server.stats.workers.items()},
        )
        yield Dashboard(f"http://127.0.0.1:{port}", names, addresses, app, miners)
    finally:
        for m in miners:
            m.stopping.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await api.stop()
        await app.stop()


async def test_dom_has_the_chart_and_both_workers(dashboard: Dashboard, tmp_path: Path) -> None:
    dom = Dom((await chromium(dashboard.base + "/", tmp_path, "--dump-dom")).decode())
    assert "hidden" in dom.by_id("error").attrs, dom.by_id("error").text
    chart = dom.by_id("hashrate-chart")
    assert chart.tag == "svg"
    [line] = [e for e in dom.find("polyline", class_="live-line") if e.inside("hashrate-chart")]
    assert len(line.attrs["points"].split()) >= 10  # the live samples, drawn
    assert [e for e in dom.find("rect", class_="minute-bar") if e.inside("hashrate-chart")]
    axis = [e.text for e in dom.find("text", class_="axis") if e.inside("hashrate-chart")]
    assert any(t.endswith("kH/s") for t in axis), axis
    rows = {e.attrs["data-worker"] for e in dom.find("tr") if "data-worker" in e.attrs}
    assert rows == set(dashboard.names)
    # one page holds them all: the count, no pager (paging: test_api_load.py)
    assert dom.by_id("workers-count").text == "(2)"
    assert "hidden" in dom.by_id("workers-pager").attrs
    links = {e.text for e in dom.find("a") if e.inside("workers")}
    assert set(dashboard.names) <= links
    labels = {e.text for e in dom.find("div", class_="label") if e.inside("cards")}
    assert {
        "Pool hashrate",
        "Simulated difficulty",
        "PPS credit / difficulty-1 share",
        "Effort (24 h)",
    } <= labels
    assert not {"Luck (24 h)", "PPS value / difficulty 1"} & labels  # the misleading labels
    assert dom.by_id("chain").text == "regtest"
    # a balance belongs to an address: not in the worker rows, once per address below them
    headers = [e.text for e in dom.find("th") if e.inside("workers")]
    assert headers and not [h for h in headers if "Balance" in h], headers
    balances = {e.attrs["data-address"] for e in dom.find("tr") if "data-address" in e.attrs}
    assert balances == set(dashboard.addresses)


async def test_address_page(dashboard: Dashboard, tmp_path: Path) -> None:
    address = dashboard.addresses[1]
    dom = Dom(
        (await chromium(f"{dashboard.base}/address/{address}", tmp_path, "--dump-dom")).decode()
    )
    assert "hidden" in dom.by_id("error").attrs, dom.by_id("error").text
    assert address in dom.by_id("page-title").text
    rows = {e.attrs["data-worker"] for e in dom.find("tr") if "data-worker" in e.attrs}
    assert rows == {dashboard.names[1]}
    assert "hidden" not in dom.by_id("payouts-section").attrs
    assert "hidden" in dom.by_id("blocks-section").attrs
    assert "hidden" in dom.by_id("balances-section").attrs  # the balance is a card here
    labels = [e.text for e in dom.find("div", class_="label") if e.inside("cards")]
    assert labels.count("Balance") == 1
    assert dom.find("rect", class_="minute-bar")


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and the rows of an 8-bit RGB/RGBA, non-interlaced PNG (as RGB)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and color in (2, 6) and interlace == 0, (depth, color, interlace)
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 0xFF
        prev = line
        rgb = line if bpp == 3 else bytearray(v for i, v in enumerate(line) if i % 4 != 3)
        rows.append(bytes(rgb))
    return width, height, rows


def find_colour(
    rows: list[bytes], colour: tuple[int, int, int], slack: int
) -> list[tuple[int, int]]:
    """(x, y) of the pixels within ``slack`` of ``colour`` in every channel."""
    found = []
    r0, g0, b0 = colour
    for y, row in enumerate(rows):
        for i in range(0, len(row), 3):
            if (
                abs(row[i] - r0) <= slack
                and abs(row[i + 1] - g0) <= slack
                and abs(row[i + 2] - b0) <= slack
            ):
                found.append((i // 3, y))
    return found


async def test_screenshot_shows_the_chart(dashboard: Dashboard, tmp_path: Path) -> None:
    shot = tmp_path / "dashboard.png"
    await chromium(
        dashboard.base + "/",
        tmp_path,
        f"--screenshot={shot}",
        f"--window-size={WIDTH},{HEIGHT}",
    )
    data = shot.read_bytes()
    assert len(data) > 30_000, f"{shot}: {len(data)} bytes, too small for the dashboard"
    width, height, rows = png_pixels(data)
    assert (width, height) == (WIDTH, HEIGHT)
    colours = {row[i : i + 3] for row in rows[::8] for i in range(0, len(row), 24)}
    assert len(colours) > 50, "an almost uniform picture"
    # the chart: the minute bars fill an area, and the live line is drawn across it
    bars = find_colour(rows, BAR, slack=10)
    assert len(bars) > 5000, f"no hashrate bars in the screenshot ({len(bars)} pixels)"
    top, bottom = min(y for _, y in bars), max(y for _, y in bars)
    line = [(x, y) for x, y in find_colour(rows, BLUE, slack=12) if top - 80 <= y <= bottom]
    assert len(line) > 100, f"no live hashrate line over the bars ({len(line)} pixels)"
    assert max(x for x, _ in line) - min(x for x, _ in line) > 100


def fmt_btc(exact: str) -> str:
    """The dashboard's fmtBtc: an exact BTC string cut for display."""
    whole, _, frac = exact.partition(".")
    digits = len(whole.lstrip("-"))
    if whole.lstrip("-") == "0":
        cut = frac[:8].rstrip("0")
        return f"{whole}.{cut}" if cut else "0"
    return f"{whole}.{frac[: max(2, 7 - digits)]}"


def cards(dom: Dom) -> dict[str, tuple[str, str, str]]:
    """label -> (value, sub, title) of the cards."""
    out = {}
    for card in dom.find("div", class_="card"):
        parts = {
            e.attrs["class"]: e.text
            for e in dom.elements
            if e.tag == "div" and e.parents and e.parents[-1] is card
        }
        out[parts["label"]] = (parts["value"], parts["sub"], card.attrs.get("title", ""))
    return out


async def api_state(base: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        state = {}
        for path in ("/api/pool", "/api/workers", "/api/blocks?limit=20"):
            async with http.get(base + path) as resp:
                assert resp.status == 200, path
                state[path.split("?")[0]] = await resp.json()
    return state


def still(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """The figures compared are the same in both (hashrates decay: not compared)."""
    return (
        [(w["name"], w["balance"]) for w in before["/api/workers"]["workers"]]
        == [(w["name"], w["balance"]) for w in after["/api/workers"]["workers"]]
        and before["/api/blocks"]["blocks"] == after["/api/blocks"]["blocks"]
        and before["/api/pool"]["effort"] == after["/api/pool"]["effort"]
        and before["/api/pool"]["pps"] == after["/api/pool"]["pps"]
    )


async def test_figures_match_their_maths(
    dashboard: Dashboard, regtest_node: ManagedNode, tmp_path: Path
) -> None:
    """Runs last: stops the module's miners (the figures stand still), orphans the pool's
    newest block, and checks each card and table against the API's exact numbers."""
    server, ledger = dashboard.app.server, dashboard.app.ledger
    rpc = regtest_node.rpc
    assert server is not None and ledger is not None and rpc is not None
    await wait_for(
        lambda: any(b["status"] == "pending" for b in ledger.aggregates.blocks.values()),
        120,
        "a block found by the miners",
    )
    for miner in dashboard.miners:
        miner.stopping.set()
    await wait_for(lambda: not server.sessions, 30, "the miners gone")
    pending = await ledger.store.run(Store.blocks, ("pending",))
    assert pending, "no block found by the miners"
    block = pending[0]  # the newest: invalidating it orphans it (and nothing of another test)
    await rpc.call("invalidateblock", block["hash"])
    try:
        await ledger.check_blocks(rpc)
        await wait_for(
            lambda: ledger.aggregates.blocks[block["hash"]]["status"] == "orphaned",
            30,
            "the invalidated block orphaned",
        )
        # the pool's own block checks may still be settling the confirmations: a page
        # rendered while the API's figures stood still is the one compared
        for _ in range(5):
            before = await api_state(dashboard.base)
            dom = Dom((await chromium(dashboard.base + "/", tmp_path, "--dump-dom")).decode())
            after = await api_state(dashboard.base)
            if still(before, after):
                break
        else:
            raise AssertionError("the API's figures kept changing while the page rendered")
    finally:
        await rpc.call("reconsiderblock", block["hash"])
    assert "hidden" in dom.by_id("error").attrs, dom.by_id("error").text
    pool = after["/api/pool"]
    shown = cards(dom)
    # the API's "miners" counts open connections: labelled so
    assert shown["Connections"][0] == str(pool["miners"]) == "0"
    assert "Miners" not in shown

    # effort = expected blocks / found blocks (100 % average, below 100 % lucky)
    effort = pool["effort"]["24h"]
    expected, found = effort["expected_blocks"], effort["found_blocks"]
    assert found >= 1 and expected > 0
    assert effort["effort"] == pytest.approx(expected / found)
    assert pool["luck"]["24h"]["luck"] == effort["effort"]  # the old field, kept as it was
    value, sub, title = shown["Effort (24 h)"]
    assert value == f"{100 * expected / found:.0f} %", (value, expected, found)
    assert sub.startswith(f"{expected:.2f} expected · {found} found")
    assert sub.endswith(" · lucky" if expected < found else " · unlucky"), sub
    assert "below 100 % lucky" in title

    # PPS: what a difficulty-1 share is really credited, never the uncapped rate
    pps = pool["pps"]
    assert pps["capped"] is True  # simulated difficulty 2e-4: a difficulty-1 share is a block
    assert pps["block_difficulty"] == pytest.approx(2e-4, rel=0.5)
    one_block = pps["block_value_sat"] * UNITS_PER_SAT
    fee = pps["fee_bps"]
    assert pps["share_credit_units"] == one_block * (FEE_DENOMINATOR - fee) // FEE_DENOMINATOR
    assert pps["value_units"] > 1000 * pps["share_credit_units"]  # the rate nothing is paid at
    value, sub, title = shown["PPS credit / difficulty-1 share"]
    assert value == f"{fmt_btc(pps['share_credit_btc'])} BTC"
    assert fmt_btc(pps["value_btc"]) not in value
    assert "capped: one block" in sub and f"exactly {pps['share_credit_btc']} BTC" in title

    # one balance per address, equal to the API's, none in the worker rows
    workers = after["/api/workers"]["workers"]
    expected_rows = {w["address"]: w["balance"] for w in workers}
    rows = [e for e in dom.find("tr") if "data-address" in e.attrs]
    assert sorted(r.attrs["data-address"] for r in rows) == sorted(expected_rows)
    for row in rows:
        cells = [e for e in dom.find("td") if e.parents and e.parents[-1] is row]
        balance = expected_rows[row.attrs["data-address"]]
        assert cells[1].text == "1"  # one worker listed per address here
        assert cells[2].attrs["title"] == f"exactly {balance['balance_btc']} BTC"
        assert cells[2].text == fmt_btc(balance["balance_btc"])
        assert cells[3].attrs["title"] == f"exactly {balance['credited_btc']} BTC"
    assert any(b["balance"]["balance_units"] > 0 for b in workers)
    for row in (e for e in dom.find("tr") if "data-worker" in e.attrs):
        cells = [e for e in dom.find("td") if e.parents and e.parents[-1] is row]
        assert len(cells) == 10 and not [c for c in cells if "exactly" in c.attrs.get("title", "")]
        # the best share column: the worker's all-time best (this round's in brackets)
        best = {w["name"]: w["best_share"] for w in workers}[row.attrs["data-worker"]]
        assert best["best_difficulty"] > 0 and cells[8].text.endswith(")"), cells[8].text

    # the orphaned block: "orphaned", not confirmations -1
    blocks = {b["hash"]: b for b in after["/api/blocks"]["blocks"]}
    assert blocks[block["hash"]]["status"] == "orphaned"
    assert blocks[block["hash"]]["confirmations"] == -1  # the API's number, as bitcoind says
    rows = {e.attrs["data-block"]: e for e in dom.find("tr") if "data-block" in e.attrs}
    assert set(rows) == set(blocks)
    for block_hash, row in rows.items():
        cells = [e.text for e in dom.find("td") if e.parents and e.parents[-1] is row]
        status, confirmations = cells[5], cells[6]
        assert status == blocks[block_hash]["status"]
        if status == "orphaned":
            assert confirmations == "orphaned"
        else:
            assert confirmations == str(blocks[block_hash]["confirmations"])
        assert "-1" not in cells
