"""Clean errors, with real processes: ``stratum-pool run`` and ``config check`` refuse every
run-time config error with one line naming the key, before any bitcoind starts; a changed
simulated-chain setting is a warning naming the key and both values; the HTTP API of a running
``stratum-pool run`` answers an 8 KB URL, a deeply nested body, a bad Host and garbage with
JSON, and no traceback reaches its log. About 40 s (each CLI run is a fresh interpreter)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pool.api import guard
from pool.chain_sim import ChainSim
from pool.node.managed import ManagedNode, free_port
from tests.integration.harness import wallet_address

pytestmark = pytest.mark.integration

TOKEN = "clean-errors-token"
FLOOD = 500  # bad requests in a row


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pool", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


def bitcoind_using(path: Path) -> list[int]:
    """PIDs of bitcoind processes whose command line mentions ``path``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"bitcoind") and str(path).encode() in b" ".join(argv):
            pids.append(int(proc.name))
    return pids


def assert_one_line_naming(result: subprocess.CompletedProcess[str], key: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and key in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout


@pytest.fixture
def held_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


def chattr(flag: str, path: Path) -> None:
    result = subprocess.run(["chattr", flag, str(path)], capture_output=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"chattr {flag} not possible here: {result.stderr.decode().strip()}")


def managed_config(tmp_path: Path, body: str = "") -> Path:
    """The default managed-node config (a bitcoind would be started under the data dir)."""
    path = tmp_path / "pool.toml"
    path.write_text(f'[pool]\ndata_dir = "{tmp_path / "data"}"\n{body}')
    return path


CASES: dict[str, tuple[str, str]] = {
    # name: (config body, key named in the error)
    "api-port-is-a-stratum-port": (
        "[[stratum.ports]]\nport = 4444\n[api]\nport = 4444\n",
        "api.port",
    ),
    "two-stratum-ports-equal": (
        "[[stratum.ports]]\nport = 4445\n[[stratum.ports]]\nport = 4445\n[api]\nport = 0\n",
        "stratum.ports[1].port",
    ),
    "initial-difficulty-below-regtest": (
        "[chain.simulation]\nenabled = true\ninitial_difficulty = 1e-12\n",
        "chain.simulation.initial_difficulty",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_config_errors_refused_by_run_and_check(tmp_path: Path, case: str) -> None:
    body, key = CASES[case]
    path = managed_config(tmp_path, body)
    assert_one_line_naming(cli("run", "--config", str(path)), key)
    assert_one_line_naming(cli("config", "check", str(path)), key)
    assert not (tmp_path / "data" / "bitcoind").exists() and bitcoind_using(tmp_path) == []


@pytest.mark.parametrize("which", ["stratum", "api"])
def test_port_in_use_refused_before_bitcoind(tmp_path: Path, held_port: int, which: str) -> None:
    stratum, api = (held_port, 0) if which == "stratum" else (0, held_port)
    path = managed_config(tmp_path, f"[[stratum.ports]]\nport = {stratum}\n[api]\nport = {api}\n")
    key = "stratum.ports[0].port" if which == "stratum" else "api.port"
    for result in (cli("run", "--config", str(path)), cli("config", "check", str(path))):
        assert_one_line_naming(result, key)
        assert f"127.0.0.1:{held_port}" in result.stderr and "in use" in result.stderr
    assert cli("config", "check", "--static", str(path)).returncode == 0  # the file is fine
    # the command-line port options are checked the same way (the other port: any free one,
    # not the shipped default another program on this machine may hold)
    other = "api" if which == "stratum" else "stratum"
    result = cli(
        "run",
        "--data-dir",
        str(tmp_path / "data"),
        f"--{which}-port",
        str(held_port),
        f"--{other}-port",
        "0",
    )
    assert_one_line_naming(result, key)
    assert not (tmp_path / "data" / "bitcoind").exists() and bitcoind_using(tmp_path) == []


def test_command_line_port_equal_to_another_stratum_port(tmp_path: Path) -> None:
    path = managed_config(
        tmp_path, "[[stratum.ports]]\nport = 0\n[[stratum.ports]]\nport = 4446\n[api]\nport = 0\n"
    )
    result = cli("run", "--config", str(path), "--stratum-port", "4446")
    assert_one_line_naming(result, "stratum.ports[1].port")
    assert "command-line options" in result.stderr
    result = cli("run", "--config", str(path), "--api-port", "4446")
    assert_one_line_naming(result, "api.port")


def test_config_path_that_cannot_be_read(tmp_path: Path) -> None:
    loop = tmp_path / "loop.toml"
    loop.symlink_to(loop)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\x00\xff\xfe" * 10)
    for path, words in (
        (tmp_path, "is a directory"),
        (loop, "cannot read the config file"),
        (binary, "not a text file"),
        (tmp_path / "absent.toml", "no such config file"),
    ):
        for args in (("run", "--config", str(path)), ("config", "check", str(path))):
            result = cli(*args)
            assert_one_line_naming(result, str(path))
            assert words in result.stderr
    assert bitcoind_using(tmp_path) == []


def test_data_dir_not_writable_or_a_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    chattr("+i", data)
    try:
        for args in (("run",), ("config", "check")):
            path = managed_config(tmp_path, "[api]\nport = 0\n[[stratum.ports]]\nport = 0\n")
            result = (
                cli(*args, "--config", str(path)) if args == ("run",) else cli(*args, str(path))
            )
            assert_one_line_naming(result, "pool.data_dir")
            assert "not writable" in result.stderr
    finally:
        chattr("-i", data)
    assert not (data / "bitcoind").exists() and bitcoind_using(tmp_path) == []
    afile = tmp_path / "afile"
    afile.write_text("")
    result = cli("run", "--data-dir", str(afile), "--stratum-port", "0", "--api-port", "0")
    assert_one_line_naming(result, "pool.data_dir")
    assert "not a directory" in result.stderr


# -- a running pool (external node: the session's bitcoind) -------------------------------------


def external_config(tmp_path: Path, node: ManagedNode, payout: str, extra: str = "") -> Path:
    path = tmp_path / "pool.toml"
    path.write_text(
        f'[node]\nmode = "external"\nrpc_url = "{node.rpc_url}"\n'
        f'cookie_file = "{node.cookie_file}"\n'
        f'[pool]\npayout_address = "{payout}"\ndata_dir = "{tmp_path / "data"}"\n'
        f"[[stratum.ports]]\nport = {free_port()}\n"
        f'[logging]\nformat = "json"\n{extra}'
    )
    return path


class Running:
    """``stratum-pool run`` in the background, its log (stderr) in a file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        self._out = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pool", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=self._out,
            env={**os.environ, "POOL_API_TOKEN": TOKEN},
        )

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.log.read_text().splitlines() if x.strip()]

    def wait_for_event(self, event: str, timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines():
                if line.get("event") == event:
                    return line
            assert self.proc.poll() is None, self.log.read_text()
            time.sleep(0.1)
        raise AssertionError(f"no {event} within {timeout} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self._out.close()
        return code


async def test_changed_simulation_setting_is_a_warning_with_both_values(
    regtest_node: ManagedNode, tmp_path: Path
) -> None:
    payout = await wallet_address(regtest_node)
    saved = ChainSim(
        initial_difficulty=1.0, retarget_interval=2016, target_spacing=600.0, start_time=0.0
    )
    (tmp_path / "data").mkdir()
    state_file = tmp_path / "data" / "chain_sim.json"
    state_file.write_text(json.dumps(saved.to_state()))
    extra = "[api]\nport = 0\n[chain.simulation]\nenabled = true\ninitial_difficulty = 2.0\n"
    config = external_config(tmp_path, regtest_node, payout, extra)
    check = cli("config", "check", str(config))
    assert check.returncode == 0, check.stderr
    (warning,) = check.stderr.splitlines()
    assert warning.startswith("warning: chain.simulation.initial_difficulty = 2.0 is ignored")
    assert "goes on with 1.0" in warning and f"delete {state_file}" in warning
    pool = Running(config, tmp_path / "pool.log")
    try:
        line = pool.wait_for_event("chain_sim_setting_ignored")
        assert line["level"] == "warning"
        assert (line["key"], line["saved"], line["configured"]) == (
            "chain.simulation.initial_difficulty",
            1.0,
            2.0,
        )
        assert str(state_file) in line["note"]
        pool.wait_for_event("pool_started")
    finally:
        assert pool.stop() == 0


async def http(port: int, request: bytes) -> tuple[int, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), raw[:500]
    return int(head.split()[1]), json.loads(body)


async def test_http_errors_are_json_and_no_traceback_reaches_the_log(
    regtest_node: ManagedNode, tmp_path: Path
) -> None:
    payout = await wallet_address(regtest_node)
    api_port = free_port()
    config = external_config(tmp_path, regtest_node, payout, f"[api]\nport = {api_port}\n")
    pool = Running(config, tmp_path / "pool.log")
    try:
        pool.wait_for_event("pool_started")
        url = b"/api/pool?" + b"x" * 8192
        status, body = await http(api_port, b"GET " + url + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert (status, body["status"]) == (414, 414), body
        nested = b"[" * 5000 + b"]" * 5000
        admin = (
            f"POST /api/admin/ban HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Length: {len(nested)}\r\nConnection: close\r\n\r\n"
        ).encode()
        status, body = await http(api_port, admin + nested)
        assert (status, body["error"]) == (400, "the body is nested too deeply")
        bad_host = b"GET /api/pool HTTP/1.1\r\nHost: rebound.example\r\nConnection: close\r\n\r\n"
        status, body = await http(api_port, bad_host)
        assert status == 421 and "api.allowed_hosts" in body["error"]
        status, body = await http(api_port, b"\x16\x03\x01 not http\r\n\r\n")
        assert status == 400 and body["status"] == 400
        good = b"GET /api/pool HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        assert (await http(api_port, good))[0] == 200  # still serving
        # a flood of bad requests: the log grows by a few lines, not one per request
        before, started = pool.log.stat().st_size, time.monotonic()
        flood = b"GET " + url + b" HTTP/1.1\r\nHost: localhost\r\n\r\n"
        for _ in range(FLOOD):
            assert (await http(api_port, flood))[0] == 414
        windows = (time.monotonic() - started) / guard.LOG_WINDOW_SECONDS + 1
        assert (await http(api_port, good))[0] == 200
    finally:
        assert pool.stop() == 0
    grown = pool.log.stat().st_size - before
    print(f"{FLOOD} bad requests in {time.monotonic() - started:.1f} s: log +{grown} bytes")
    assert grown < 400 * guard.LOG_BURST * (windows + 1)
    text = pool.log.read_text()
    assert "Traceback" not in text
    lines = pool.lines()  # every line of the log is one JSON object
    events = [x["event"] for x in lines]
    assert events.count("http_bad_request") >= 2 and "api_host_refused" in events
    assert max(len(json.dumps(x)) for x in lines if x["event"].startswith("http_")) < 1000
