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

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple
from uuid import UUID

import msgspec
from eventsourcing.domain import Aggregate

from domain.artifacts import StoredArtifact, UploadedArtifact, object_name, uploads_problem
from domain.caches import CacheReport, report_problem
from domain.errors import InvalidTransitionError, StaleAttemptError
from domain.ids import job_id_for
from domain.status import Abandonment, JobStatus, RunStatus
from domain.workflow import JobSpec

DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_QUEUE_TIMEOUT_SECONDS = 3600.0
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


class Run(Aggregate):
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

    def enter_job_group(self, waits: bool, at: datetime, actor: str) -> bool:
        """The job next in line needs its job-level group: the run joins it, and queues the
        job now if the group was free."""
        if not self.needs_group or self.status.is_final:
            return False
        self.trigger_event(self.RunJoinedGroup, timestamp=at, group=self.concurrency_group, waits=waits,
                           job_id=self.group_job, actor=actor)
        if not waits:
            self._advance(at, actor)
        return True

    def take_group_turn(self, at: datetime, actor: str) -> bool:
        """The run waited for its concurrency group and now holds it: its first job is queued."""
        if not self.waiting_for_group or self.status.is_final:
            return False
        self.trigger_event(self.RunGotGroup, timestamp=at, group=self.concurrency_group, actor=actor)
        self._advance(at, actor)
        return True

    def supersede(self, by_run: UUID | str, at: datetime, actor: str) -> bool:
        """A newer run of its group cancels this one (`cancel_in_progress`): everything not
        ended is cancelled now, except a running job that is not `interruptible`, which
        finishes first; the run then ends cancelled without starting another job."""
        if self.status.is_final or self.superseded_by is not None:
            return False
        self.trigger_event(self.RunSuperseded, timestamp=at, by_run=str(by_run), actor=actor)
        job = self.current_job
        if job is None or job.status is not JobStatus.RUNNING or job.spec.interruptible:
            self.cancel(at, actor)
        return True

    def drop(self, by_run: UUID | str, at: datetime, actor: str) -> bool:
        """A newer run replaces this one, which was waiting for its group (`queue: single`)."""
        if self.status.is_final or not self.waiting_for_group:
            return False
        self.trigger_event(self.RunDropped, timestamp=at, by_run=str(by_run), actor=actor)
        self.cancel(at, actor)
        return True

    def mark_scheduled(self, branch: str, cron: str, nominal_at: datetime, at: datetime, actor: str) -> None:
        """Started by a schedule, not a push: recorded in the save that creates the run."""
        self.trigger_event(self.RunScheduled, timestamp=at, branch=branch, cron=cron, nominal_at=nominal_at,
                           actor=actor)

    def declare_schedules(self, branch: str, crons: list[str], at: datetime, actor: str) -> bool:
        """The file at this push declares these schedules for its branch (planned with it)."""
        if self.planned or self.status.is_final:
            return False
        self.trigger_event(self.SchedulesDeclared, timestamp=at, branch=branch, crons=crons, actor=actor)
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
            self.JobStarted,
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
            self.JobLeaseExtended, timestamp=at, job_id=str(job.id), attempt=attempt,
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
            self.JobAttemptAbandoned, timestamp=at, job_id=str(job.id), attempt=attempt,
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
            self.JobFailed, timestamp=at, job_id=str(job.id), attempt=attempt, exit_code=None,
            error=NOT_PICKED_UP, actor=actor,
        )
        self._advance(at, actor)
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

    def _record_artifacts(self, job: Job, attempt: int, uploaded: list[UploadedArtifact], at: datetime,
                          actor: str) -> None:
        assert job.spec.artifacts is not None  # uploads_problem says so otherwise
        expires_at = at + timedelta(seconds=job.spec.artifacts.expire_in_seconds)
        for artifact in uploaded:
            self.trigger_event(
                self.ArtifactUploaded, timestamp=at, job_id=str(job.id), attempt=attempt, path=artifact.path,
                size=artifact.size, sha256=artifact.sha256, expires_at=expires_at, actor=actor,
                object=object_name(self.tenant_id, self.repository_id, str(self.id), str(job.id), attempt,
                                   artifact.path),
            )

    def expire_artifacts(self, job_id: UUID | str, paths: list[str], at: datetime, actor: str) -> bool:
        """The files of a job past their `expire_in` were removed from the store: record it.
        Idempotent: paths no longer held, or not yet expired, are left out."""
        job = self.job(job_id)
        gone = [path for path in paths if path in job.artifacts and job.artifacts[path].expires_at <= at]
        if not gone:
            return False
        self.trigger_event(self.ArtifactsExpired, timestamp=at, job_id=str(job.id), paths=gone, actor=actor)
        return True

    def _record_cache(self, job: Job, attempt: int, cache: CacheReport, at: datetime, actor: str) -> None:
        if cache.restored is not None:
            self.trigger_event(self.CacheRestored, timestamp=at, job_id=str(job.id), attempt=attempt, key=cache.key,
                               result=cache.restored, restored_key=cache.restored_key, actor=actor)
        if cache.saved_size is not None:
            self.trigger_event(self.CacheSaved, timestamp=at, job_id=str(job.id), attempt=attempt, key=cache.key,
                               size=cache.saved_size, sha256=cache.saved_sha256, actor=actor)

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
            self.JobAttemptAbandoned, timestamp=at, job_id=str(job.id), attempt=job.attempt,
            reason=reason, kind=kind.value, actor=actor,
        )
        if self.superseded_by is not None:
            self.cancel(at, actor)  # a newer run waits: the job that was finishing does not start again
            return
        if job.attempt - job.handed_back <= job.spec.retries:
            self._queue(job, job.attempt + 1, at, actor)
            return
        self.trigger_event(
            self.JobFailed, timestamp=at, job_id=str(job.id), attempt=job.attempt, exit_code=None,
            error=reason, actor=actor,
        )
        self._advance(at, actor)

    def _queue(self, job: Job, attempt: int, at: datetime, actor: str) -> None:
        self.trigger_event(
            self.JobQueued, timestamp=at, job_id=str(job.id), attempt=attempt,
            pick_up_by=at + self.queue_timeout, actor=actor,
        )

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
            if _should_run(job.spec.when, self.has_failed):
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

    # ----- events (appliers are deterministic: no clock, no I/O) ----------------------------

    class RunPlanned(Aggregate.Event):
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

    class CommitRead(Aggregate.Event):
        subject: str
        author: str
        actor: str

        def apply(self, run: Run) -> None:
            run.commit_subject = self.subject
            run.commit_author = self.author

    class RunSkipped(Aggregate.Event):
        reason: str
        actor: str

        def apply(self, run: Run) -> None:
            run.status = RunStatus.SKIPPED
            run.error = self.reason
            run.finished_at = self.timestamp

    class RunFailed(Aggregate.Event):
        error: str | None
        actor: str

        def apply(self, run: Run) -> None:
            run.status = RunStatus.FAILED
            run.error = self.error
            run.finished_at = self.timestamp

    class RunSucceeded(Aggregate.Event):
        actor: str

        def apply(self, run: Run) -> None:
            run.status = RunStatus.SUCCEEDED
            run.finished_at = self.timestamp

    class RunCancelled(Aggregate.Event):
        actor: str

        def apply(self, run: Run) -> None:
            run.status = RunStatus.CANCELLED
            run.finished_at = self.timestamp
            if run.waiting_for_group:
                run.waiting_for_group = False  # an instance attribute only for runs that joined a group

    class RunScheduled(Aggregate.Event):
        """The run is a schedule's firing for one nominal time (its id derives from them)."""

        branch: str
        cron: str
        nominal_at: datetime
        actor: str

        def apply(self, run: Run) -> None:
            run.scheduled_by = self.cron
            run.scheduled_for = self.nominal_at

    class SchedulesDeclared(Aggregate.Event):
        """The workflow file of this push on `branch` declares these schedules for it; the
        newest planned push of a branch decides its schedules (none if it declares none)."""

        branch: str
        crons: list[str]
        actor: str

        def apply(self, run: Run) -> None:
            pass  # read by the schedules' read model, not by the run

    class RunJoinedGroup(Aggregate.Event):
        group: str
        waits: bool  # the group was held: the next job waits for the run's turn
        job_id: str | None  # a job-level group's job (None: the workflow's group, for the whole run)
        actor: str

        def apply(self, run: Run) -> None:
            run.concurrency_group = self.group
            run.waiting_for_group = self.waits
            run.group_job = self.job_id
            run.needs_group = False

    class JobNeedsGroup(Aggregate.Event):
        """The next job has a job-level group: it is queued once the run holds the group."""

        job_id: str
        group: str
        actor: str

        def apply(self, run: Run) -> None:
            run.concurrency_group = self.group
            run.group_job = self.job_id
            run.needs_group = True
            run.waiting_for_group = False

    class RunLeftGroup(Aggregate.Event):
        """The job that held a job-level group ended: the run holds it no longer."""

        group: str
        actor: str

        def apply(self, run: Run) -> None:
            run.concurrency_group = None
            run.group_job = None
            run.waiting_for_group = False

    class RunGotGroup(Aggregate.Event):
        group: str
        actor: str

        def apply(self, run: Run) -> None:
            run.waiting_for_group = False

    class RunSuperseded(Aggregate.Event):
        by_run: str
        actor: str

        def apply(self, run: Run) -> None:
            run.superseded_by = self.by_run
            run.error = superseded_reason(self.by_run)

    class RunDropped(Aggregate.Event):
        """It waited for its group and a newer run took its place (`queue: single`)."""

        by_run: str
        actor: str

        def apply(self, run: Run) -> None:
            run.superseded_by = self.by_run
            run.waiting_for_group = False
            run.error = superseded_reason(self.by_run)

    class RunRerunRequested(Aggregate.Event):
        rerun: int
        actor: str

        def apply(self, run: Run) -> None:
            run.reruns = self.rerun

    class JobQueued(Aggregate.Event):
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

    class JobStarted(Aggregate.Event):
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

    class JobLeaseExtended(Aggregate.Event):
        job_id: str
        attempt: int
        lease_expires_at: datetime
        actor: str

        def apply(self, run: Run) -> None:
            run.job(self.job_id).lease_expires_at = self.lease_expires_at

    class JobAttemptAbandoned(Aggregate.Event):
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

    class JobCancelled(Aggregate.Event):
        job_id: str
        attempt: int
        actor: str

        def apply(self, run: Run) -> None:
            _end(run.job(self.job_id), JobStatus.CANCELLED, None, "cancelled", self.timestamp)

    class ArtifactUploaded(Aggregate.Event):
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

    class ArtifactsExpired(Aggregate.Event):
        """Files of the job past their expiry, removed from the object store."""

        job_id: str
        paths: list[str]
        actor: str

        def apply(self, run: Run) -> None:
            job = run.job(self.job_id)
            for path in self.paths:
                job.artifacts.pop(path, None)

    class CacheRestored(Aggregate.Event):
        """What the attempt's cache restore found (domain/caches.py), recorded with its outcome."""

        job_id: str
        attempt: int
        key: str
        result: str  # hit, partial or miss
        restored_key: str | None
        actor: str

        def apply(self, run: Run) -> None:
            pass  # for the history and the read model: nothing of the run depends on it

    class CacheSaved(Aggregate.Event):
        """The attempt saved its cache entry, recorded with its outcome."""

        job_id: str
        attempt: int
        key: str
        size: int
        sha256: str
        actor: str

        def apply(self, run: Run) -> None:
            pass

    class JobSucceeded(Aggregate.Event):
        job_id: str
        attempt: int
        exit_code: int
        actor: str

        def apply(self, run: Run) -> None:
            _end(run.job(self.job_id), JobStatus.SUCCEEDED, self.exit_code, None, self.timestamp)

    class JobFailed(Aggregate.Event):
        job_id: str
        attempt: int
        exit_code: int | None
        error: str | None
        actor: str

        def apply(self, run: Run) -> None:
            _end(run.job(self.job_id), JobStatus.FAILED, self.exit_code, self.error, self.timestamp)

    class JobSkipped(Aggregate.Event):
        job_id: str
        attempt: int
        reason: str
        actor: str

        def apply(self, run: Run) -> None:
            _end(run.job(self.job_id), JobStatus.SKIPPED, None, None, self.timestamp)


