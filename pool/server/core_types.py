"""What the per-connection core is made of and hands out: its settings (one per port, shared),
the accepted-share event whose answer waits for the ledger, and a job as a notify event."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from pool.jobs import Job
from pool.server.auth import Credentials
from pool.shares import ShareResult
from pool.vardiff import VardiffConfig
from stratum.events import Notify, Submit


@dataclass(frozen=True, slots=True)
class CoreSettings:
    """Everything a connection needs from the config (one per port, shared)."""

    extranonce2_size: int
    version_rolling_mask: int
    vardiff: VardiffConfig
    start_difficulty: float
    max_line_bytes: int = 16384
    handshake_timeout: float = 30.0
    idle_timeout: float = 600.0
    max_workers: int = 64
    max_invalid_in_row: int = 1000
    max_ntime_ahead: int = 7200
    max_sent_jobs: int = 32
    tick_seconds: float = 2.0  # vardiff's idle decay and time-based retargets
    invalid_share_burst: int = 100
    invalid_share_ratio: float = 0.5
    invalid_share_window: float = 60.0
    scheme: str = ""  # the port's payout scheme ("" = the ledger's), passed to the ledger


class ShareEvent(NamedTuple):
    """An accepted share waiting for the ledger; its answer comes from ``share_recorded``."""

    request: Submit
    result: ShareResult
    creds: Credentials


def notify_event(job: Job, job_id: str, clean: bool) -> Notify:
    params = job.notify_params()
    return Notify(
        job_id=job_id,
        prevhash=params[1],
        coinb1=params[2],
        coinb2=params[3],
        merkle_branch=tuple(params[4]),
        version=params[5],
        nbits=params[6],
        ntime=params[7],
        clean_jobs=clean,
    )
