"""The events of a run's history at the run's level (planned, skipped, ended, its concurrency
group, its schedule), and how each changes the run; a run's jobs' events are in
domain/job_events.py. Appliers are deterministic: no clock, no I/O. The decisions that trigger
them are the run's commands (domain/run.py).

Every run event is stored under the topic it had when the events were classes nested in `Run`
(`domain.run:Run.JobStarted`): every recorded history names them so, and the hash chain covers
the topic. `RunEvent` gives each subclass that topic.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

import msgspec
from eventsourcing.domain import Aggregate

from domain.job import Job, PlannedJob
from domain.status import RunStatus
from domain.workflow import JobSpec

if TYPE_CHECKING:
    from domain.run import Run


class RunEvent(Aggregate.Event):
    """Base of a run's events: gives each the topic it is stored under, and the qualified name
    every aggregate's events have (`Run.JobStarted`, as `ConcurrencyGroup.GroupTaken`), which the
    relay's subjects and the invariant checker read."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.__qualname__ = f"Run.{cls.__name__}"
        cls.TOPIC = f"domain.run:{cls.__qualname__}"


class RunPlanned(RunEvent):
    workflow_name: str | None
    # Stored as [{"id", "spec"}], the shape every recorded history has: read it through
    # `planned_jobs`, which gives each job's id and its JobSpec, defaults filled in.
    jobs: list[dict[str, Any]]
    lease_seconds: float
    queue_timeout_seconds: float
    actor: str

    def planned_jobs(self) -> list[PlannedJob]:
        return [PlannedJob(j["id"], msgspec.convert(j["spec"], JobSpec)) for j in self.jobs]

    def apply(self, run: Run) -> None:
        run.planned = True
        run.workflow_name = self.workflow_name
        run.lease = timedelta(seconds=self.lease_seconds)
        run.queue_timeout = timedelta(seconds=self.queue_timeout_seconds)
        run.jobs = [Job(id=UUID(job.id), index=i, spec=job.spec) for i, job in enumerate(self.planned_jobs())]


class CommitRead(RunEvent):
    subject: str
    author: str
    actor: str

    def apply(self, run: Run) -> None:
        run.commit_subject = self.subject
        run.commit_author = self.author


class RunSkipped(RunEvent):
    reason: str
    actor: str

    def apply(self, run: Run) -> None:
        run.status = RunStatus.SKIPPED
        run.error = self.reason
        run.finished_at = self.timestamp


class RunFailed(RunEvent):
    error: str | None
    actor: str

    def apply(self, run: Run) -> None:
        run.status = RunStatus.FAILED
        run.error = self.error
        run.finished_at = self.timestamp


class RunSucceeded(RunEvent):
    actor: str

    def apply(self, run: Run) -> None:
        run.status = RunStatus.SUCCEEDED
        run.finished_at = self.timestamp


class RunCancelled(RunEvent):
    actor: str

    def apply(self, run: Run) -> None:
        run.status = RunStatus.CANCELLED
        run.finished_at = self.timestamp
        if run.waiting_for_group:
            run.waiting_for_group = False  # an instance attribute only for runs that joined a group


class RunScheduled(RunEvent):
    """The run is a schedule's firing for one nominal time (its id derives from them)."""

    branch: str
    cron: str
    nominal_at: datetime
    actor: str

    def apply(self, run: Run) -> None:
        run.scheduled_by = self.cron
        run.scheduled_for = self.nominal_at


class SchedulesDeclared(RunEvent):
    """The workflow file of this push on `branch` declares these schedules for it; the
    newest planned push of a branch decides its schedules (none if it declares none)."""

    branch: str
    crons: list[str]
    actor: str

    def apply(self, run: Run) -> None:
        pass  # read by the schedules' read model, not by the run


class RunJoinedGroup(RunEvent):
    group: str
    waits: bool  # the group was held: the next job waits for the run's turn
    job_id: str | None  # a job-level group's job (None: the workflow's group, for the whole run)
    actor: str

    def apply(self, run: Run) -> None:
        run.concurrency_group = self.group
        run.waiting_for_group = self.waits
        run.group_job = self.job_id
        run.needs_group = False


class JobNeedsGroup(RunEvent):
    """The next job has a job-level group: it is queued once the run holds the group."""

    job_id: str
    group: str
    actor: str

    def apply(self, run: Run) -> None:
        run.concurrency_group = self.group
        run.group_job = self.job_id
        run.needs_group = True
        run.waiting_for_group = False


class RunLeftGroup(RunEvent):
    """The job that held a job-level group ended: the run holds it no longer."""

    group: str
    actor: str

    def apply(self, run: Run) -> None:
        run.concurrency_group = None
        run.group_job = None
        run.waiting_for_group = False


class RunGotGroup(RunEvent):
    group: str
    actor: str

    def apply(self, run: Run) -> None:
        run.waiting_for_group = False


class RunSuperseded(RunEvent):
    by_run: str
    actor: str

    def apply(self, run: Run) -> None:
        run.superseded_by = self.by_run
        run.error = superseded_reason(self.by_run)


class RunDropped(RunEvent):
    """It waited for its group and a newer run took its place (`queue: single`)."""

    by_run: str
    actor: str

    def apply(self, run: Run) -> None:
        run.superseded_by = self.by_run
        run.waiting_for_group = False
        run.error = superseded_reason(self.by_run)


class RunRerunRequested(RunEvent):
    rerun: int
    actor: str

    def apply(self, run: Run) -> None:
        run.reruns = self.rerun


def superseded_reason(by_run: str) -> str:
    """What a user reads on a run its concurrency group's newer run cancelled or replaced."""
    return f"superseded by run {by_run}"


def waiting_reason(group: str) -> str:
    """What a user reads on a run whose first job waits for its concurrency group."""
    return f'waiting for concurrency group "{group}"'


RUN_ENDING_EVENTS = (RunSucceeded, RunFailed, RunCancelled, RunSkipped)