def superseded_reason(by_run: str) -> str:
    """What a user reads on a run its concurrency group's newer run cancelled or replaced."""
    return f"superseded by run {by_run}"


def waiting_reason(group: str) -> str:
    """What a user reads on a run whose first job waits for its concurrency group."""
    return f'waiting for concurrency group "{group}"'


def _should_run(when: str, earlier_failure: bool) -> bool:
    if when == "always":
        return True
    if when == "on_failure":
        return earlier_failure
    return not earlier_failure


def _end(job: Job, status: JobStatus, exit_code: int | None, error: str | None, at: datetime) -> None:
    job.status = status
    job.exit_code = exit_code
    job.error = error
    job.finished_at = at
    job.lease_expires_at = None  # an ended attempt holds no lease


# The names a run's history may hold (`GET /runs/{id}/events?type=` accepts only these); `Created`
# and `Event` are the base classes eventsourcing gives every aggregate, never recorded themselves.
RUN_EVENT_TYPES = frozenset(
    name for name, member in vars(Run).items()
    if isinstance(member, type) and issubclass(member, Aggregate.Event) and name not in ("Created", "Event")
)

# The events after which a job's attempt is over (its runner slot is free, its log complete).
# JobSkipped ends a job that never had an attempt (attempt 0).
ATTEMPT_ENDING_EVENTS = (Run.JobSucceeded, Run.JobFailed, Run.JobCancelled, Run.JobSkipped, Run.JobAttemptAbandoned)
RUN_ENDING_EVENTS = (Run.RunSucceeded, Run.RunFailed, Run.RunCancelled, Run.RunSkipped)
