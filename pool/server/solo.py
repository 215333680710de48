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

# A SOLO job and its notify (event, encoded line); the notify only while its pool job is the
# newest (the fan-out's): older jobs keep the job alone (~0.7 KiB instead of ~2.4 KiB).
SoloEntry = tuple[Job, tuple[Notify, bytes] | None]


class _Held:
    """One pool job, its notify (the SOLO ones are made from it) and its SOLO jobs."""

    __slots__ = ("event", "job", "line", "old", "per_script")

    def __init__(self, job: Job) -> None:
        self.job = job
        self.event = notify_event(job, job.job_id, job.clean)
        self.line = encode_notification(self.event)
        self.old = f'"{self.event.coinb2}"'.encode()
        self.per_script: dict[bytes, SoloEntry] = {}

    def demote(self) -> None:
        """A newer pool job arrived: drop the notify lines (made again if ever needed)."""
        self.per_script = {script: (entry[0], None) for script, entry in self.per_script.items()}
        self.line = b""

    def make(self, made: Job) -> tuple[Notify, bytes] | None:
        """The notify of a SOLO job: the pool job's, another coinb2 (hex, so the encoded line
        is the pool's line with that one string replaced)."""
        if not self.line:
            return None
        base = self.event
        coinb2 = made.coinb2.hex()
        event = Notify(
            base.job_id,
            base.prevhash,
            base.coinb1,
            coinb2,
            base.merkle_branch,
            base.version,
            base.nbits,
            base.ntime,
            base.clean_jobs,
        )
        if self.line.count(self.old) != 1:  # never seen: coinb2's hex inside another field
            return event, encode_notification(event)
        return event, self.line.replace(self.old, f'"{coinb2}"'.encode())


class SoloJobs:
    """The SOLO jobs of one port, per pool job and payout script."""

    __slots__ = ("_by_job", "built", "fee_bps", "jobs")

    def __init__(self, jobs: JobTable, fee_bps: int = 0) -> None:
        self.jobs = jobs
        self.fee_bps = fee_bps
        self._by_job: dict[str, _Held] = {}  # pool job id -> its SOLO jobs
        self.built = 0  # SOLO jobs made so far (one per live job and distinct address)

    def get(self, job: Job, script: bytes) -> SoloEntry:
        """The SOLO job paying ``script`` made from the pool job ``job`` (made now if it is
        the first request for that pair), with its notify (the job's own id and clean flag)."""
        held = self._by_job.get(job.job_id)
        if held is None or held.job is not job:
            self._prune()
            for older in self._by_job.values():
                if older.line and older.job.created_at <= job.created_at:
                    older.demote()
            held = self._by_job[job.job_id] = _Held(job)
        entry = held.per_script.get(script)
        if entry is None:
            made = solo_job(job, script, self.fee_bps)
            entry = held.per_script[script] = (made, held.make(made))
            self.built += 1
        return entry

    def _prune(self) -> None:
        """Forget the jobs no longer live (their shares are stale anyway)."""
        live = self.jobs
        for job_id in [j for j, held in self._by_job.items() if live.get(j) is not held.job]:
            del self._by_job[job_id]

    def __len__(self) -> int:
        """How many SOLO jobs are held."""
        return sum(len(held.per_script) for held in self._by_job.values())


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
