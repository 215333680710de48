"""The dashboard in headless Chromium (Debian's ``chromium``) against a running pool with two
real miners on it: the rendered DOM holds the hashrate chart and both workers, and a
screenshot shows the chart (its colours are found in the PNG's pixels)."""

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

import pytest
import pytest_asyncio

from pool.api.server import ApiServer
from pool.config import ApiConfig, ChainConfig, PortConfig, SimulationConfig
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
        yield Dashboard(f"http://127.0.0.1:{port}", names, addresses)
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
    assert {"Pool hashrate", "Simulated difficulty", "PPS value / difficulty 1"} <= labels
    assert dom.by_id("chain").text == "regtest"


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
