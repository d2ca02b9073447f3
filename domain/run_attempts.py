"""A run's commands about its jobs' attempts: a runner starts one, keeps its lease, gives it
back or reports nothing in time, and the attempt is then retried or the job fails. Mixed into
`Run` (domain/run.py), whose state, `cancel` and `_advance` they use.

Fencing lives here: only the runner holding the current, running attempt may act on it; every
other report is refused as stale.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

from domain import job_events
from domain.errors import InvalidTransitionError, StaleAttemptError
from domain.job import NOT_PICKED_UP, RUNNER_STOPPED, Job
from domain.status import Abandonment, JobStatus


class AttemptCommands:
    if TYPE_CHECKING:  # what it uses of Run
        lease: timedelta
        queue_timeout: timedelta
        superseded_by: str | None

        def job(self, job_id: UUID | str) -> Job: ...
        def cancel(self, at: datetime, actor: str) -> bool: ...
        def _advance(self, at: datetime, actor: str) -> None: ...
        def trigger_event(self, event_class: type, **kwargs: Any) -> None: ...

    def start_job(
        self, job_id: UUID | str, attempt: int, runner_id: str, at: datetime, *,
        executor: str = "local", pool: str = "default",
    ) -> bool:
        """A runner claims attempt `attempt` of a job. Returns False when it already holds it.

        Where it runs (the runner's pool and executor) is recorded for the audit trail.
        """
        job = self.job(job_id)
        self._check_attempt(job, attempt)
        if job.status is JobStatus.RUNNING and job.runner_id == runner_id:
            return False
        if job.status is not JobStatus.QUEUED:
            raise InvalidTransitionError(f"job {job.name} is {job.status}, not queued")
        self.trigger_event(
            job_events.JobStarted,
            timestamp=at,
            job_id=str(job.id),
            attempt=attempt,
            runner_id=runner_id,
            lease_expires_at=at + self.lease,
            timeout_at=at + timedelta(seconds=job.spec.timeout_seconds),
            executor=executor,
            pool=pool,
            actor=f"runner:{runner_id}",
        )
        return True

    def heartbeat(self, job_id: UUID | str, attempt: int, runner_id: str, at: datetime) -> bool:
        """The runner holding the attempt is alive: extend its lease from now."""
        job = self.job(job_id)
        self._check_holder(job, attempt, runner_id)
        self.trigger_event(
            job_events.JobLeaseExtended, timestamp=at, job_id=str(job.id), attempt=attempt,
            lease_expires_at=at + self.lease, actor=f"runner:{runner_id}",
        )
        return True

    def hand_back(self, job_id: UUID | str, attempt: int, runner_id: str, at: datetime) -> bool:
        """The runner holding the attempt is stopping: it killed the job, and the job is
        queued again as its next attempt, without using a retry. Refused (stale) once the
        attempt is no longer this runner's."""
        job = self.job(job_id)
        self._check_holder(job, attempt, runner_id)
        actor = f"runner:{runner_id}"
        self.trigger_event(
            job_events.JobAttemptAbandoned, timestamp=at, job_id=str(job.id), attempt=attempt,
            reason=RUNNER_STOPPED, kind=Abandonment.RUNNER_STOPPED.value, actor=actor,
        )
        if self.superseded_by is not None:
            self.cancel(at, actor)  # a newer run waits: the job that was finishing does not start again
        else:
            self._queue(job, job.attempt + 1, at, actor)
        return True

    def mark_lost(self, job_id: UUID | str, attempt: int, at: datetime, actor: str) -> bool:
        """The attempt's lease has passed: its runner is presumed dead. No-op otherwise."""
        job = self.job(job_id)
        return self._abandon_if_past(job, attempt, job.lease_expires_at, Abandonment.RUNNER_LOST, at, actor)

    def enforce_timeout(self, job_id: UUID | str, attempt: int, at: datetime, actor: str) -> bool:
        """The attempt ran past its deadline and nobody reported it: it timed out."""
        job = self.job(job_id)
        return self._abandon_if_past(job, attempt, job.timeout_at, Abandonment.TIMED_OUT, at, actor)

    def _abandon_if_past(
        self, job: Job, attempt: int, deadline: datetime | None, kind: Abandonment, at: datetime, actor: str
    ) -> bool:
        # Checked against the events, whatever the caller's (possibly stale) view said.
        if not job.holds(attempt) or deadline is None or at < deadline:
            return False
        self._abandon(job, kind, at, actor)
        return True

    def expire_queued(self, job_id: UUID | str, attempt: int, at: datetime, actor: str) -> bool:
        """The attempt waited in the queue past its limit: the job fails "not picked up"."""
        job = self.job(job_id)
        if job.status is not JobStatus.QUEUED or job.attempt != attempt:
            return False
        if job.pick_up_by is None or at < job.pick_up_by:
            return False
        self.trigger_event(
            job_events.JobFailed, timestamp=at, job_id=str(job.id), attempt=attempt, exit_code=None,
            error=NOT_PICKED_UP, actor=actor,
        )
        self._advance(at, actor)
        return True


    def _check_attempt(self, job: Job, attempt: int) -> None:
        if attempt != job.attempt:
            raise StaleAttemptError(
                f"job {job.name} is at attempt {job.attempt}, not {attempt}"
            )

    def _check_holder(self, job: Job, attempt: int, runner_id: str) -> None:
        """Fencing: only the runner of the current, running attempt may act on it."""
        self._check_attempt(job, attempt)
        if not job.holds(attempt) or job.runner_id != runner_id:
            raise StaleAttemptError(f"job {job.name} attempt {attempt} is not held by {runner_id}")

    def _abandon(self, job: Job, kind: Abandonment, at: datetime, actor: str) -> None:
        """An attempt ended without a result of its own: retry while `retries` allow."""
        reason = kind.reason
        self.trigger_event(
            job_events.JobAttemptAbandoned, timestamp=at, job_id=str(job.id), attempt=job.attempt,
            reason=reason, kind=kind.value, actor=actor,
        )
        if self.superseded_by is not None:
            self.cancel(at, actor)  # a newer run waits: the job that was finishing does not start again
            return
        if job.attempt - job.handed_back <= job.spec.retries:
            self._queue(job, job.attempt + 1, at, actor)
            return
        self.trigger_event(
            job_events.JobFailed, timestamp=at, job_id=str(job.id), attempt=job.attempt, exit_code=None,
            error=reason, actor=actor,
        )
        self._advance(at, actor)

    def _queue(self, job: Job, attempt: int, at: datetime, actor: str) -> None:
        self.trigger_event(
            job_events.JobQueued, timestamp=at, job_id=str(job.id), attempt=attempt,
            pick_up_by=at + self.queue_timeout, actor=actor,
        )

