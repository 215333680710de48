"""SOLO ports: each miner's jobs pay its own address (pure: no asyncio, no clock).

A SOLO job is the pool's job with another coinb2 (:func:`pool.jobs.solo_job`); everything
else (id, template, merkle branch, targets) is the pool's job's. :class:`SoloJobs` (one per
SOLO port) makes each (job, payout script) pair once, with its ``mining.notify`` event and
encoded line, the first time a connection of that address needs it: 1 000 miners paying one
address share one job object and one notify line; the pool's fan-out of a new job costs one
dict lookup per SOLO connection plus one coinbase per distinct address. Entries of jobs that
left the live-job table are dropped when a newer job arrives.
"""

from __future__ import annotations

from pool.jobs import Job, JobTable, solo_job
from pool.server.auth import Credentials
from pool.server.core_types import notify_event
from stratum.events import Notify
from stratum.notifications import encode_notification

SoloEntry = tuple[Job, tuple[Notify, bytes]]


class SoloJobs:
    """The SOLO jobs of one port, per pool job and payout script."""

    __slots__ = ("_by_job", "built", "fee_bps", "jobs")

    def __init__(self, jobs: JobTable, fee_bps: int = 0) -> None:
        self.jobs = jobs
        self.fee_bps = fee_bps
        # pool job id -> (the pool job, {payout script: its SOLO job and notify})
        self._by_job: dict[str, tuple[Job, dict[bytes, SoloEntry]]] = {}
        self.built = 0  # SOLO jobs made so far (one per live job and distinct address)

    def get(self, job: Job, script: bytes) -> SoloEntry:
        """The SOLO job paying ``script`` made from the pool job ``job`` (made now if it is
        the first request for that pair), with its notify (the job's own id and clean flag)."""
        held = self._by_job.get(job.job_id)
        if held is None or held[0] is not job:
            held = (job, {})
            self._prune()
            self._by_job[job.job_id] = held
        per_script = held[1]
        entry = per_script.get(script)
        if entry is None:
            made = solo_job(job, script, self.fee_bps)
            event = notify_event(made, job.job_id, job.clean)
            entry = per_script[script] = (made, (event, encode_notification(event)))
            self.built += 1
        return entry

    def _prune(self) -> None:
        """Forget the jobs no longer live (their shares are stale anyway)."""
        live = self.jobs
        for job_id in [j for j, (job, _) in self._by_job.items() if live.get(j) is not job]:
            del self._by_job[job_id]

    def __len__(self) -> int:
        """How many SOLO jobs are held."""
        return sum(len(per) for _, per in self._by_job.values())


def solo_refusal(
    solo: SoloJobs | None, payee: Credentials | None, creds: Credentials
) -> str | None:
    """Why ``creds`` may not log in on this connection, or None. A SOLO connection's jobs pay
    the address of its first authorized worker: more workers of that address are welcome
    (``ADDRESS.rig1``, ``ADDRESS.rig2`` behind one proxy), a worker of another address is
    refused, because its shares would search for blocks paying someone else."""
    if solo is None or payee is None or creds.address == payee.address:
        return None
    return (
        f"SOLO port: this connection's jobs pay {payee.address}; worker {creds.name} has another "
        "address, so its blocks would pay someone else: authorize it on a connection of its own"
    )
