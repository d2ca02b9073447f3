"""The run aggregate: jobs run in order, fenced by attempt, each outcome recorded once."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from domain.errors import InvalidTransitionError, StaleAttemptError
from domain.run import Run
from domain.status import JobStatus, RunStatus
from domain.workflow import JobSpec

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def new_run() -> Run:
    return Run.request(
        run_id=uuid4(), repository_id="repo", tenant_id="acme", commit="a" * 40, ref="refs/heads/main",
        clone_url="file:///repo", rerun=0, request_id="req", actor="test", at=T0,
    )


def planned(*specs: JobSpec) -> Run:
    run = new_run()
    run.plan(list(specs), "wf", T0, "planner")
    return run


def job(name: str, **kw) -> JobSpec:
    return JobSpec(name=name, run=f"echo {name}", **kw)


def replay(run: Run) -> Run:
    """The state rebuilt from the run's own events (what loading from the store does)."""
    events = run.collect_events()
    rebuilt = None
    for event in events:
        rebuilt = event.mutate(rebuilt)
    return rebuilt


def event_types(run: Run) -> list[str]:
    return [type(e).__name__ for e in run.pending_events]


def test_planning_queues_only_the_first_job():
    run = planned(job("a"), job("b"))
    assert [j.status for j in run.jobs] == [JobStatus.QUEUED, JobStatus.PENDING]
    assert event_types(run) == ["RunRequested", "RunPlanned", "JobQueued"]


def test_planning_twice_changes_nothing():
    run = planned(job("a"))
    assert run.plan([job("a")], "wf", T0, "planner") is False


def test_finishing_a_job_queues_the_next_in_the_same_decision():
    run = planned(job("a"), job("b"))
    a, b = run.jobs
    run.start_job(a.id, 1, "r1", T0)
    run.collect_events()
    run.finish_job(a.id, 1, "r1", 0, T0 + timedelta(seconds=1))
    assert event_types(run) == ["JobSucceeded", "JobQueued"]
    assert b.status is JobStatus.QUEUED


def test_failure_skips_later_jobs_but_runs_when_always():
    run = planned(job("a"), job("b"), job("c", when="always"), job("d", when="on_failure"))
    a, b, c, d = run.jobs
    run.start_job(a.id, 1, "r1", T0)
    run.finish_job(a.id, 1, "r1", 2, T0)
    assert (a.status, a.exit_code, b.status, c.status) == (JobStatus.FAILED, 2, JobStatus.SKIPPED, JobStatus.QUEUED)
    run.start_job(c.id, 1, "r1", T0)
    run.finish_job(c.id, 1, "r1", 0, T0)
    assert d.status is JobStatus.QUEUED
    run.start_job(d.id, 1, "r1", T0)
    run.finish_job(d.id, 1, "r1", 0, T0)
    assert run.status is RunStatus.FAILED


def test_allowed_failure_does_not_fail_the_run():
    run = planned(job("a", allow_failure=True), job("b"))
    a, b = run.jobs
    run.start_job(a.id, 1, "r1", T0)
    run.finish_job(a.id, 1, "r1", 1, T0)
    run.start_job(b.id, 1, "r1", T0)
    run.finish_job(b.id, 1, "r1", 0, T0)
    assert run.status is RunStatus.SUCCEEDED


def test_stale_attempt_is_refused():
    run = planned(job("a"))
    (a,) = run.jobs
    with pytest.raises(StaleAttemptError):
        run.start_job(a.id, 2, "r1", T0)


def test_another_runner_cannot_report_an_attempt_it_does_not_hold():
    run = planned(job("a"))
    (a,) = run.jobs
    run.start_job(a.id, 1, "r1", T0)
    with pytest.raises(InvalidTransitionError):
        run.start_job(a.id, 1, "r2", T0)
    with pytest.raises(StaleAttemptError):
        run.finish_job(a.id, 1, "r2", 0, T0)


def test_repeated_reports_are_idempotent():
    run = planned(job("a"))
    (a,) = run.jobs
    assert run.start_job(a.id, 1, "r1", T0) is True
    assert run.start_job(a.id, 1, "r1", T0) is False
    assert run.finish_job(a.id, 1, "r1", 0, T0) is True
    assert run.finish_job(a.id, 1, "r1", 0, T0) is False
    with pytest.raises(StaleAttemptError):
        run.finish_job(a.id, 1, "r1", 1, T0)  # a different outcome for an ended attempt


