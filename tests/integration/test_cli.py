"""``stratum-pool run`` as a subprocess: start-up checks, a managed node, clean shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pool.node.managed import ManagedNode, free_port
from tests.integration.harness import wallet_address

pytestmark = pytest.mark.integration

MAINNET_ADDR = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pool", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def external_config(tmp_path: Path, node: ManagedNode, payout: str) -> Path:
    path = tmp_path / "pool.toml"
    path.write_text(
        f'[node]\nmode = "external"\nrpc_url = "{node.rpc_url}"\n'
        f'cookie_file = "{node.cookie_file}"\n'
        f'[pool]\npayout_address = "{payout}"\ndata_dir = "{tmp_path / "data"}"\n'
        f"[[stratum.ports]]\nport = {free_port()}\n"
    )
    return path


async def test_payout_address_of_another_chain_refuses_to_start(
    regtest_node: ManagedNode, tmp_path: Path
) -> None:
    result = run_cli("run", "--config", str(external_config(tmp_path, regtest_node, MAINNET_ADDR)))
    assert result.returncode == 2, result.stderr
    assert MAINNET_ADDR in result.stderr and "regtest" in result.stderr
    assert "refusing to start" in result.stderr


async def test_wrong_rpc_credentials_fail_with_clear_message(
    regtest_node: ManagedNode, tmp_path: Path
) -> None:
    payout = await wallet_address(regtest_node)
    path = tmp_path / "pool.toml"
    path.write_text(
        f'[node]\nmode = "external"\nrpc_url = "{regtest_node.rpc_url}"\nrpc_user = "nobody"\n'
        f'[pool]\npayout_address = "{payout}"\n'
    )
    started = time.monotonic()
    result = run_cli("run", "--config", str(path), env={"POOL_RPC_PASSWORD": "hunter2-secret"})
    assert result.returncode == 1
    assert "rejected the RPC credentials" in result.stderr
    assert "hunter2-secret" not in result.stderr + result.stdout
    assert time.monotonic() - started < 30  # not retried forever


def test_config_check_reports_bad_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[stratum]\nport = 3333\n")
    result = run_cli("config", "check", str(path))
    assert result.returncode == 2
    assert "stratum.port" in result.stderr and str(path) in result.stderr
    # --static: the file alone (its ports 3333 and 8080 may be taken on a test machine; the
    # checks against the machine are tested in tests/reliability/test_clean_errors.py)
    ok = run_cli("config", "check", "--static", "configs/regtest.toml")
    assert ok.returncode == 0
    assert json.loads(ok.stdout)["stratum"]["ports"][0]["port"] == 3333


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
def test_run_with_managed_node_mines_and_shuts_down_cleanly(
    tmp_path: Path, event_loop: str
) -> None:
    """What `make run` does: the default config, a managed regtest bitcoind, miners welcome
    (on either event loop)."""
    if event_loop == "uvloop":
        pytest.importorskip("uvloop", reason="uvloop is in the dev and fast extras")
    port = free_port()
    api_port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pool",
            "run",
            "--data-dir",
            str(tmp_path / "data"),
            "--stratum-port",
            str(port),
            "--api-port",
            str(api_port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group of its own, as a terminal's job
        env={
            **os.environ,
            "POOL_LOGGING_FORMAT": '"json"',
            "POOL_STRATUM_EVENT_LOOP": json.dumps(event_loop),
        },
    )
    try:
        deadline = time.monotonic() + 90
        events: list[dict[str, object]] = []
        assert proc.stderr is not None
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
            if events[-1].get("event") == "pool_started":
                break
        names = [e.get("event") for e in events]
        assert "pool_started" in names, names
        limits = next(e for e in events if e.get("event") == "limits")
        assert limits["max_line_bytes"] == 16384
        payout = next(e for e in events if e.get("event") == "payout_address")["address"]
        miner = run_cli(
            "miner",
            "-o",
            f"stratum+tcp://127.0.0.1:{port}",
            "-u",
            f"{payout}.cli",
            "--max-shares",
            "3",
            "--duration",
            "60",
            timeout=90,
        )
        summary = json.loads(miner.stdout.strip().splitlines()[-1])
        assert summary["accepted"] >= 3 and summary["rejected"] == 0, miner.stderr
        # The API and dashboard are up as well (what the README tells operators to open).
        base = f"http://127.0.0.1:{api_port}"
        with urllib.request.urlopen(f"{base}/healthz", timeout=10) as resp:
            assert resp.status == 200
        with urllib.request.urlopen(f"{base}/api/workers/{payout}.cli", timeout=10) as resp:
            worker = json.loads(resp.read())
        assert worker["ledger"]["shares"] >= summary["accepted"]
        with urllib.request.urlopen(f"{base}/", timeout=10) as resp:
            assert b"<html" in resp.read().lower()
    finally:
        # Ctrl-C at a terminal: SIGINT to the whole foreground group (the pool's own here)
        os.killpg(proc.pid, signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "pool_stopped" in err
    # the node was not hit by the Ctrl-C: the pool stopped it, in order, after its own shutdown
    stopped = [
        e
        for e in map(_json_or_none, err.splitlines())
        if e and e.get("event") in ("bitcoind_stopped", "bitcoind_unavailable")
    ]
    assert [e["event"] for e in stopped] == ["bitcoind_stopped"], stopped
    assert stopped[0]["returncode"] == 0


def _json_or_none(line: str) -> dict[str, object] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
