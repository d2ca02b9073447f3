"""The invariant checker itself must be able to fail: feed it broken histories."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest

from domain.artifacts import ArtifactSpec, UploadedArtifact
from domain.concurrency_group import ConcurrencyGroup
from domain.ids import run_id_for
from domain.registry import Tenant
from domain.run import Run
from domain.workflow import JobSpec
from tests.support.invariants import check_history, quota_breaches

pytestmark = pytest.mark.unit
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def history(run: Run) -> list:
    return [(i + 1, e) for i, e in enumerate(run.collect_events())]


def new_run(run_id=None, ref=None) -> Run:
    return Run.request(run_id=run_id or run_id_for("r", "a" * 40), repository_id="r", tenant_id="t",
                       commit="a" * 40, ref=ref, clone_url="x", rerun=0, request_id="q", actor="t", at=T0)


def finished_run() -> Run:
    run = new_run()
    run.plan([JobSpec(name="a", run="true", retries=1)], None, T0, "p")
    job = run.jobs[0]
    run.start_job(job.id, 1, "r1", T0)
    run.finish_job(job.id, 1, "r1", 0, T0)
    return run


def test_a_correct_history_passes():
    assert check_history(history(finished_run())) == []


def test_a_run_that_never_ended_is_reported():
    run = new_run()
    assert any("never ended" in p for p in check_history(history(run)))


def test_a_run_whose_id_is_not_derived_is_reported():
    assert any("derived id" in p for p in check_history(history(new_run(uuid4()))))


def test_a_second_outcome_and_a_result_from_a_stale_attempt_are_reported():
    run = finished_run()
    events = run.collect_events()
    job = run.jobs[0]
    forged = Run.JobSucceeded(originator_id=run.id, originator_version=len(events) + 1, timestamp=T0,
                              job_id=str(job.id), attempt=1, exit_code=0, actor="runner:r2")
    problems = check_history([(i + 1, e) for i, e in enumerate([*events, forged])])
    assert any("more than one terminal outcome" in p for p in problems)
    assert any("accepted from runner:r2" in p for p in problems)


def test_an_attempt_declared_lost_inside_its_lease_is_reported():
    run = new_run()
    run.plan([JobSpec(name="a", run="true", retries=1)], None, T0, "p")
    job = run.jobs[0]
    run.start_job(job.id, 1, "r1", T0)
    run.mark_lost(job.id, 1, T0 + timedelta(seconds=31), "reaper")
    events = run.collect_events()
    early = events[-2].__class__(**{**events[-2].__dict__, "timestamp": T0 + timedelta(seconds=5)})
    events[-2] = early
    assert any("declared lost" in p for p in check_history([(i + 1, e) for i, e in enumerate(events)],
                                                           require_final=False))


def test_more_attempts_running_than_the_tenants_quota_is_reported():
    tenant = Tenant.create(tenant_id="t", name="T", weight=1, max_concurrent_jobs=1, max_queued_runs=9,
                           pushes_per_minute=9, actor="admin", at=T0)
    first, second = new_run(), new_run(run_id_for("r", "b" * 40))
    for run in (first, second):
        run.plan([JobSpec(name="a", run="true")], None, T0, "p")
        run.start_job(run.jobs[0].id, 1, "r1", T0)
    events = [*tenant.collect_events(), *first.collect_events(), *second.collect_events()]

    problems = quota_breaches([(i + 1, e) for i, e in enumerate(events)])

    assert len(problems) == 1 and "2 attempts running" in problems[0] and "max_concurrent_jobs was 1" in problems[0]
    assert any("2 attempts running" in problem for problem in check_history(list(enumerate(events))))


def test_two_runs_of_a_group_running_at_once_and_a_group_held_by_an_ended_run_are_reported():
    """A forged history: both runs take the group (the second without the first leaving it) and
    start a job; the first then ends without leaving."""
    group = ConcurrencyGroup.open("t", "deploy", T0)
    first, second = new_run(), new_run(run_id_for("r", "b" * 40))
    for run in (first, second):
        run.plan([JobSpec(name="a", run="true")], None, T0, "p", group="deploy")
    group.take(first.id, T0, "p")
    group.holder = None  # forged: the group forgets its holder without a RunLeft
    group.take(second.id, T0, "p")
    first.start_job(first.jobs[0].id, 1, "r1", T0)
    second.start_job(second.jobs[0].id, 1, "r2", T0)
    events = [*group.collect_events(), *first.collect_events(), *second.collect_events()]
    first.finish_job(first.jobs[0].id, 1, "r1", 0, T0)
    events += first.collect_events()

    problems = check_history(list(enumerate(events)), require_final=False)

    assert any("taken by run" in p and "while held by run" in p for p in problems), problems
    assert any("while run" in p and "had not ended" in p for p in problems), problems
    assert not any("left held by" in p for p in problems)  # the second holds it, and has not ended
    second.finish_job(second.jobs[0].id, 1, "r2", 0, T0)
    events += second.collect_events()
    assert any("left held by run" in p for p in check_history(list(enumerate(events))))


def test_artifacts_recorded_apart_from_their_outcome_or_under_another_name_are_reported():
    run = new_run()
    run.plan([JobSpec(name="a", run="true", artifacts=ArtifactSpec(paths=["out/"]))], None, T0, "p")
    job = run.jobs[0]
    run.start_job(job.id, 1, "r1", T0)
    run.finish_job(job.id, 1, "r1", 0, T0, artifacts=[UploadedArtifact(path="out/a", size=1, sha256="0" * 64)])
    events = run.collect_events()
    assert check_history([(i + 1, e) for i, e in enumerate(events)]) == []
    uploaded = next(e for e in events if type(e).__name__ == "ArtifactUploaded")
    late = Run.ArtifactUploaded(originator_id=run.id, originator_version=len(events) + 1, timestamp=T0,
                                job_id=str(job.id), attempt=1, path="out/b", size=1, sha256="0" * 64,
                                object="t/other/place", expires_at=uploaded.expires_at, actor="runner:r1")
    problems = check_history([(i + 1, e) for i, e in enumerate([*events, late])])
    assert any("not recorded with its attempt's outcome" in p for p in problems)
    assert any("stored as 't/other/place'" in p for p in problems)


def test_a_report_of_files_the_job_does_not_list_fails_it_and_records_none():
    run = new_run()
    run.plan([JobSpec(name="a", run="true")], None, T0, "p")
    job = run.jobs[0]
    run.start_job(job.id, 1, "r1", T0)
    run.finish_job(job.id, 1, "r1", 0, T0, artifacts=[UploadedArtifact(path="../x", size=1, sha256="0" * 64)])
    kinds = [type(e).__name__ for e in run.collect_events()]
    assert "ArtifactUploaded" not in kinds and "JobFailed" in kinds
    assert run.jobs[0].error == "artifacts not recorded: the job lists no artifacts"


def test_a_tags_run_has_an_id_of_its_own_and_one_recorded_before_that_rule_still_passes():
    tag = "refs/tags/v1"
    assert run_id_for("r", "a" * 40, tag=tag) != run_id_for("r", "a" * 40)
    # A branch's run keeps the id every stored run was given.
    assert run_id_for("r", "a" * 40) == UUID("22e763c1-06a4-5550-ba70-303651fed813")
    tagged = new_run(run_id_for("r", "a" * 40, tag=tag), ref=tag)
    tagged.skip("no workflow", T0, "p")
    assert check_history(history(tagged)) == []
    recorded_before = new_run(run_id_for("r", "a" * 40), ref=tag)  # before tags had runs of their own
    recorded_before.skip("no workflow", T0, "p")
    assert any("derived id" in p for p in check_history(history(recorded_before)))
    assert check_history(history(recorded_before), tag_runs_under_commit_ids=True) == []
    stray = new_run(run_id_for("r", "a" * 40, tag="refs/tags/v2"), ref=tag)
    stray.skip("no workflow", T0, "p")
    assert any("derived id" in p for p in check_history(history(stray)))