def test_invalid_workflow_fails_the_run_before_any_job():
    run = new_run()
    run.fail_before_start("line 3, field jobs[0].timout: unknown field", T0, "planner")
    assert run.status is RunStatus.FAILED and run.jobs == []
    assert run.plan([job("a")], None, T0, "planner") is False


def started(run: Run, runner: str = "r1", at: datetime = T0):
    job = run.current_job
    run.start_job(job.id, job.attempt, runner, at)
    return job


def test_start_records_an_absolute_lease_and_timeout():
    run = planned(job("a", timeout_seconds=600))
    a = started(run)
    assert a.lease_expires_at == T0 + timedelta(seconds=30)
    assert a.timeout_at == T0 + timedelta(seconds=600)


def test_heartbeat_extends_the_lease_from_now():
    run = planned(job("a"))
    a = started(run)
    run.heartbeat(a.id, 1, "r1", T0 + timedelta(seconds=10))
    assert a.lease_expires_at == T0 + timedelta(seconds=40)


def test_heartbeat_of_a_stale_attempt_is_refused():
    run = planned(job("a", retries=1))
    a = started(run)
    run.mark_lost(a.id, 1, T0 + timedelta(seconds=31), "reaper")
    with pytest.raises(StaleAttemptError):
        run.heartbeat(a.id, 1, "r1", T0 + timedelta(seconds=32))


def test_lost_runner_is_retried_while_retries_allow_then_fails_runner_lost():
    run = planned(job("a", retries=1), job("b"))
    a, b = run.jobs
    started(run)
    assert run.mark_lost(a.id, 1, T0 + timedelta(seconds=29), "reaper") is False  # lease not passed yet
    assert run.mark_lost(a.id, 1, T0 + timedelta(seconds=30), "reaper") is True
    assert (a.status, a.attempt) == (JobStatus.QUEUED, 2)
    assert run.mark_lost(a.id, 1, T0 + timedelta(seconds=31), "reaper") is False  # a second reaper
    started(run, "r2", T0 + timedelta(seconds=40))
    run.mark_lost(a.id, 2, T0 + timedelta(seconds=71), "reaper")
    assert (a.status, a.error, b.status, run.status) == (
        JobStatus.FAILED, "runner lost", JobStatus.SKIPPED, RunStatus.FAILED)


def test_result_of_the_lost_attempt_is_refused():
    run = planned(job("a", retries=1))
    a = started(run)
    run.mark_lost(a.id, 1, T0 + timedelta(seconds=30), "reaper")
    started(run, "r2", T0 + timedelta(seconds=31))
    with pytest.raises(StaleAttemptError):
        run.finish_job(a.id, 1, "r1", 0, T0 + timedelta(seconds=32))
    run.finish_job(a.id, 2, "r2", 0, T0 + timedelta(seconds=33))
    assert a.status is JobStatus.SUCCEEDED


def test_timeout_reported_by_the_runner_or_enforced_by_the_reaper():
    run = planned(job("a", timeout_seconds=5), job("b", timeout_seconds=5))
    a, _ = run.jobs
    started(run)
    run.finish_job(a.id, 1, "r1", None, T0 + timedelta(seconds=5), timed_out=True)
    assert (a.status, a.error) == (JobStatus.FAILED, "timed out")
    assert event_types(run).count("RunFailed") == 1
    run2 = planned(job("a", timeout_seconds=5))
    (c,) = run2.jobs
    started(run2)
    run2.heartbeat(c.id, 1, "r1", T0 + timedelta(seconds=4))
    assert run2.enforce_timeout(c.id, 1, T0 + timedelta(seconds=4), "reaper") is False
    assert run2.enforce_timeout(c.id, 1, T0 + timedelta(seconds=5), "reaper") is True
    assert (c.status, c.error, run2.status) == (JobStatus.FAILED, "timed out", RunStatus.FAILED)


def test_job_waiting_past_the_queue_limit_fails_not_picked_up():
    run = planned(job("a"))
    (a,) = run.jobs
    assert run.expire_queued(a.id, 1, T0 + timedelta(seconds=3599), "reaper") is False
    assert run.expire_queued(a.id, 1, T0 + timedelta(seconds=3600), "reaper") is True
    assert (a.status, a.error, run.status) == (JobStatus.FAILED, "not picked up", RunStatus.FAILED)


