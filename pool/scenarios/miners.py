"""Miner processes of a scenario: the bundled miner (``python -m pool miner``, throttled to
its set hashrate) or an external command such as cpuminer. Each runs as its own process, so
hashing never competes with the pool's event loop; joining starts one, leaving sends it
SIGINT (both miners stop hashing at once and exit cleanly)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import structlog

from pool.scenarios.spec import MinerSpec

log = structlog.get_logger("pool.scenarios.miners")

STOP_GRACE_SECONDS = 10.0


def share_difficulty(hashrate: float, interval: float) -> float:
    """The fixed share difficulty giving one share per ``interval`` seconds at ``hashrate``."""
    return hashrate * interval / 2**32


def miner_command(
    spec: MinerSpec, *, url: str, user: str, password: str, duration: float, record: Path
) -> list[str]:
    """The command line of one miner (placeholders of an external command filled in)."""
    if spec.command:
        values = {
            "url": url,
            "user": user,
            "password": password,
            "hashrate": f"{spec.hashrate:g}",
            "name": spec.name,
        }
        return [part.format(**values) for part in shlex.split(spec.command)]
    return [
        sys.executable,
        "-m",
        "pool",
        "miner",
        "--url",
        url,
        "--user",
        user,
        "--password",
        password,
        "--hashrate",
        f"{spec.hashrate:g}",
        "--duration",
        f"{duration:g}",  # a safety net: the scenario stops it long before
        "--record",
        str(record),
    ]


class MinerProcess:
    """One miner: started on join, asked to stop on leave, reaped without blocking the loop."""

    def __init__(self, spec: MinerSpec, folder: Path) -> None:
        self.spec = spec
        self.folder = folder
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopping = False
        self.runs = 0
        self.exits: list[dict[str, Any]] = []  # one per finished run

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def stdout_path(self) -> Path:
        return self.folder / f"{self.spec.name}.out"

    @property
    def stderr_path(self) -> Path:
        return self.folder / f"{self.spec.name}.log"

    def start(self, command: list[str]) -> None:
        if self.running:
            return
        self._collect()  # a previous run of this miner (it left and now joins again)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.runs += 1
        with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
            self.proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
            )
        self.stopping = False
        log.info("miner_started", miner=self.spec.name, pid=self.proc.pid, run=self.runs)

    def stop(self) -> None:
        """Ask it to stop (SIGINT); ``reap`` waits for it."""
        if self.proc is not None and self.proc.poll() is None:
            self.stopping = True
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGINT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    def exited_unexpectedly(self) -> bool:
        return self.proc is not None and not self.stopping and self.proc.poll() is not None

    async def reap(self, timeout: float = STOP_GRACE_SECONDS) -> None:
        """Wait for the process to exit (SIGKILL after ``timeout``) and record how it ended."""
        proc = self.proc
        if proc is None:
            return
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if time.monotonic() > deadline:
                log.warning("miner_killed", miner=self.spec.name, reason="did not stop in time")
                proc.kill()
                await asyncio.to_thread(proc.wait)
                break
            await asyncio.sleep(0.05)
        self._collect()

    def _collect(self) -> None:
        """Record a finished process: its exit code and, for the bundled miner, its JSON
        summary (the last line it printed)."""
        proc = self.proc
        if proc is None or proc.poll() is None:
            return
        self.proc = None
        summary: dict[str, Any] | None = None
        with contextlib.suppress(OSError, ValueError, IndexError):
            lines = self.stdout_path.read_text(errors="replace").strip().splitlines()
            parsed = json.loads(lines[-1])
            if isinstance(parsed, dict):
                summary = parsed
        log.info("miner_stopped", miner=self.spec.name, returncode=proc.returncode)
        self.exits.append({"returncode": proc.returncode, "summary": summary})

    def tail(self, lines: int = 8) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no output)"
        return "\n".join(text[-lines:]) or "(no output)"
