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
        clone_url="file:///repo", rerun=0, actor="test", at=T0,
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
    with pytest.raises(InvalidTransitionError):
        run.finish_job(a.id, 1, "r1", 1, T0)


def test_invalid_workflow_fails_the_run_before_any_job():
    run = new_run()
    run.fail_before_start("line 3, field jobs[0].timout: unknown field", T0, "planner")
    assert run.status is RunStatus.FAILED and run.jobs == []
    assert run.plan([job("a")], None, T0, "planner") is False


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
          code=st.sampled_from([0, 0, 1, 137]))
    @precondition(lambda self: self.run is not None)
    def finish(self, runner, attempt, pick, code):
        target = self.run.jobs[pick % len(self.run.jobs)]
        with contextlib.suppress(StaleAttemptError, InvalidTransitionError):
            self.run.finish_job(target.id, attempt, runner, code, self._tick())

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
            if type(event).__name__ in ("JobSucceeded", "JobFailed", "JobSkipped"):
                ended[event.job_id] = ended.get(event.job_id, 0) + 1
        assert all(count == 1 for count in ended.values())
        all_final = all(j.status.is_final for j in self.run.jobs)
        assert all_final == self.run.status.is_final
        if all_final:
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
