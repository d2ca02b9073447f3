"""The run commands: a push, the plan, cancel and re-run, the runners' fenced commands and the
reaper's. Each loads its run, lets the aggregate decide (the guards live in the domain), and
saves at the expected version through the one decide-and-retry path (`LedgerStore.decide`);
a command whose effect already holds succeeds without appending. A decision that ends a run
of a concurrency group also hands the group on, in the same save (commands/concurrency.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import NamedTuple
from uuid import UUID, uuid4

import msgspec
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError, InterfaceError, OperationalError

from commands.concurrency import ConcurrencyGroups
from commands.dispatch import ready_dispatch
from commands.ledger_store import MAX_DECISION_ATTEMPTS, ConcurrencyError, LedgerStore
from commands.plan_rules import declare_schedules, group_of, pool_refusal, within_tenant_cap
from commands.principal import Principal
from commands.recent_runs import RecentRuns
from commands.registry import Registry
from commands.runner_decisions import (
    RUNNER_REFUSALS,
    CommandResult,
    RunnerCommand,
    RunnerDecision,
    refused_result,
    runner_decision,
    runner_reply,
)
from domain.errors import (
    InvalidWorkflowError,
    RepositoryDeletedError,
    RunNotFoundError,
)
from domain.ids import run_id_for, scheduled_run_id, tenant_aggregate_id
from domain.job import Job
from domain.messages import FinishJob, HandBack, Heartbeat, JobDispatch, StartJob
from domain.refs import ref_matches, tag_of
from domain.registry import Tenant
from domain.run import DEFAULT_LEASE_SECONDS, DEFAULT_QUEUE_TIMEOUT_SECONDS, Run
from domain.status import JobStatus
from domain.workflow import JobSpec, Workflow, parse_workflow


class Timing(NamedTuple):
    """Limits recorded into each run when it is planned (settings)."""

    lease_seconds: float = DEFAULT_LEASE_SECONDS
    queue_timeout_seconds: float = DEFAULT_QUEUE_TIMEOUT_SECONDS


class PushResult(NamedTuple):
    run_id: UUID
    duplicate: bool


class RunCommands:
    def __init__(self, store: LedgerStore, registry: Registry, clock: Callable[[], datetime],
                 timing: Timing) -> None:
        self.store = store
        self.registry = registry
        self.clock = clock
        self.timing = timing
        self.groups = ConcurrencyGroups(store)
        self.recent = RecentRuns()

    def _decide(self, run_id: UUID, decide: Callable[[Run], bool | list[Aggregate]]) -> Run:
        """Load the run, let `decide` trigger events (returning whether it did, or the other
        aggregates it changed alongside), and save all of it at the expected versions; if the
        run ended, its concurrency group is handed on in the same save."""
        decided: list[Run] = []
        self.recent.drop(run_id)  # this run is about to change under a kept copy

        def decision() -> list[Aggregate]:
            run = self.store.load(run_id, Run)
            if run is None:
                raise RunNotFoundError(f"run {run_id} not found")
            decided[:] = [run]
            return self._changed_by(run, decide)

        self.store.decide_together(decision, f"run {run_id}")
        return decided[0]

    def _changed_by(self, run: Run, decide: Callable[[Run], bool | list[Aggregate]]) -> list[Aggregate]:
        """What `decide` changed, each aggregate once: the run, what it changed alongside,
        and the concurrency group handed on if the run ended (nothing: it appended nothing)."""
        outcome = decide(run)
        if outcome is False:
            return []
        alongside = [] if outcome is True else outcome
        changed = [run, *alongside, *self.groups.settle(run, self.clock(), "concurrency", decided=alongside)]
        return list({aggregate.id: aggregate for aggregate in changed}.values())

    # ----- a push, and the runs a user asks for ---------------------------------------------------

    def push(
        self, repository_id: str, commit: str, ref: str | None, principal: Principal,
        admit: Callable[[Tenant], None] | None = None,
    ) -> PushResult:
        """Record a push at once; reading the workflow file happens later (the planner).

        `admit` sees the repository's tenant first and may refuse (its quotas, its rate)."""
        repository = self.registry.get_repository(repository_id, principal)
        if admit is not None:
            admit(self.registry.get_tenant(repository.tenant_id))
        tag = tag_of(ref)
        if tag is not None and (recorded := self._tag_run_under_commit_id(repository_id, commit, tag)) is not None:
            return PushResult(recorded, duplicate=True)
        run = Run.request(
            run_id=run_id_for(repository_id, commit, tag=tag), repository_id=repository_id,
            tenant_id=repository.tenant_id, commit=commit.lower(), ref=ref, clone_url=repository.clone_url,
            rerun=0, request_id=uuid4().hex, actor=principal.name, at=self.clock(),
        )
        return PushResult(run.id, duplicate=not self._create_run(run))

    def _create_run(self, *aggregates: Aggregate) -> bool:
        """Save a new run (with any aggregate saved alongside). False if it already existed.

        If the outcome is unknown (the store went away around COMMIT), version 1 is read back:
        our own request id there means our write landed.
        """
        run = aggregates[-1]
        assert isinstance(run, Run)
        try:
            self.store.save_together(*aggregates)
        except IntegrityError:
            stored = self.store.load(run.id, Run)
            return stored is not None and stored.request_id == run.request_id
        except (OperationalError, InterfaceError):
            self.store.wait_for_store()
            stored = self.store.load(run.id, Run)
            if stored is None:
                raise  # it did not land: the caller gets a 503 and may retry
            return stored.request_id == run.request_id
        return True

    def fire_schedule(self, repository_id: str, branch: str, cron: str, nominal_at: datetime,
                      commit: str) -> PushResult:
        """A schedule's run for one nominal time, of the commit that declared the schedule.
        The run's id derives from (repository, branch, cron, time): a second firing of the
        same time, by this replica or another, finds it there (`duplicate`)."""
        principal = Principal(f"schedule:{cron}", None)
        repository = self.registry.get_repository(repository_id, principal)
        at = self.clock()
        run = Run.request(
            run_id=scheduled_run_id(repository_id, branch, cron, nominal_at), repository_id=repository_id,
            tenant_id=repository.tenant_id, commit=commit, ref=f"refs/heads/{branch}",
            clone_url=repository.clone_url, rerun=0, request_id=uuid4().hex, actor=principal.name, at=at,
        )
        run.mark_scheduled(branch, cron, nominal_at, at, principal.name)
        return PushResult(run.id, duplicate=not self._create_run(run))

    def rerun(self, run_id: UUID | str, principal: Principal) -> UUID:
        """A new run of the same commit; its number is allocated on the commit's first run.

        Not `store.decide`: two aggregates are saved together (the number taken, the new run),
        and an unknown outcome is settled by the new run's request id."""
        source = self.get_run(run_id, principal)
        if self.registry.get_repository(source.repository_id, principal, deleted=True).deleted:
            raise RepositoryDeletedError(f"repository {source.repository_id!r} was deleted: its runs stay readable, "
                                         "but none is re-run")
        for _ in range(MAX_DECISION_ATTEMPTS):
            first = self.store.load(self._first_run_id(source), Run)
            assert first is not None
            number = first.request_rerun(self.clock(), principal.name)
            new_run = Run.request(
                run_id=run_id_for(source.repository_id, source.commit, number, tag_of(source.ref)),
                repository_id=source.repository_id, tenant_id=source.tenant_id, commit=source.commit,
                ref=source.ref, clone_url=source.clone_url, rerun=number, request_id=uuid4().hex,
                actor=principal.name, at=self.clock(),
            )
            if self._create_run(first, new_run):
                return new_run.id
        raise ConcurrencyError(f"run {run_id}: too many concurrent re-runs")

    def _first_run_id(self, source: Run) -> UUID:
        """The run whose counter numbers the re-runs of `source`: the push's own."""
        tag = tag_of(source.ref)
        if tag is not None and (recorded := self._tag_run_under_commit_id(source.repository_id, source.commit,
                                                                           tag)) is not None:
            return recorded
        return run_id_for(source.repository_id, source.commit, tag=tag)

    def _tag_run_under_commit_id(self, repository_id: str, commit: str, tag: str) -> UUID | None:
        """A tag's run recorded before tags had runs of their own: it has its commit's id (the
        commit was first pushed as that tag). It stays the tag's run: pushed again, the same."""
        recorded = self.store.load(run_id_for(repository_id, commit), Run)
        return recorded.id if recorded is not None and recorded.ref == tag else None

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
            run = self.store.load(UUID(str(run_id)), Run)
        except ValueError:
            run = None
        if run is None or not principal.can_see(run.tenant_id):
            raise RunNotFoundError(f"run {run_id} not found")
        return run

    def load_run(self, run_id: UUID) -> Run:
        """The run as it is now, for a service that already knows it may see it (a stream)."""
        run = self.store.load(run_id, Run)
        if run is None:
            raise RunNotFoundError(f"run {run_id} not found")
        return run

    def get_run_version(self, run_id: UUID) -> int:
        run = self.store.load(run_id, Run)
        return run.version if run is not None else 0

    # ----- the planner ----------------------------------------------------------------------------

    def plan_run(self, run_id: UUID, workflow_file: bytes | None, *, actor: str = "planner",
                 commit: tuple[str, str] | None = None) -> Run:
        """Decide what the push runs, from the workflow file read at its commit; `commit`
        (subject, author) is recorded first, in the same save."""

        def decide(run: Run) -> bool | list[Aggregate]:
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
            if run.scheduled_by is None and not ref_matches(workflow.branches, run.ref):
                reason = f"ref {run.ref} does not match on.branches {workflow.branches}"
                return run.skip(reason, at, actor)
            tenant = self.store.load(tenant_aggregate_id(run.tenant_id), Tenant)
            refused = pool_refusal(run.tenant_id, tenant, workflow.jobs)
            if refused:
                return run.fail_before_start(refused, at, actor)
            return self._plan(run, workflow, within_tenant_cap(workflow.jobs, tenant), at, actor)

        return self._decide(run_id, decide)

    def _plan(self, run: Run, workflow: Workflow, jobs: list[JobSpec], at: datetime,
              actor: str) -> bool | list[Aggregate]:
        """Record the plan, with the schedules the file declares for the push's branch; a run
        of a concurrency group joins it first (and may wait)."""
        timing = self.timing._asdict()  # lease_seconds, queue_timeout_seconds
        jobs = [msgspec.structs.replace(job, concurrency=group_of(run, workflow, job.concurrency))
                if job.concurrency else job for job in jobs]
        if workflow.concurrency is None:
            declare_schedules(run, workflow, at, actor)
            return run.plan(jobs, workflow.name, at, actor, **timing)
        group = group_of(run, workflow, workflow.concurrency.group)
        joined = self.groups.join(run, group, workflow.concurrency, at, actor)
        if joined.refusal is not None:
            return run.fail_before_start(joined.refusal, at, actor)
        declare_schedules(run, workflow, at, actor)
        run.plan(jobs, workflow.name, at, actor, group=group, waits=joined.waits, **timing)
        return joined.changed

    def fail_run_before_start(self, run_id: UUID, error: str, *, actor: str = "planner") -> Run:
        return self._decide(run_id, lambda run: run.fail_before_start(error, self.clock(), actor))

    def dispatch_for(self, run_id: UUID, job_id: str, attempt: int) -> JobDispatch | None:
        """The dispatch message for a queued attempt, or None if it is no longer queued."""
        run = self.store.load(run_id, Run)
        if run is None:
            return None
        ready = ready_dispatch(run)
        if ready is None or ready.job_id != str(job_id) or ready.attempt != attempt:
            return None
        return ready

    # ----- runner commands (fenced by attempt) ----------------------------------------------------

    def start_job(self, command: StartJob) -> CommandResult:
        return self._runner_command(runner_decision(command, self.clock))

    def heartbeat(self, command: Heartbeat) -> CommandResult:
        return self._runner_command(runner_decision(command, self.clock))

    def finish_job(self, command: FinishJob) -> CommandResult:
        return self._runner_command(runner_decision(command, self.clock))

    def hand_back(self, command: HandBack) -> CommandResult:
        return self._runner_command(runner_decision(command, self.clock))

    def _runner_command(self, decision: RunnerDecision) -> CommandResult:
        """One runner command, decided on the run as stored (with retries on conflicts)."""
        appended = False

        def deciding(run: Run) -> bool:
            nonlocal appended
            appended = decision.decide(run)
            return appended

        try:
            run = self._decide(decision.run_id, deciding)
        except RUNNER_REFUSALS as refused:
            return refused_result(refused)
        result = runner_reply(run, decision, appended, self.clock())
        self.recent.keep(run)  # ours alone: nothing returned refers to it
        return result

    def runner_commands(self, commands: Sequence[RunnerCommand]) -> list[CommandResult | Exception]:
        """Runner commands that arrived together, each one's result (or the error it met), in
        order: those on different runs are decided and saved in one transaction, kept runs
        standing in for loads (commands.recent_runs says when one counts); a second command
        on the same run waits for the first one's save. Whatever cannot be settled together
        (a conflict, a lost connection, a decision a kept run cannot vouch for) is decided
        again alone, on the run as stored, exactly as if it had come alone."""
        decisions = [runner_decision(command, self.clock) for command in commands]
        results: list[CommandResult | Exception | None] = [None] * len(decisions)
        waiting = list(range(len(decisions)))
        while waiting:
            together, later, runs = [], [], set()
            for index in waiting:
                run_id = decisions[index].run_id
                (later if run_id in runs else together).append(index)
                runs.add(run_id)
            self._decide_together([(index, decisions[index]) for index in together], results)
            waiting = later
        assert all(result is not None for result in results)
        return results  # type: ignore[return-value]

    def _decide_together(self, decisions: list[tuple[int, RunnerDecision]],
                         results: list[CommandResult | Exception | None]) -> None:
        """Decisions on distinct runs: saved in one transaction, or each decided again alone."""
        saving: list[tuple[int, RunnerDecision, Run]] = []
        changed: dict[UUID, Aggregate] = {}
        alone: list[tuple[int, RunnerDecision]] = []
        for index, decision in decisions:
            kept = self.recent.take(decision.run_id)
            try:
                run = kept or self.store.load(decision.run_id, Run)
                if run is None:
                    raise RunNotFoundError(f"run {decision.run_id} not found")
                aggregates = self._changed_by(run, decision.decide)
            except RUNNER_REFUSALS as refused:
                if kept is not None:
                    alone.append((index, decision))  # maybe stale: the stored run decides
                else:
                    results[index] = refused_result(refused)
                continue
            except Exception as failed:
                results[index] = failed
                continue
            if not aggregates:
                if kept is not None:
                    alone.append((index, decision))
                else:
                    results[index] = runner_reply(run, decision, False, self.clock())
                    self.recent.keep(run)
                continue
            if (kept is not None and not run.pending_events) or changed.keys() & {a.id for a in aggregates}:
                # A kept run's decision that its own save would not check, or one that changes
                # what another decision here changed (two runs of one concurrency group).
                alone.append((index, decision))
                continue
            changed.update((aggregate.id, aggregate) for aggregate in aggregates)
            saving.append((index, decision, run))
        if changed:
            try:
                self.store.save_together(*changed.values())
            except (IntegrityError, OperationalError, InterfaceError) as failed:
                if not isinstance(failed, IntegrityError):
                    self.store.wait_for_store()
                alone += [(index, decision) for index, decision, _ in saving]
                saving = []
        for index, decision, run in saving:
            results[index] = runner_reply(run, decision, True, self.clock())
            self.recent.keep(run)
        for index, decision in alone:
            try:
                results[index] = self._runner_command(decision)
            except Exception as failed:
                results[index] = failed

    # ----- the reaper's commands (deadlines passed; each a no-op if it no longer applies) ---------

    def expire_artifacts(self, run_id: UUID, job_id: str, paths: list[str], *, actor: str = "reaper") -> Run:
        return self._decide(run_id, lambda run: run.expire_artifacts(job_id, paths, self.clock(), actor))

    def mark_lost(self, run_id: UUID, job_id: str, attempt: int, *, actor: str = "reaper") -> Run:
        return self._decide(run_id, lambda run: run.mark_lost(job_id, attempt, self.clock(), actor))

    def enforce_timeout(self, run_id: UUID, job_id: str, attempt: int, *, actor: str = "reaper") -> Run:
        return self._decide(run_id, lambda run: run.enforce_timeout(job_id, attempt, self.clock(), actor))

    def expire_queued(self, run_id: UUID, job_id: str, attempt: int, *, actor: str = "reaper") -> Run:
        return self._decide(run_id, lambda run: run.expire_queued(job_id, attempt, self.clock(), actor))