def test_cancel_ends_every_unfinished_job_and_the_run_when_always_ones_too():
    # A cancel stops the run now, as in GitLab and Woodpecker: `when: always` means whatever the
    # earlier jobs did, not after the user said stop (docs/workflow.md).
    run = planned(job("a"), job("b"), job("c", when="always"))
    a = started(run)
    assert run.cancel(T0, "tenant:x") is True
    assert [j.status for j in run.jobs] == [JobStatus.CANCELLED] * 3
    assert run.status is RunStatus.CANCELLED
    assert run.cancel(T0, "tenant:x") is False
    with pytest.raises(StaleAttemptError):
        run.heartbeat(a.id, 1, "r1", T0)


def test_rerun_numbers_are_allocated_in_order():
    run = new_run()
    assert [run.request_rerun(T0, "x"), run.request_rerun(T0, "x")] == [1, 2]


def test_replay_gives_the_same_state():
    run = planned(job("a"), job("b", when="always"))
    a, _ = run.jobs
    run.start_job(a.id, 1, "r1", T0)
    run.finish_job(a.id, 1, "r1", 1, T0 + timedelta(seconds=3))
    status, jobs = run.status, [(j.status, j.exit_code, j.finished_at) for j in run.jobs]
    rebuilt = replay(run)
    assert rebuilt.status == status
    assert [(j.status, j.exit_code, j.finished_at) for j in rebuilt.jobs] == jobs


class JobLifecycle(RuleBasedStateMachine):
    """Random commands, duplicates and stale runners included, never break the invariants."""

    def __init__(self) -> None:
        super().__init__()
        self.run: Run | None = None
        self.clock = T0
        self.finished_by: dict[str, int] = {}

    @rule(
        whens=st.lists(st.sampled_from(["on_success", "on_failure", "always"]), min_size=1, max_size=5),
        allowed=st.lists(st.booleans(), min_size=5, max_size=5),
    )
    @precondition(lambda self: self.run is None)
    def plan(self, whens, allowed):
        self.run = planned(*[job(f"j{i}", when=w, allow_failure=allowed[i]) for i, w in enumerate(whens)])

    def _tick(self) -> datetime:
        self.clock += timedelta(seconds=1)
        return self.clock

    @rule(runner=st.sampled_from(["r1", "r2"]), attempt=st.integers(0, 2), pick=st.integers(0, 4))
    @precondition(lambda self: self.run is not None)
    def start(self, runner, attempt, pick):
        target = self.run.jobs[pick % len(self.run.jobs)]
        with contextlib.suppress(StaleAttemptError, InvalidTransitionError):
            self.run.start_job(target.id, attempt, runner, self._tick())

    @rule(runner=st.sampled_from(["r1", "r2"]), attempt=st.integers(0, 2), pick=st.integers(0, 4),
          code=st.sampled_from([0, 0, 1, 137]), timed_out=st.booleans())
    @precondition(lambda self: self.run is not None)
    def finish(self, runner, attempt, pick, code, timed_out):
        target = self.run.jobs[pick % len(self.run.jobs)]
        with contextlib.suppress(StaleAttemptError, InvalidTransitionError):
            self.run.finish_job(target.id, attempt, runner, None if timed_out else code, self._tick(),
                                timed_out=timed_out)

    @invariant()
    def the_run_ends_at_most_once(self):
        if self.run:
            ends = [e for e in self.run.pending_events
                    if type(e).__name__ in ("RunSucceeded", "RunFailed", "RunSkipped", "RunCancelled")]
            assert len(ends) <= 1

    @rule(runner=st.sampled_from(["r1", "r2"]), attempt=st.integers(0, 3), pick=st.integers(0, 4))
    @precondition(lambda self: self.run is not None)
    def heartbeat(self, runner, attempt, pick):
        target = self.run.jobs[pick % len(self.run.jobs)]
        with contextlib.suppress(StaleAttemptError, InvalidTransitionError):
            self.run.heartbeat(target.id, attempt, runner, self._tick())

    @rule(seconds=st.integers(0, 90), attempt=st.integers(0, 3), pick=st.integers(0, 4))
    @precondition(lambda self: self.run is not None)
    def time_passes_and_the_reaper_looks(self, seconds, attempt, pick):
        self.clock += timedelta(seconds=seconds)
        target = self.run.jobs[pick % len(self.run.jobs)]
        self.run.mark_lost(target.id, attempt, self.clock, "reaper")
        self.run.enforce_timeout(target.id, attempt, self.clock, "reaper")

    @rule()
    @precondition(lambda self: self.run is not None)
    def cancel(self):
        self.run.cancel(self._tick(), "user")

    @invariant()
    def attempts_only_grow_and_results_come_from_current_attempts(self):
        if not self.run:
            return
        current: dict[str, int] = {}
        holder: dict[str, tuple[int, str] | None] = {}
        for event in self.run.pending_events:
            kind = type(event).__name__
            if kind == "JobQueued":
                assert event.attempt > current.get(event.job_id, 0)
                current[event.job_id] = event.attempt
                holder[event.job_id] = None
            elif kind == "JobStarted":
                assert event.attempt == current[event.job_id]
                holder[event.job_id] = (event.attempt, event.runner_id)
            elif kind in ("JobSucceeded", "JobFailed", "JobLeaseExtended") and event.actor.startswith("runner:"):
                assert holder[event.job_id] == (event.attempt, event.actor.removeprefix("runner:"))

    @invariant()
    def at_most_one_job_is_active(self):
        if self.run:
            active = [j for j in self.run.jobs if j.status in (JobStatus.QUEUED, JobStatus.RUNNING)]
            assert len(active) <= 1

    @invariant()
    def jobs_run_in_order(self):
        if self.run:
            statuses = [j.status for j in self.run.jobs]
            seen_unfinished = False
            for status in statuses:
                if seen_unfinished:
                    assert status is JobStatus.PENDING
                if not status.is_final:
                    seen_unfinished = True

    @invariant()
    def each_job_ends_once_and_run_ends_when_all_do(self):
        if not self.run:
            return
        ended: dict[str, int] = {}
        for event in self.run.pending_events:
            if type(event).__name__ in ("JobSucceeded", "JobFailed", "JobSkipped", "JobCancelled"):
                ended[event.job_id] = ended.get(event.job_id, 0) + 1
        assert all(count == 1 for count in ended.values())
        all_final = all(j.status.is_final for j in self.run.jobs)
        assert all_final == self.run.status.is_final
        if all_final and self.run.status is not RunStatus.CANCELLED:
            expected = RunStatus.FAILED if self.run.has_failed else RunStatus.SUCCEEDED
            assert self.run.status is expected

    def teardown(self):
        if self.run:
            copy_events = list(self.run.pending_events)
            rebuilt = None
            for event in copy_events:
                rebuilt = event.mutate(rebuilt)
            assert [(j.status, j.exit_code) for j in rebuilt.jobs] == [(j.status, j.exit_code) for j in self.run.jobs]


