"""The run aggregate: one push of one commit, and its jobs, run one after another.

A run and its jobs are one aggregate (one event stream) on purpose: jobs of a run run in
sequence, so a job finishing and the next one becoming ready is one decision, appended in one
save at one expected version. Two writers racing for the same transition (a duplicate
finish, a stale runner) cannot both win: the loser's append conflicts, it reloads, and the
guards below refuse or ignore it.

Time always comes in as an argument (`at`), stored as the event's timestamp, so replaying a
stream gives the same state on every machine.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

import msgspec
from eventsourcing.domain import Aggregate

from domain import job_events, run_events
from domain.artifacts import UploadedArtifact, uploads_problem
from domain.caches import CacheReport, report_problem
from domain.errors import InvalidTransitionError
from domain.ids import job_id_for
from domain.job import Job, runs_after
from domain.run_attempts import AttemptCommands
from domain.run_files import FileRecords
from domain.run_groups import GroupCommands
from domain.run_schedules import ScheduleRecords
from domain.status import Abandonment, JobStatus, RunStatus
from domain.workflow import JobSpec

DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_QUEUE_TIMEOUT_SECONDS = 3600.0


class Run(AttemptCommands, GroupCommands, FileRecords, ScheduleRecords, Aggregate):
    """The run's queries and its lifecycle's commands are here; its attempts' commands, its
    concurrency group's, its files' and its schedules' records are mixed in from
    domain/run_attempts.py, domain/run_groups.py, domain/run_files.py and domain/run_schedules.py."""

    # Set by CommitRead; class attributes (not annotations, which eventsourcing would take for
    # fields of RunRequested) so a run replayed or snapshotted before they existed reads None.
    commit_subject = None
    commit_author = None
    # Set by RunJoinedGroup, RunGotGroup and RunSuperseded/RunDropped (concurrency groups).
    concurrency_group = None  # the group it holds or waits for now, its name expanded for this run
    waiting_for_group = False  # its next job held back until the group is its
    group_job = None  # a job-level group's job (None: the whole run holds the group)
    needs_group = False  # that job is next: the run must join its group (commands.concurrency)
    superseded_by = None  # the newer run of its group that cancelled (or dropped) it
    scheduled_by = None  # set by RunScheduled: the cron expression that started it
    scheduled_for = None  # and the nominal time it stands for

    class RunRequested(Aggregate.Created):
        repository_id: str
        tenant_id: str
        commit: str
        ref: str | None
        clone_url: str
        rerun: int
        request_id: str
        actor: str

    # The base of its events, so eventsourcing takes the classes below as they are (it would
    # otherwise define a subclass of each, and the mixins' events would be other classes).
    Event = run_events.RunEvent
    # The events, under the names they are stored by: a run's (domain/run_events.py), then
    # its jobs' (domain/job_events.py).
    RunPlanned = run_events.RunPlanned
    CommitRead = run_events.CommitRead
    RunSkipped = run_events.RunSkipped
    RunFailed = run_events.RunFailed
    RunSucceeded = run_events.RunSucceeded
    RunCancelled = run_events.RunCancelled
    RunScheduled = run_events.RunScheduled
    SchedulesDeclared = run_events.SchedulesDeclared
    RunJoinedGroup = run_events.RunJoinedGroup
    JobNeedsGroup = run_events.JobNeedsGroup
    RunLeftGroup = run_events.RunLeftGroup
    RunGotGroup = run_events.RunGotGroup
    RunSuperseded = run_events.RunSuperseded
    RunDropped = run_events.RunDropped
    RunRerunRequested = run_events.RunRerunRequested
    JobQueued = job_events.JobQueued
    JobStarted = job_events.JobStarted
    JobLeaseExtended = job_events.JobLeaseExtended
    JobAttemptAbandoned = job_events.JobAttemptAbandoned
    JobCancelled = job_events.JobCancelled
    ArtifactUploaded = job_events.ArtifactUploaded
    ArtifactsExpired = job_events.ArtifactsExpired
    CacheRestored = job_events.CacheRestored
    CacheSaved = job_events.CacheSaved
    JobSucceeded = job_events.JobSucceeded
    JobFailed = job_events.JobFailed
    JobSkipped = job_events.JobSkipped

    def __init__(
        self,
        repository_id: str,
        tenant_id: str,
        commit: str,
        ref: str | None,
        clone_url: str,
        rerun: int,
        request_id: str,
        actor: str,
    ) -> None:
        self.repository_id = repository_id
        self.tenant_id = tenant_id
        self.commit = commit
        self.ref = ref
        self.clone_url = clone_url
        self.rerun = rerun
        # Unique per request: after a write whose outcome was unknown, finding our own
        # request id on version 1 tells "my push landed" from "someone else's push".
        self.request_id = request_id
        self.reruns = 0  # re-runs requested of this commit (counted on the first run only)
        self.lease = timedelta(seconds=DEFAULT_LEASE_SECONDS)
        self.queue_timeout = timedelta(seconds=DEFAULT_QUEUE_TIMEOUT_SECONDS)
        self.status = RunStatus.QUEUED
        self.error: str | None = None
        self.workflow_name: str | None = None
        self.jobs: list[Job] = []
        self.planned = False
        self.finished_at: datetime | None = None

    @classmethod
    def request(
        cls,
        *,
        run_id: UUID,
        repository_id: str,
        tenant_id: str,
        commit: str,
        ref: str | None,
        clone_url: str,
        rerun: int,
        request_id: str,
        actor: str,
        at: datetime,
    ) -> Run:
        return cls._create(
            cls.RunRequested,
            id=run_id,
            timestamp=at,
            repository_id=repository_id,
            tenant_id=tenant_id,
            commit=commit,
            ref=ref,
            clone_url=clone_url,
            rerun=rerun,
            request_id=request_id,
            actor=actor,
        )

    # ----- queries -------------------------------------------------------------------------

    @property
    def created_at(self) -> datetime:
        return self.created_on

    def job(self, job_id: UUID | str) -> Job:
        wanted = UUID(str(job_id))
        for job in self.jobs:
            if job.id == wanted:
                return job
        raise InvalidTransitionError(f"run {self.id} has no job {job_id}")

    @property
    def current_job(self) -> Job | None:
        """The job that is queued or running, if any (jobs run one at a time)."""
        for job in self.jobs:
            if job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
                return job
        return None

    @property
    def has_failed(self) -> bool:
        """A job failed that was not allowed to: later jobs run only if `when` says so."""
        return any(j.status is JobStatus.FAILED and not j.spec.allow_failure for j in self.jobs)

    # ----- commands (decide, then trigger events) --------------------------------------------

    def plan(
        self,
        jobs: list[JobSpec],
        workflow_name: str | None,
        at: datetime,
        actor: str,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        queue_timeout_seconds: float = DEFAULT_QUEUE_TIMEOUT_SECONDS,
        group: str | None = None,
        waits: bool = False,
    ) -> bool:
        """Record the jobs the workflow file asks for, and queue the first. Idempotent.

        The lease and queue limits in force are recorded too, so every later deadline of
        this run is computed from its own history, the same on every replay. A run of a
        concurrency `group` records that it joined it; if it `waits` (the group is held), its
        first job is queued only when its turn comes (`take_group_turn`).
        """
        if self.planned or self.status.is_final:
            return False
        planned = [
            {"id": str(job_id_for(self.id, spec.name)), "spec": msgspec.to_builtins(spec)}
            for spec in jobs
        ]
        self.trigger_event(
            self.RunPlanned, timestamp=at, workflow_name=workflow_name, jobs=planned, actor=actor,
            lease_seconds=lease_seconds, queue_timeout_seconds=queue_timeout_seconds,
        )
        if group is not None:
            self.trigger_event(self.RunJoinedGroup, timestamp=at, group=group, waits=waits, job_id=None, actor=actor)
        if not waits:
            self._advance(at, actor)
        return True

    def describe_commit(self, subject: str, author: str, at: datetime, actor: str) -> bool:
        """What the planner read of the commit (its subject and author), for the runs list.
        Recorded once, in the same decision as the plan (or the skip, or the failure)."""
        if self.planned or self.status.is_final or self.commit_subject is not None:
            return False
        self.trigger_event(self.CommitRead, timestamp=at, subject=subject, author=author, actor=actor)
        return True

    def skip(self, reason: str, at: datetime, actor: str) -> bool:
        """No run starts for this push (no workflow file, or the ref is filtered out)."""
        if self.planned or self.status.is_final:
            return False
        self.trigger_event(self.RunSkipped, timestamp=at, reason=reason, actor=actor)
        return True

    def fail_before_start(self, error: str, at: datetime, actor: str) -> bool:
        """The run cannot start (an invalid workflow file): it fails before any job."""
        if self.planned or self.status.is_final:
            return False
        self.trigger_event(self.RunFailed, timestamp=at, error=error, actor=actor)
        return True

    def cancel(self, at: datetime, actor: str) -> bool:
        """Cancel every job that has not ended (the running one included), then the run."""
        if self.status.is_final:
            return False
        for job in self.jobs:
            if not job.status.is_final:
                self.trigger_event(
                    self.JobCancelled, timestamp=at, job_id=str(job.id), attempt=job.attempt, actor=actor
                )
        self.trigger_event(self.RunCancelled, timestamp=at, actor=actor)
        return True

    def request_rerun(self, at: datetime, actor: str) -> int:
        """Allocate the next re-run number of this commit (asked of its first run)."""
        number = self.reruns + 1
        self.trigger_event(self.RunRerunRequested, timestamp=at, rerun=number, actor=actor)
        return number

    def finish_job(
        self,
        job_id: UUID | str,
        attempt: int,
        runner_id: str,
        exit_code: int | None,
        at: datetime,
        error: str | None = None,
        *,
        timed_out: bool = False,
        artifacts: list[UploadedArtifact] | None = None,
        cache: CacheReport | None = None,
    ) -> bool:
        """The runner reports how an attempt ended, with the artifacts it stored for it; the
        next job is decided in the same save."""
        job = self.job(job_id)
        self._check_attempt(job, attempt)
        if job.status.is_final and job.runner_id == runner_id and job.exit_code == exit_code:
            return False  # a repeated report of the same outcome changes nothing
        self._check_holder(job, attempt, runner_id)
        actor = f"runner:{runner_id}"
        if artifacts and not timed_out:
            if problem := uploads_problem(job.spec.artifacts, artifacts):
                error = error or f"artifacts not recorded: {problem}"
            else:
                self._record_artifacts(job, attempt, artifacts, at, actor)
        if cache is not None and not timed_out:
            if problem := report_problem(job.spec.cache, cache):
                error = error or f"cache not recorded: {problem}"
            else:
                self._record_cache(job, attempt, cache, at, actor)
        if timed_out:
            self._abandon(job, Abandonment.TIMED_OUT, at, actor)
        elif exit_code == 0 and error is None:
            self.trigger_event(
                self.JobSucceeded, timestamp=at, job_id=str(job.id), attempt=attempt,
                exit_code=0, actor=actor,
            )
        else:
            self.trigger_event(
                self.JobFailed, timestamp=at, job_id=str(job.id), attempt=attempt,
                exit_code=exit_code, error=error or f"exit code {exit_code}", actor=actor,
            )
        self._advance(at, actor)
        return True

    def _advance(self, at: datetime, actor: str) -> None:
        """Queue the next job that should run, skipping those whose `when` says no; or end."""
        if self.current_job is not None or self.status.is_final:
            return
        if self.group_job is not None and self.job(self.group_job).status.is_final:
            # The job that held a job-level group has ended: the group goes on to the next.
            self.trigger_event(self.RunLeftGroup, timestamp=at, group=self.concurrency_group, actor=actor)
        if self.waiting_for_group or self.needs_group:
            return  # the next job waits for its group
        if self.superseded_by is not None:
            self.cancel(at, actor)  # its last job was not interruptible: it has finished now
            return
        for job in self.jobs:
            if job.status is not JobStatus.PENDING:
                continue
            if runs_after(job.spec.when, self.has_failed):
                if job.spec.concurrency is not None and self.group_job != str(job.id):
                    self.trigger_event(self.JobNeedsGroup, timestamp=at, job_id=str(job.id),
                                       group=job.spec.concurrency, actor=actor)
                    return
                self._queue(job, 1, at, actor)
                return
            reason = "an earlier job failed" if self.has_failed else "no earlier job failed"
            self.trigger_event(
                self.JobSkipped, timestamp=at, job_id=str(job.id), attempt=0, reason=reason,
                actor=actor,
            )
        if self.has_failed:
            self.trigger_event(self.RunFailed, timestamp=at, error=None, actor=actor)
        else:
            self.trigger_event(self.RunSucceeded, timestamp=at, actor=actor)



# The names a run's history may hold (`GET /runs/{id}/events?type=` accepts only these); `Created`
# and `Event` are the base classes eventsourcing gives every aggregate, never recorded themselves.
RUN_EVENT_TYPES = frozenset(
    name for name, member in vars(Run).items()
    if isinstance(member, type) and issubclass(member, Aggregate.Event) and name not in ("Created", "Event")
)

# The events after which a job's attempt is over (its runner slot is free, its log complete).
