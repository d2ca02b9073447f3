"""The events of a run's jobs and their attempts (queued, started, kept alive, ended) and of the
files an attempt leaves (artifacts, caches), and how each changes the run. Stored under the
topics `RunEvent` gives (domain/run_events.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from domain.artifacts import StoredArtifact
from domain.job import end_job
from domain.run_events import RunEvent
from domain.status import Abandonment, JobStatus, RunStatus

if TYPE_CHECKING:
    from domain.run import Run


class JobQueued(RunEvent):
    job_id: str
    attempt: int
    pick_up_by: datetime
    actor: str

    def apply(self, run: Run) -> None:
        job = run.job(self.job_id)
        job.status = JobStatus.QUEUED
        job.attempt = self.attempt
        job.queued_at = self.timestamp
        job.pick_up_by = self.pick_up_by
        job.runner_id = None
        job.started_at = job.lease_expires_at = job.timeout_at = None


class JobStarted(RunEvent):
    # v2 records where the attempt runs (the runner's pool and executor).
    class_version = 2

    job_id: str
    attempt: int
    runner_id: str
    lease_expires_at: datetime
    timeout_at: datetime
    executor: str
    pool: str
    actor: str

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        # Before v2 every runner served the one pool with the local executor.
        state["executor"] = "local"
        state["pool"] = "default"

    def apply(self, run: Run) -> None:
        job = run.job(self.job_id)
        job.status = JobStatus.RUNNING
        job.runner_id = self.runner_id
        job.started_at = self.timestamp
        job.lease_expires_at = self.lease_expires_at
        job.timeout_at = self.timeout_at
        run.status = RunStatus.RUNNING


class JobLeaseExtended(RunEvent):
    job_id: str
    attempt: int
    lease_expires_at: datetime
    actor: str

    def apply(self, run: Run) -> None:
        run.job(self.job_id).lease_expires_at = self.lease_expires_at


class JobAttemptAbandoned(RunEvent):
    """An attempt ended without a result of its own (runner lost, timed out)."""

    # v2 records the kind (an Abandonment) beside the reason users read: replay acts on it.
    class_version = 2

    job_id: str
    attempt: int
    reason: str
    kind: str
    actor: str

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        # v1 had the reason alone, and only these three wordings of it were ever written.
        state["kind"] = {kind.reason: kind.value for kind in Abandonment}[state["reason"]]

    def apply(self, run: Run) -> None:
        job = run.job(self.job_id)
        job.error = self.reason
        job.lease_expires_at = None
        if self.kind == Abandonment.RUNNER_STOPPED:
            job.handed_back += 1


class JobCancelled(RunEvent):
    job_id: str
    attempt: int
    actor: str

    def apply(self, run: Run) -> None:
        end_job(run.job(self.job_id), JobStatus.CANCELLED, None, "cancelled", self.timestamp)


class ArtifactUploaded(RunEvent):
    """A file the attempt stored (domain/artifacts.py), recorded in the save of its outcome."""

    job_id: str
    attempt: int
    path: str
    size: int
    sha256: str
    object: str
    expires_at: datetime
    actor: str

    def apply(self, run: Run) -> None:
        job = run.job(self.job_id)
        if any(stored.attempt != self.attempt for stored in job.artifacts.values()):
            job.artifacts = {}  # a later attempt's files replace an earlier one's
        job.artifacts[self.path] = StoredArtifact(path=self.path, attempt=self.attempt, size=self.size,
                                                  sha256=self.sha256, object=self.object,
                                                  expires_at=self.expires_at)


class ArtifactsExpired(RunEvent):
    """Files of the job past their expiry, removed from the object store."""

    job_id: str
    paths: list[str]
    actor: str

    def apply(self, run: Run) -> None:
        job = run.job(self.job_id)
        for path in self.paths:
            job.artifacts.pop(path, None)


class CacheRestored(RunEvent):
    """What the attempt's cache restore found (domain/caches.py), recorded with its outcome."""

    job_id: str
    attempt: int
    key: str
    result: str  # hit, partial or miss
    restored_key: str | None
    actor: str

    def apply(self, run: Run) -> None:
        pass  # for the history and the read model: nothing of the run depends on it


class CacheSaved(RunEvent):
    """The attempt saved its cache entry, recorded with its outcome."""

    job_id: str
    attempt: int
    key: str
    size: int
    sha256: str
    actor: str

    def apply(self, run: Run) -> None:
        pass


class JobSucceeded(RunEvent):
    job_id: str
    attempt: int
    exit_code: int
    actor: str

    def apply(self, run: Run) -> None:
        end_job(run.job(self.job_id), JobStatus.SUCCEEDED, self.exit_code, None, self.timestamp)


class JobFailed(RunEvent):
    job_id: str
    attempt: int
    exit_code: int | None
    error: str | None
    actor: str

    def apply(self, run: Run) -> None:
        end_job(run.job(self.job_id), JobStatus.FAILED, self.exit_code, self.error, self.timestamp)


class JobSkipped(RunEvent):
    job_id: str
    attempt: int
    reason: str
    actor: str

    def apply(self, run: Run) -> None:
        end_job(run.job(self.job_id), JobStatus.SKIPPED, None, None, self.timestamp)


# The events after which a job's attempt is over (its runner slot is free, its log complete).
# JobSkipped ends a job that never had an attempt (attempt 0).
ATTEMPT_ENDING_EVENTS = (JobSucceeded, JobFailed, JobCancelled, JobSkipped, JobAttemptAbandoned)