TestJobLifecycle = JobLifecycle.TestCase


def test_an_attempt_handed_back_by_a_stopping_runner_runs_again_without_using_a_retry():
    a = job("a", retries=1)
    run = planned(a)
    run.start_job(a_id := run.jobs[0].id, 1, "r1", T0)
    assert run.hand_back(a_id, 1, "r1", T0) is True
    job_a = run.jobs[0]
    assert (job_a.status, job_a.attempt, job_a.error, job_a.handed_back) == (JobStatus.QUEUED, 2, "runner stopped", 1)
    with pytest.raises(StaleAttemptError):
        run.hand_back(a_id, 1, "r1", T0)  # once only: the attempt is no longer r1's
    run.start_job(a_id, 2, "r2", T0)
    assert run.mark_lost(a_id, 2, T0 + timedelta(hours=2), "reaper") is True
    assert (job_a.status, job_a.attempt) == (JobStatus.QUEUED, 3)  # the one retry, still there
    run.start_job(a_id, 3, "r2", T0)
    assert run.mark_lost(a_id, 3, T0 + timedelta(hours=4), "reaper") is True
    assert (job_a.status, job_a.error) == (JobStatus.FAILED, "runner lost")
    assert replay(run).jobs[0].handed_back == 1


def test_the_commit_is_described_once_and_only_before_the_plan():
    run = new_run()
    assert run.describe_commit("Fix the build", "Ada <ada@example.com>", T0, "planner") is True
    assert run.describe_commit("Something else", "Bob <bob@example.com>", T0, "planner") is False
    run.plan([job("a")], "wf", T0, "planner")
    assert (run.commit_subject, run.commit_author) == ("Fix the build", "Ada <ada@example.com>")
    assert replay(run).commit_subject == "Fix the build"
    late = planned(job("a"))
    assert late.describe_commit("Too late", "Ada <ada@example.com>", T0, "planner") is False
    assert late.commit_subject is None  # a run planned before commits were read: nothing, not an error
