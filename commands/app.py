"""The write side: every state change is a command that loads, decides and appends.

Methods are the commands. Each loads its aggregate, lets the aggregate decide (the guards
live in the domain), and saves at the expected version. On a version conflict the command
reloads and decides again; a command whose effect already holds succeeds without appending.
eventsourcing is synchronous: async callers run these methods in a worker thread.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar
from uuid import UUID, uuid4

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    Mapper,
    Notification,
    OperationalError,
    StoredEvent,
)

from commands.chain import Broken, ChainedMapper, StreamChecker
from commands.envelope import to_event_message
from commands.snapshots import SNAPSHOT_INTERVALS, SnapshottingRepository, SnapshotTranscoder
from commands.store import APP_NAME
from domain.clone_url import check_clone_url
from domain.errors import (
    AlreadyExistsError,
    DomainError,
    InvalidTransitionError,
    InvalidWorkflowError,
    RepositoryDeletedError,
    RepositoryNotFoundError,
    RunNotFoundError,
    StaleAttemptError,
    TenantNotFoundError,
    TokenNotFoundError,
)
from domain.ids import repository_aggregate_id, run_id_for, tenant_aggregate_id, token_aggregate_id
from domain.messages import CommandReply, EventMessage, FinishJob, HandBack, Heartbeat, JobDispatch, StartJob
from domain.registry import ANY_POOL, Repository, Tenant, Token, pool_allowed
from domain.run import DEFAULT_LEASE_SECONDS, DEFAULT_QUEUE_TIMEOUT_SECONDS, Job, Run
from domain.status import JobStatus
from domain.workflow import JobSpec, parse_workflow, ref_matches

A = TypeVar("A", bound=Aggregate)

# Conflicts only happen between a handful of writers of one run; more than this means a bug.
MAX_DECISION_ATTEMPTS = 20


class ConcurrencyError(DomainError):
    """A command kept losing the race for its aggregate."""


class Timing(NamedTuple):
    """Limits recorded into each run when it is planned (settings)."""

    lease_seconds: float = DEFAULT_LEASE_SECONDS
    queue_timeout_seconds: float = DEFAULT_QUEUE_TIMEOUT_SECONDS


class CommandResult(NamedTuple):
    """A runner command's answer, and the job as the command left it when it changed
    something (for metrics)."""

    reply: CommandReply
    changed: Job | None = None


class RunOrigin(NamedTuple):
    """What a run's `RunRequested` says about where its jobs come from."""

    run_id: str
    tenant_id: str
    repository_id: str
    clone_url: str
    commit: str
    ref: str | None


def job_dispatch(origin: RunOrigin, job_id: str, attempt: int, spec: JobSpec) -> JobDispatch:
    """The message that offers one attempt of a job to the runners."""
    return JobDispatch(
        run_id=origin.run_id, job_id=job_id, attempt=attempt, job_name=spec.name, tenant_id=origin.tenant_id,
        repository_id=origin.repository_id, clone_url=origin.clone_url, commit=origin.commit, ref=origin.ref,
        script=spec.run, env=dict(spec.env), image=spec.image, timeout_seconds=spec.timeout_seconds,
        idempotency_key=f"{origin.run_id}:{job_id}", resources=spec.resources, pool=spec.pool,
    )


class PushResult(NamedTuple):
    run_id: UUID
    duplicate: bool


class Principal(NamedTuple):
    """Who calls: the admin (tenant_id None) or one tenant."""

    name: str
    tenant_id: str | None

    @property
    def is_admin(self) -> bool:
        return self.tenant_id is None

    def can_see(self, tenant_id: str) -> bool:
        return self.tenant_id is None or self.tenant_id == tenant_id


def utc_now() -> datetime:
    return datetime.now(UTC)


