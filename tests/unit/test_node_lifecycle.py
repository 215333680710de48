"""The managed node's pure parts and its process checks, on real processes: the restart
backoff, the stale decision of a block submission, leftover detection by command line and
pidfile, the new [node] config keys."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pool.config import Config, ConfigError, limits_summary, load
from pool.node.lifecycle import (
    Backoff,
    Leftover,
    alive,
    find_leftovers,
    leftover_of,
    stop_leftover,
)
from pool.node.submit import SubmitStatus, chain_decision


def test_backoff_doubles_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(0.5, 3.0)
    assert [backoff.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5


@pytest.mark.parametrize(("initial", "maximum"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_backoff_refuses_nonsense(initial: float, maximum: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(initial, maximum)


def test_chain_decision() -> None:
    ours, other = "aa" * 32, "bb" * 32
    assert chain_decision(ours, 7, None) is None  # the chain is not at that height: retry
    accepted = chain_decision(ours, 7, ours)
    assert accepted is not None and accepted[0] is SubmitStatus.ACCEPTED
    stale = chain_decision(ours, 7, other)
    assert stale is not None and stale[0] is SubmitStatus.STALE
    assert other in stale[1] and "height 7" in stale[1]


def wait_exec(proc: subprocess.Popen[bytes], link: Path, timeout: float = 10.0) -> None:
    """Until the child has exec'd (before that its command line is its parent's)."""
    deadline = time.monotonic() + timeout
    cmdline = Path(f"/proc/{proc.pid}/cmdline")
    while not cmdline.read_bytes().startswith(str(link).encode()):
        assert time.monotonic() < deadline, "the fake node did not start"
        time.sleep(0.01)


@pytest.fixture
def fake_bitcoind(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A real process whose command line looks like a bitcoind on ``tmp_path/node``: a python
    started through a link named bitcoind."""
    link = tmp_path / "bin" / "bitcoind"
    link.parent.mkdir()
    link.symlink_to(sys.executable)
    datadir = tmp_path / "node"
    datadir.mkdir()
    proc = subprocess.Popen(
        [
            str(link),
            "-c",
            "import time; time.sleep(120)",
            "-regtest",
            f"-datadir={datadir}",
            "-rpcport=1",
        ]
    )
    try:
        wait_exec(proc, link)
        yield proc, datadir
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_leftover_is_recognised_by_its_command_line(
    fake_bitcoind: tuple[subprocess.Popen[bytes], Path], tmp_path: Path
) -> None:
    proc, datadir = fake_bitcoind
    assert leftover_of(proc.pid, datadir) == Leftover(proc.pid, 1)
    assert leftover_of(proc.pid, tmp_path / "elsewhere") is None  # another data dir
    assert leftover_of(os.getpid(), datadir) is None  # not a bitcoind
    # found without a pidfile (by /proc), and through a pidfile
    assert [x.pid for x in find_leftovers(datadir)] == [proc.pid]
    (datadir / "regtest").mkdir()
    (datadir / "regtest" / "bitcoind.pid").write_text(f"{proc.pid}\n")
    assert [x.pid for x in find_leftovers(datadir)] == [proc.pid]
    # a zombie (exited, not yet reaped) is not a leftover
    os.kill(proc.pid, signal.SIGKILL)
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    assert not alive(proc.pid)
    assert find_leftovers(datadir) == []


def test_pidfile_of_another_process_is_ignored(tmp_path: Path) -> None:
    datadir = tmp_path / "node"
    (datadir / "regtest").mkdir(parents=True)
    (datadir / "regtest" / "bitcoind.pid").write_text(f"{os.getpid()}\n")
    assert find_leftovers(datadir) == []
    (datadir / "regtest" / "bitcoind.pid").write_text("not a pid\n")
    assert find_leftovers(datadir) == []


async def test_leftover_that_does_not_answer_rpc_is_terminated(
    fake_bitcoind: tuple[subprocess.Popen[bytes], Path],
) -> None:
    proc, datadir = fake_bitcoind
    (leftover,) = find_leftovers(datadir)
    how = await stop_leftover(leftover, datadir / "regtest" / ".cookie", timeout=10.0)
    assert how == "sigterm"
    assert proc.wait(10) == -signal.SIGTERM


async def test_leftover_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    link = tmp_path / "bitcoind"
    link.symlink_to(sys.executable)
    datadir = tmp_path / "node"
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(120)"
    )
    proc = subprocess.Popen([str(link), "-c", code, f"-datadir={datadir}"], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"  # SIGTERM is ignored from now on
        leftover = leftover_of(proc.pid, datadir)
        assert leftover is not None
        assert await stop_leftover(leftover, datadir / ".cookie", timeout=1.0) == "sigkill"
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def load_str(text: str, tmp: Path) -> Config:
    path = tmp / "pool.toml"
    path.write_text(text)
    return load(path, env={})


NODE_KEYS = (
    "longpoll_timeout_seconds",
    "poll_interval_seconds",
    "restart_backoff_seconds",
    "stop_timeout_seconds",
    "submit_retry_seconds",
)


@pytest.mark.parametrize("key", NODE_KEYS)
@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_node_timing_keys_must_be_positive(key: str, value: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"node.{key}"):
        load_str(f"[node]\n{key} = {value}\n", tmp_path)


def test_backoff_maximums_are_not_below_their_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"node\.restart_backoff_max_seconds"):
        load_str(
            "[node]\nrestart_backoff_seconds = 5.0\nrestart_backoff_max_seconds = 1.0\n", tmp_path
        )
    with pytest.raises(ConfigError, match=r"node\.submit_retry_max_seconds"):
        load_str("[node]\nsubmit_retry_seconds = 5.0\nsubmit_retry_max_seconds = 1.0\n", tmp_path)


@pytest.mark.parametrize("value", ["-1", "1001"])
def test_resubmit_recent_blocks_is_bounded(value: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"node\.resubmit_recent_blocks"):
        load_str(f"[node]\nresubmit_recent_blocks = {value}\n", tmp_path)


@pytest.mark.parametrize("value", ["0", "0.05", "3601", "nan", "inf"])
def test_block_wait_is_bounded(value: str, tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"node\.block_wait_seconds must be (0\.1\.\.3600|finite)"
    ):
        load_str(f"[node]\nblock_wait_seconds = {value}\n", tmp_path)


def test_block_wait_is_read_and_logged_at_start(tmp_path: Path) -> None:
    config = load_str("[node]\nblock_wait_seconds = 15.5\n", tmp_path)
    assert config.node.block_wait_seconds == 15.5
    assert limits_summary(config)["node.block_wait_seconds"] == 15.5


def test_node_defaults(tmp_path: Path) -> None:
    node = load_str("", tmp_path).node
    assert node.block_wait_seconds == 60.0
    assert node.longpoll_timeout_seconds == 3600.0
    assert (node.restart_backoff_seconds, node.restart_backoff_max_seconds) == (1.0, 30.0)
    assert (node.submit_retry_seconds, node.submit_retry_max_seconds) == (0.5, 5.0)
    assert node.stop_timeout_seconds == 30.0
    assert node.resubmit_recent_blocks == 16
