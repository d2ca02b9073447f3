"""A job's state inside its run (not an aggregate of its own: see domain/run.py), and how an
attempt's ending is written onto it. Shared by the run's commands and its events' appliers."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple
from uuid import UUID

from domain.artifacts import StoredArtifact
from domain.status import Abandonment, JobStatus
from domain.workflow import JobSpec

# The reasons a job fails without an exit code of its own, as users read them.
RUNNER_LOST = Abandonment.RUNNER_LOST.reason
TIMED_OUT = Abandonment.TIMED_OUT.reason
NOT_PICKED_UP = "not picked up"
# Not a failure: the runner was told to stop and gave the attempt back; the job runs again
# as its next attempt without using one of its retries.
RUNNER_STOPPED = Abandonment.RUNNER_STOPPED.reason

class PlannedJob(NamedTuple):
    """One job of a `RunPlanned`, typed."""

    id: str
    spec: JobSpec


@dataclass
class Job:
    """A job's state inside its run (not a separate aggregate: see the module docstring)."""

    id: UUID
    index: int
    spec: JobSpec
    status: JobStatus = JobStatus.PENDING
    attempt: int = 0
    runner_id: str | None = None
    exit_code: int | None = None
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    handed_back: int = 0  # attempts given back by stopping runners: they use no retry
    # The three clocks of ARCHITECTURE.md, each an absolute deadline recorded in the events.
    pick_up_by: datetime | None = None  # queued: fails "not picked up" past it
    lease_expires_at: datetime | None = None  # running: the attempt is lost past it
    timeout_at: datetime | None = None  # running: the job fails "timed out" past it
    # The files its latest attempt that stored any left (domain/artifacts.py), by path.
    artifacts: dict[str, StoredArtifact] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    def holds(self, attempt: int) -> bool:
        """True while `attempt` is this job's current, running attempt."""
        return self.status is JobStatus.RUNNING and self.attempt == attempt



def end_job(job: Job, status: JobStatus, exit_code: int | None, error: str | None, at: datetime) -> None:
    job.status = status
    job.exit_code = exit_code
    job.error = error
    job.finished_at = at
    job.lease_expires_at = None  # an ended attempt holds no lease


def runs_after(when: str, earlier_failure: bool) -> bool:
    """Whether a pending job with this `when` runs, given whether an earlier job of its run failed."""
    if when == "always":
        return True
    if when == "on_failure":
        return earlier_failure
    return not earlier_failure
