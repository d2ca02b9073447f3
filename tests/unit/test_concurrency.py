"""`concurrency:` in the workflow file, the group's name for one run, and what the run
aggregate records when it waits for its group, is superseded or is dropped."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from uuid import uuid4

import pytest

from domain.concurrency import Concurrency, group_name
from domain.errors import InvalidWorkflowError
from domain.run import Run
from domain.status import JobStatus, RunStatus
from domain.workflow import JobSpec, parse_workflow

T0 = datetime(2026, 1, 1, tzinfo=UTC)
JOBS = "jobs:\n  - name: a\n    run: make\n"


def refused(text: str) -> InvalidWorkflowError:
    with pytest.raises(InvalidWorkflowError) as caught:
        parse_workflow(textwrap.dedent(text))
    return caught.value


def test_a_plain_string_names_the_group_with_the_defaults() -> None:
    workflow = parse_workflow("concurrency: deploy\n" + JOBS)
    assert workflow.concurrency == Concurrency(group="deploy", cancel_in_progress=False, queue="single")
    assert workflow.jobs[0].interruptible is True
    assert parse_workflow(JOBS).concurrency is None


def test_the_mapping_form_and_interruptible() -> None:
    workflow = parse_workflow(textwrap.dedent("""\
        concurrency:
          group: deploy-${{ branch }}
          cancel_in_progress: true
          queue: max
        jobs:
          - name: deploy
            run: ./deploy
            interruptible: false
    """))
    assert workflow.concurrency == Concurrency(group="deploy-${{ branch }}", cancel_in_progress=True, queue="max")
    assert workflow.jobs[0].interruptible is False


@pytest.mark.parametrize(("text", "line", "field", "message"), [
    ('concurrency: "deploy-${{ tag }}"\n' + JOBS, 1, "concurrency",
     'unknown variable "tag" (expected one of: repository, ref, branch, commit, workflow)'),
    ("concurrency:\n  group: ''\n" + JOBS, 2, "concurrency.group", "the group name must not be empty"),
    ("concurrency:\n  group: d\n  queue: all\n" + JOBS, 3, "concurrency.queue",
     'expected one of: single, max, got "all"'),
    ("concurrency:\n  group: d\n  cancel_in_progres: true\n" + JOBS, 3, "concurrency.cancel_in_progres",
     'unknown field "cancel_in_progres" (expected one of: group, cancel_in_progress, queue)'),
    ('concurrency: "a ${{ b"\n' + JOBS, 1, "concurrency", 'a "${{" that is not a variable like ${{ ref }}'),
])
def test_a_bad_concurrency_names_its_line_and_field(text: str, line: int, field: str, message: str) -> None:
    error = refused(text)
    assert (error.line, error.field, error.message) == (line, field, message)


def test_the_group_name_takes_the_runs_values() -> None:
    name = group_name("${{ repository }}/${{branch}}/${{ ref }}/${{ commit }}/${{ workflow }}",
                      repository="web", ref="refs/heads/main", commit="c0ffee", workflow="ci")
    assert name == "web/main/refs/heads/main/c0ffee/ci"
    assert group_name("deploy-${{ branch }}", repository="web", ref=None, commit="c", workflow=None) == "deploy-"


def new_run(*specs: JobSpec, waits: bool) -> Run:
    run = Run.request(run_id=uuid4(), repository_id="repo", tenant_id="acme", commit="a" * 40,
                      ref="refs/heads/main", clone_url="file:///repo", rerun=0, request_id="req", actor="test", at=T0)
    run.plan(list(specs), "wf", T0, "planner", group="deploy", waits=waits)
    return run


def test_a_waiting_run_queues_its_first_job_only_when_its_turn_comes() -> None:
    run = new_run(JobSpec(name="a", run="x"), waits=True)
    assert run.waiting_for_group and run.jobs[0].status is JobStatus.PENDING
    assert run.take_group_turn(T0, "concurrency") is True
    assert run.jobs[0].status is JobStatus.QUEUED and not run.waiting_for_group
    assert run.take_group_turn(T0, "concurrency") is False


def test_superseding_cancels_everything_and_says_by_which_run() -> None:
    run = new_run(JobSpec(name="a", run="x"), JobSpec(name="b", run="y"), waits=False)
    run.start_job(run.jobs[0].id, 1, "r1", T0)
    assert run.supersede("newer", T0, "planner") is True
    assert run.status is RunStatus.CANCELLED and run.error == "superseded by run newer"
    assert [job.status for job in run.jobs] == [JobStatus.CANCELLED, JobStatus.CANCELLED]
    assert run.supersede("newest", T0, "planner") is False


def test_a_running_job_that_is_not_interruptible_finishes_then_the_run_ends_cancelled() -> None:
    run = new_run(JobSpec(name="a", run="x", interruptible=False), JobSpec(name="b", run="y"), waits=False)
    run.start_job(run.jobs[0].id, 1, "r1", T0)
    run.supersede("newer", T0, "planner")
    assert run.status is RunStatus.RUNNING and run.superseded_by == "newer"
    run.finish_job(run.jobs[0].id, 1, "r1", 0, T0)
    assert [job.status for job in run.jobs] == [JobStatus.SUCCEEDED, JobStatus.CANCELLED]
    assert run.status is RunStatus.CANCELLED and run.error == "superseded by run newer"


def test_only_a_waiting_run_is_dropped() -> None:
    waiting = new_run(JobSpec(name="a", run="x"), waits=True)
    assert waiting.drop("newer", T0, "planner") is True
    assert waiting.status is RunStatus.CANCELLED and waiting.error == "superseded by run newer"
    holding = new_run(JobSpec(name="a", run="x"), waits=False)
    assert holding.drop("newer", T0, "planner") is False


def test_a_job_level_group_holds_back_only_its_job_and_is_left_when_it_ends() -> None:
    run = Run.request(run_id=uuid4(), repository_id="repo", tenant_id="acme", commit="a" * 40,
                      ref="refs/heads/main", clone_url="file:///repo", rerun=0, request_id="req", actor="test", at=T0)
    run.plan([JobSpec(name="build", run="x"), JobSpec(name="deploy", run="y", concurrency="prod"),
              JobSpec(name="smoke", run="z")], "wf", T0, "planner")
    build, deploy, smoke = run.jobs
    assert build.status is JobStatus.QUEUED and not run.needs_group
    run.start_job(build.id, 1, "r1", T0)
    run.finish_job(build.id, 1, "r1", 0, T0)
    assert deploy.status is JobStatus.PENDING and run.needs_group
    assert (run.concurrency_group, run.group_job) == ("prod", str(deploy.id))
    run.enter_job_group(waits=True, at=T0, actor="concurrency")
    assert run.waiting_for_group and deploy.status is JobStatus.PENDING
    run.take_group_turn(T0, "concurrency")
    assert deploy.status is JobStatus.QUEUED
    run.start_job(deploy.id, 1, "r1", T0)
    run.finish_job(deploy.id, 1, "r1", 0, T0)
    kinds = [type(event).__name__ for event in run.pending_events]
    assert kinds[-3:] == ["JobSucceeded", "RunLeftGroup", "JobQueued"]
    assert smoke.status is JobStatus.QUEUED and run.concurrency_group is None