class LedgerApp(Application):
    name = APP_NAME
    # A snapshot every so many events of a long run, so loading it stays fast (commands.snapshots).
    snapshotting_intervals = SNAPSHOT_INTERVALS

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], datetime] = utc_now,
        timing: Timing | None = None,
        audit_key: bytes = b"",
    ):
        self.audit_key = audit_key  # read by construct_mapper, during Application.__init__
        super().__init__(env=dict(env) if env else None)
        self.clock = clock
        self.timing = timing or Timing()
        self._save_listeners: list[Callable[[], None]] = []

    # ----- plumbing ---------------------------------------------------------------------------

    def construct_mapper(self) -> Mapper:
        """Events are stored with a tamper-evident chain link (commands.chain)."""
        return ChainedMapper(self.construct_transcoder(), self.audit_key, self.stored_event)

    def construct_repository(self) -> SnapshottingRepository:
        assert isinstance(self.mapper, ChainedMapper)
        return SnapshottingRepository(event_store=self.events, snapshot_store=self.snapshots,
                                      known_version=self.mapper.known_version)

    def construct_snapshot_store(self):  # type: ignore[no-untyped-def]
        # Snapshots are derived, not evidence: they are stored without a chain link.
        store = super().construct_snapshot_store()
        store.mapper = Mapper(SnapshotTranscoder())
        return store

    def _record(self, processing_event):  # type: ignore[no-untyped-def]
        assert isinstance(self.mapper, ChainedMapper)
        self.mapper.begin_save()
        committed = False
        try:
            recordings = super()._record(processing_event)
            committed = True
            return recordings
        finally:
            self.mapper.end_save(committed)

    def stored_event(self, aggregate_id: UUID, version: int) -> StoredEvent | None:
        """One stored event, as it is in the store (chain link included)."""
        found = self.recorder.select_events(aggregate_id, gt=version - 1, lte=version)
        return found[0] if found else None

    def stored_events(self, aggregate_id: UUID) -> list[StoredEvent]:
        return list(self.recorder.select_events(aggregate_id))

    def on_saved(self, listener: Callable[[], None]) -> None:
        """Call `listener` after every save in this process (wakes the relay on SQLite)."""
        self._save_listeners.append(listener)

    def _notify(self, recordings: list) -> None:  # type: ignore[override]
        super()._notify(recordings)
        for listener in self._save_listeners:
            listener()

    def _load(self, aggregate_id: UUID, kind: type[A]) -> A | None:
        try:
            aggregate = self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None
        return aggregate if isinstance(aggregate, kind) else None

    def _create(self, aggregate: Aggregate, what: str) -> None:
        try:
            self.save(aggregate)
        except IntegrityError:
            raise AlreadyExistsError(f"{what} already exists") from None

    def _decide(self, run_id: UUID, decide: Callable[[Run], bool]) -> Run:
        """Load the run, let `decide` trigger events, save; on a conflict reload and retry.

        The same reload covers a write whose outcome is unknown (the connection dropped
        around COMMIT): if it did apply, deciding again on the reloaded run finds the effect
        already there and appends nothing, so our own write is never reported as a conflict.
        """
        for _ in range(MAX_DECISION_ATTEMPTS):
            run = self._load(run_id, Run)
            if run is None:
                raise RunNotFoundError(f"run {run_id} not found")
            if not decide(run):
                return run
            try:
                self.save(run)
            except IntegrityError:
                continue  # another writer appended first (or we did): decide again
            except (OperationalError, InterfaceError):
                self._wait_for_store()
                continue
            return run
        raise ConcurrencyError(f"run {run_id}: too many concurrent writers")

    def _wait_for_store(self) -> None:
        """After an unknown outcome, reloading needs the store back; the caller retries."""
        for _ in range(50):
            try:
                self.recorder.max_notification_id()
                return
            except (OperationalError, InterfaceError):
                self.closing.wait(0.2)

    # ----- tenants, tokens, repositories -----------------------------------------------------

    def create_tenant(
        self,
        tenant_id: str,
        *,
        name: str,
        weight: int,
        max_concurrent_jobs: int,
        max_queued_runs: int,
        pushes_per_minute: int,
        actor: str,
    ) -> Tenant:
        tenant = Tenant.create(
            tenant_id=tenant_id, name=name, weight=weight, max_concurrent_jobs=max_concurrent_jobs,
            max_queued_runs=max_queued_runs, pushes_per_minute=pushes_per_minute, actor=actor,
            at=self.clock(),
        )
        self._create(tenant, f"tenant {tenant_id!r}")
        return tenant

    def get_tenant(self, tenant_id: str) -> Tenant:
        tenant = self._load(tenant_aggregate_id(tenant_id), Tenant)
        if tenant is None:
            raise TenantNotFoundError(f"tenant {tenant_id!r} not found")
        return tenant

    def update_tenant(self, tenant_id: str, changes: Mapping[str, object], *, actor: str) -> Tenant:
        """Change a tenant's name, weight or quotas (recorded as TenantUpdated)."""
        for _ in range(MAX_DECISION_ATTEMPTS):
            tenant = self.get_tenant(tenant_id)
            if not tenant.update(dict(changes), self.clock(), actor):
                return tenant
            try:
                self.save(tenant)
            except IntegrityError:
                continue  # changed meanwhile: decide again on what is there now
            return tenant
        raise ConcurrencyError(f"tenant {tenant_id!r}: too many concurrent changes")

    def revoke_token(self, tenant_id: str, token_id: UUID, *, actor: str) -> None:
        """Revoke a tenant's token by its id (the token itself is never stored)."""
        token = self._load(token_id, Token)
        if token is None or token.tenant_id != tenant_id:
            raise TokenNotFoundError(f"tenant {tenant_id!r} has no token {token_id}")
        token.revoke(self.clock(), actor)
        with contextlib.suppress(IntegrityError):  # revoked by someone else at once: the effect holds
            self.save(token)

    def issue_token(self, tenant_id: str, *, actor: str) -> str:
        """A new random token for the tenant; only its digest is stored."""
        self.get_tenant(tenant_id)
        token = f"lci_{secrets.token_urlsafe(32)}"
        self.save(Token.issue(token=token, tenant_id=tenant_id, actor=actor, at=self.clock()))
        return token

    def tenant_of_token(self, token: str) -> str | None:
        issued = self._load(token_aggregate_id(token), Token)
        if issued is None or issued.revoked:
            return None
        return issued.tenant_id

    def register_repository(
        self, repository_id: str, *, tenant_id: str, clone_url: str, principal: Principal
    ) -> Repository:
        if not principal.can_see(tenant_id):
            raise TenantNotFoundError(f"tenant {tenant_id!r} not found")
        self.get_tenant(tenant_id)
        check_clone_url(clone_url)
        former = self._load(repository_aggregate_id(repository_id), Repository)
        if former is not None and former.deleted:
            raise AlreadyExistsError(f"repository {repository_id!r} was deleted and its id is not reused "
                                     "(its runs keep it); choose another id")
        repository = Repository.register(
            repository_id=repository_id, tenant_id=tenant_id, clone_url=clone_url,
            actor=principal.name, at=self.clock(),
        )
        self._create(repository, f"repository {repository_id!r}")
        return repository

    def get_repository(self, repository_id: str, principal: Principal, *, deleted: bool = False) -> Repository:
        """The repository, if the principal may see it; a deleted one only when `deleted` (its runs)."""
        repository = self._load(repository_aggregate_id(repository_id), Repository)
        if repository is None or (repository.deleted and not deleted) or not principal.can_see(repository.tenant_id):
            raise RepositoryNotFoundError(f"repository {repository_id!r} not found")
        return repository

    def delete_repository(self, repository_id: str, principal: Principal) -> Repository:
        """No more pushes or secrets for the repository; its runs stay readable."""
        repository = self.get_repository(repository_id, principal)
        repository.delete(self.clock(), principal.name)
        with contextlib.suppress(IntegrityError):  # deleted by someone else at once: the effect holds
            self.save(repository)
        return repository

    # ----- runs ------------------------------------------------------------------------------

    def push(
        self, repository_id: str, commit: str, ref: str | None, principal: Principal,
        admit: Callable[[Tenant], None] | None = None,
    ) -> PushResult:
        """Record a push at once; reading the workflow file happens later (the planner).

        `admit` sees the repository's tenant first and may refuse (its quotas, its rate)."""
        repository = self.get_repository(repository_id, principal)
        if admit is not None:
            admit(self.get_tenant(repository.tenant_id))
        run_id = run_id_for(repository_id, commit)
        request_id = uuid4().hex
        run = Run.request(
            run_id=run_id, repository_id=repository_id, tenant_id=repository.tenant_id,
            commit=commit.lower(), ref=ref, clone_url=repository.clone_url, rerun=0,
            request_id=request_id, actor=principal.name, at=self.clock(),
        )
        return PushResult(run_id, duplicate=not self._create_run(run))

    def _create_run(self, *aggregates: Aggregate) -> bool:
        """Save a new run (with any aggregate saved alongside). False if it already existed.

        If the outcome is unknown (the store went away around COMMIT), version 1 is read back:
        our own request id there means our write landed.
        """
        run = aggregates[-1]
        assert isinstance(run, Run)
        try:
            self.save(*aggregates)
        except IntegrityError:
            stored = self._load(run.id, Run)
            return stored is not None and stored.request_id == run.request_id
        except (OperationalError, InterfaceError):
            self._wait_for_store()
            stored = self._load(run.id, Run)
            if stored is None:
                raise  # it did not land: the caller gets a 503 and may retry
            return stored.request_id == run.request_id
        return True

    def rerun(self, run_id: UUID | str, principal: Principal) -> UUID:
        """A new run of the same commit; its number is allocated on the commit's first run."""
        source = self.get_run(run_id, principal)
        if self.get_repository(source.repository_id, principal, deleted=True).deleted:
            raise RepositoryDeletedError(f"repository {source.repository_id!r} was deleted: its runs stay readable, "
                                         "but none is re-run")
        for _ in range(MAX_DECISION_ATTEMPTS):
            first = self._load(run_id_for(source.repository_id, source.commit), Run)
            assert first is not None
            number = first.request_rerun(self.clock(), principal.name)
            new_run = Run.request(
                run_id=run_id_for(source.repository_id, source.commit, number),
                repository_id=source.repository_id, tenant_id=source.tenant_id, commit=source.commit,
                ref=source.ref, clone_url=source.clone_url, rerun=number, request_id=uuid4().hex,
                actor=principal.name, at=self.clock(),
            )
            # One atomic save: the number is taken and the run exists, or neither.
            if self._create_run(first, new_run):
                return new_run.id
        raise ConcurrencyError(f"run {run_id}: too many concurrent re-runs")

    def cancel_run(self, run_id: UUID | str, principal: Principal) -> tuple[Run, Job | None, bool]:
        """Cancel the run; returns it, the job that was running (to be stopped now), and whether
        this call cancelled it (False: it had ended already)."""
        run = self.get_run(run_id, principal)
        running: Job | None = None
        cancelled = False

        def decide(current: Run) -> bool:
            nonlocal running, cancelled
            job = current.current_job
            running = job if job is not None and job.status is JobStatus.RUNNING else None
            cancelled = current.cancel(self.clock(), principal.name)
            return cancelled

        return self._decide(run.id, decide), running, cancelled

    def get_run(self, run_id: UUID | str, principal: Principal) -> Run:
        try:
            run = self._load(UUID(str(run_id)), Run)
        except ValueError:
            run = None
        if run is None or not principal.can_see(run.tenant_id):
            raise RunNotFoundError(f"run {run_id} not found")
        return run

    def get_run_version(self, run_id: UUID) -> int:
        run = self._load(run_id, Run)
        return run.version if run is not None else 0

    def plan_run(self, run_id: UUID, workflow_file: bytes | None, *, actor: str = "planner",
                 commit: tuple[str, str] | None = None) -> Run:
        """Decide what the push runs, from the workflow file read at its commit; `commit`
        (subject, author) is recorded first, in the same save."""

        def decide(run: Run) -> bool:
            at = self.clock()
            if run.planned or run.status.is_final:
                return False
            if commit is not None:
                run.describe_commit(*commit, at, actor)
            if workflow_file is None:
                return run.skip(f"no .ledgerci.yml at commit {run.commit}", at, actor)
            try:
                workflow = parse_workflow(workflow_file)
            except InvalidWorkflowError as error:
                return run.fail_before_start(str(error), at, actor)
            if not ref_matches(workflow.branches, run.ref):
                reason = f"ref {run.ref} does not match on.branches {workflow.branches}"
                return run.skip(reason, at, actor)
            refused = self._pool_refusal(run.tenant_id, workflow.jobs)
            if refused:
                return run.fail_before_start(refused, at, actor)
            return run.plan(
                workflow.jobs, workflow.name, at, actor,
                lease_seconds=self.timing.lease_seconds,
                queue_timeout_seconds=self.timing.queue_timeout_seconds,
            )

        return self._decide(run_id, decide)

    def _pool_refusal(self, tenant_id: str, jobs: list[JobSpec]) -> str | None:
        """Why the tenant may not run these jobs where they ask to run, if it may not."""
        tenant = self._load(tenant_aggregate_id(tenant_id), Tenant)
        allowed = tenant.pools if tenant is not None else ANY_POOL
        for job in jobs:
            if not pool_allowed(allowed, job.pool):
                return (f'job "{job.name}" asks for runner pool "{job.pool}"; tenant {tenant_id!r} '
                        f"may use: {', '.join(allowed)}")
        return None

    def fail_run_before_start(self, run_id: UUID, error: str, *, actor: str = "planner") -> Run:
        return self._decide(run_id, lambda run: run.fail_before_start(error, self.clock(), actor))

    def dispatch_for(self, run_id: UUID, job_id: str, attempt: int) -> JobDispatch | None:
        """The dispatch message for a queued attempt, or None if it is no longer queued."""
        run = self._load(run_id, Run)
        if run is None:
            return None
        ready = self.ready_dispatch(run)
        if ready is None or ready.job_id != str(job_id) or ready.attempt != attempt:
            return None
        return ready

    @staticmethod
    def ready_dispatch(run: Run) -> JobDispatch | None:
        """What a runner needs for the run's queued attempt, if one is queued."""
        job = run.current_job
        if job is None or job.status is not JobStatus.QUEUED:
            return None
        origin = RunOrigin(str(run.id), run.tenant_id, run.repository_id, run.clone_url, run.commit, run.ref)
        return job_dispatch(origin, str(job.id), job.attempt, job.spec)

    # ----- runner commands (fenced by attempt) ------------------------------------------------

    def start_job(self, command: StartJob) -> CommandResult:
        return self._runner_command(
            command.run_id,
            lambda run: run.start_job(command.job_id, command.attempt, command.runner_id, self.clock(),
                                      executor=command.executor, pool=command.pool),
            job_id=command.job_id,
        )

    def heartbeat(self, command: Heartbeat) -> CommandResult:
        return self._runner_command(
            command.run_id,
            lambda run: run.heartbeat(command.job_id, command.attempt, command.runner_id, self.clock()),
            job_id=command.job_id,
        )

    def finish_job(self, command: FinishJob) -> CommandResult:
        return self._runner_command(
            command.run_id,
            lambda run: run.finish_job(
                command.job_id, command.attempt, command.runner_id, command.exit_code,
                self.clock(), command.error, timed_out=command.timed_out,
            ),
            job_id=command.job_id, with_deadlines=False,
        )

    def hand_back(self, command: HandBack) -> CommandResult:
        return self._runner_command(
            command.run_id,
            lambda run: run.hand_back(command.job_id, command.attempt, command.runner_id, self.clock()),
            job_id=command.job_id, with_deadlines=False,
        )

    def _runner_command(
        self, run_id: str, decide: Callable[[Run], bool], job_id: str, with_deadlines: bool = True
    ) -> CommandResult:
        appended = False

        def deciding(run: Run) -> bool:
            nonlocal appended
            appended = decide(run)
            return appended

        try:
            run = self._decide(UUID(run_id), deciding)
        except (StaleAttemptError, InvalidTransitionError, RunNotFoundError) as refused:
            return CommandResult(CommandReply(ok=False, refused=True, error=str(refused)))
        job = run.job(job_id)
        deadlines = {"lease_expires_at": job.lease_expires_at, "timeout_at": job.timeout_at} if with_deadlines else {}
        return CommandResult(CommandReply(ok=True, **deadlines), job if appended else None)

    # ----- the reaper's commands (deadlines passed; each a no-op if it no longer applies) ---

    def mark_lost(self, run_id: UUID, job_id: str, attempt: int, *, actor: str = "reaper") -> Run:
        return self._decide(run_id, lambda run: run.mark_lost(job_id, attempt, self.clock(), actor))

    def enforce_timeout(self, run_id: UUID, job_id: str, attempt: int, *, actor: str = "reaper") -> Run:
        return self._decide(run_id, lambda run: run.enforce_timeout(job_id, attempt, self.clock(), actor))

    def expire_queued(self, run_id: UUID, job_id: str, attempt: int, *, actor: str = "reaper") -> Run:
        return self._decide(run_id, lambda run: run.expire_queued(job_id, attempt, self.clock(), actor))

    # ----- history ------------------------------------------------------------------------

    def history(self, run_id: UUID) -> list[EventMessage]:
        """Every event of a run, in order (the audit trail)."""
        return [to_event_message(event, None) for event in self.events.get(run_id)]

    def run_as_of(
        self, run_id: UUID | str, principal: Principal, *, version: int | None = None, at: datetime | None = None
    ) -> Run:
        """The run as it was at a version, or at a moment: replayed from its events, not read
        from a read model (what the system knew then, for an auditor)."""
        run = self.get_run(run_id, principal)
        if at is not None:
            known = [e.originator_version for e in self.events.get(run.id) if e.timestamp <= at]
            if not known:
                raise RunNotFoundError(f"run {run_id} did not exist at {at.isoformat()}")
            version = known[-1] if version is None else min(version, known[-1])
        if version is not None and not 1 <= version <= run.version:
            raise RunNotFoundError(f"run {run_id} has no version {version} (its versions are 1 to {run.version})")
        if version is None or version == run.version:
            return run
        return self.repository.get(run.id, version=version)

    def verify_chain(self, aggregate_id: UUID | None = None, page_size: int = 5000) -> tuple[int, list[Broken]]:
        """Recompute the tamper-evident chain of one stream, or of every stream in the store.

        Returns how many events were checked and the first broken link of each broken stream.
        """
        checkers: dict[UUID, StreamChecker] = {}
        broken: list[Broken] = []
        checked = 0
        if aggregate_id is not None:
            pages: Iterator[list] = iter([self.stored_events(aggregate_id)])
        else:
            pages = self._notification_pages(page_size)
        for page in pages:
            for stored in page:
                checked += 1
                checker = checkers.get(stored.originator_id)
                if checker is None:
                    checker = checkers[stored.originator_id] = StreamChecker(self.audit_key, stored.originator_id)
                if found := checker.check(stored):
                    broken.append(found)
        return checked, broken

    def _notification_pages(self, page_size: int) -> Iterator[list[Notification]]:
        position = 0
        while page := self.notifications_after(position, page_size):
            yield page
            position = page[-1].id

    def changes_after(self, run_id: UUID, version: int) -> Iterator[tuple[Any, Run]]:
        """(event, the run right after it) for each event after `version`, in order: what a
        live view that has seen `version` missed. The run object is the same one, advanced."""
        run = self.repository.get(run_id, version=version) if version > 0 else None
        for event in self.events.get(run_id, gt=version):
            run = event.mutate(run)
            yield event, run

    def replay_events_only(self, aggregate_id: UUID, version: int | None = None) -> Aggregate | None:
        """The aggregate folded from its events alone, ignoring snapshots (to check them)."""
        aggregate = None
        for event in self.events.get(aggregate_id, lte=version):
            aggregate = event.mutate(aggregate)
        return aggregate

    def notifications_after(self, position: int, limit: int) -> list[Notification]:
        return list(self.recorder.select_notifications(start=position + 1, limit=limit))

    def history_pages(self, page_size: int = 1000) -> Iterator[list[tuple[int, object]]]:
        """The whole history, page by page, in the store's global order (for rebuilds)."""
        for page in self._notification_pages(page_size):
            yield [(notification.id, self.mapper.to_domain_event(notification)) for notification in page]

    def events_after(self, position: int, limit: int) -> Iterator[tuple[int, object]]:
        """(position, domain event) pairs after `position`, in the store's global order."""
        for notification in self.notifications_after(position, limit):
            yield notification.id, self.mapper.to_domain_event(notification)
