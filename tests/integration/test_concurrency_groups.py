"""Concurrency groups on the write side, against a real PostgreSQL store: who takes a group,
who waits, who is superseded or dropped and why, and the group handed on in the save that
ends its holder. The last test races planners, runners and cancels in threads and runs the
invariant checker over the whole history."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from itertools import count
from uuid import UUID

import pytest

from commands.app import LedgerApp
from domain.concurrency_group import ConcurrencyGroup
from domain.ids import concurrency_group_id
from domain.messages import FinishJob, HandBack, StartJob
from domain.run import Run
from domain.status import JobStatus, RunStatus
from tests.support.invariants import all_events, check_history, group_breaches
from tests.support.ledger import ADMIN, acme_ledger

pytestmark = pytest.mark.integration

_commits = count(1)


def workflow(concurrency: str, *, interruptible: bool = True, jobs: int = 1) -> bytes:
    steps = "".join(f"  - name: step{i}\n    run: make\n    interruptible: {str(interruptible).lower()}\n"
                    for i in range(jobs))
    return f"concurrency:\n{concurrency}\njobs:\n{steps}".encode()


DEPLOY = workflow("  group: deploy-${{ branch }}")
CANCEL_IN_PROGRESS = workflow("  group: deploy\n  cancel_in_progress: true", jobs=2)


@pytest.fixture
def ledger(postgres_url: str) -> Iterator[LedgerApp]:
    with acme_ledger(postgres_url) as app:
        yield app


def planned(ledger: LedgerApp, workflow_file: bytes, ref: str = "refs/heads/main") -> Run:
    run_id = ledger.runs.push("web", f"{next(_commits):040x}", ref, ADMIN).run_id
    return ledger.runs.plan_run(run_id, workflow_file)


def start(ledger: LedgerApp, run: Run, runner: str = "r1") -> Run:
    job = ledger.runs.load_run(run.id).current_job
    assert job is not None and job.status is JobStatus.QUEUED, f"run {run.id} has no queued job"
    reply = ledger.runs.start_job(StartJob(run_id=str(run.id), job_id=str(job.id), attempt=job.attempt,
                                           runner_id=runner)).reply
    assert reply.ok, reply.error
    return ledger.runs.load_run(run.id)


def finish(ledger: LedgerApp, run: Run, runner: str = "r1") -> Run:
    job = ledger.runs.load_run(run.id).current_job
    assert job is not None and job.status is JobStatus.RUNNING
    reply = ledger.runs.finish_job(FinishJob(run_id=str(run.id), job_id=str(job.id), attempt=job.attempt,
                                             runner_id=runner, exit_code=0)).reply
    assert reply.ok, reply.error
    return ledger.runs.load_run(run.id)


def group(ledger: LedgerApp, name: str, tenant: str = "acme") -> ConcurrencyGroup:
    found = ledger.store.load(concurrency_group_id(tenant, name), ConcurrencyGroup)
    assert found is not None
    return found


def first_job_status(ledger: LedgerApp, run: Run) -> JobStatus:
    return ledger.runs.load_run(run.id).jobs[0].status


def test_a_run_waits_while_its_group_is_held_and_takes_it_in_the_save_that_ends_the_holder(ledger):
    holder = start(ledger, planned(ledger, DEPLOY))
    waiting = planned(ledger, DEPLOY)
    assert waiting.waiting_for_group and waiting.concurrency_group == "deploy-main"
    assert first_job_status(ledger, waiting) is JobStatus.PENDING
    assert group(ledger, "deploy-main").holder == str(holder.id)
    assert group(ledger, "deploy-main").waiting == [str(waiting.id)]
    # Another branch is another group: it runs at once.
    assert first_job_status(ledger, planned(ledger, DEPLOY, ref="refs/heads/dev")) is JobStatus.QUEUED

    before = ledger.store.max_position()
    finish(ledger, holder)
    assert first_job_status(ledger, waiting) is JobStatus.QUEUED
    assert group(ledger, "deploy-main").holder == str(waiting.id)
    # One save: the holder's end, the group handed on, the next run's first job queued.
    saved = [type(event).__qualname__ for _, event in ledger.store.events_after(before, 100)]
    assert saved == ["Run.JobSucceeded", "Run.RunSucceeded", "ConcurrencyGroup.RunLeft",
                     "ConcurrencyGroup.GroupTaken", "Run.RunGotGroup", "Run.JobQueued"]


def test_queue_single_replaces_the_waiting_run_and_says_by_which(ledger):
    start(ledger, planned(ledger, DEPLOY))
    replaced = planned(ledger, DEPLOY)
    newer = planned(ledger, DEPLOY)
    replaced = ledger.runs.load_run(replaced.id)
    assert replaced.status is RunStatus.CANCELLED
    assert replaced.error == f"superseded by run {newer.id}"
    assert [job.status for job in replaced.jobs] == [JobStatus.CANCELLED]
    assert group(ledger, "deploy-main").waiting == [str(newer.id)]
    dropped = [e for e in ledger.audit.history(replaced.id) if e.type == "RunDropped"]
    assert [e.data["by_run"] for e in dropped] == [str(newer.id)]


def test_queue_max_keeps_every_run_in_order_up_to_its_cap(ledger):
    ledger.runs.groups.max_waiting = 2
    fifo = workflow("  group: release\n  queue: max")
    holder = start(ledger, planned(ledger, fifo))
    second, third = planned(ledger, fifo), planned(ledger, fifo)
    refused = planned(ledger, fifo)
    assert refused.status is RunStatus.FAILED
    assert refused.error == 'concurrency group "release" already has 2 runs waiting (queue: max)'
    finish(ledger, holder)
    assert first_job_status(ledger, second) is JobStatus.QUEUED
    assert first_job_status(ledger, third) is JobStatus.PENDING
    finish(ledger, start(ledger, second))
    assert first_job_status(ledger, third) is JobStatus.QUEUED


def test_cancel_in_progress_cancels_the_running_run_and_the_newer_one_starts_at_once(ledger):
    older = start(ledger, planned(ledger, CANCEL_IN_PROGRESS))
    newer = planned(ledger, CANCEL_IN_PROGRESS)
    older = ledger.runs.load_run(older.id)
    assert older.status is RunStatus.CANCELLED and older.error == f"superseded by run {newer.id}"
    assert [job.status for job in older.jobs] == [JobStatus.CANCELLED, JobStatus.CANCELLED]
    assert first_job_status(ledger, newer) is JobStatus.QUEUED
    assert group(ledger, "deploy").holder == str(newer.id)
    # The old attempt is fenced: its runner's report is refused.
    job = older.jobs[0]
    late = ledger.runs.finish_job(FinishJob(run_id=str(older.id), job_id=str(job.id), attempt=job.attempt,
                                            runner_id="r1", exit_code=0)).reply
    assert late.refused


def test_a_job_that_is_not_interruptible_finishes_then_the_newer_run_goes(ledger):
    guarded = workflow("  group: deploy\n  cancel_in_progress: true", interruptible=False, jobs=2)
    older = start(ledger, planned(ledger, guarded))
    newer = planned(ledger, guarded)
    older = ledger.runs.load_run(older.id)
    assert older.status is RunStatus.RUNNING and older.superseded_by == str(newer.id)
    assert first_job_status(ledger, newer) is JobStatus.PENDING and newer.waiting_for_group
    older = finish(ledger, older)
    assert older.status is RunStatus.CANCELLED and older.error == f"superseded by run {newer.id}"
    assert [job.status for job in older.jobs] == [JobStatus.SUCCEEDED, JobStatus.CANCELLED]
    assert first_job_status(ledger, newer) is JobStatus.QUEUED


def test_cancelling_a_run_of_a_group_takes_it_out_and_hands_the_group_on(ledger):
    holder = start(ledger, planned(ledger, workflow("  group: g\n  queue: max")))
    first = planned(ledger, workflow("  group: g\n  queue: max"))
    second = planned(ledger, workflow("  group: g\n  queue: max"))
    ledger.runs.cancel_run(first.id, ADMIN)
    assert group(ledger, "g").waiting == [str(second.id)]
    ledger.runs.cancel_run(holder.id, ADMIN)
    assert group(ledger, "g").holder == str(second.id)
    assert first_job_status(ledger, second) is JobStatus.QUEUED


def test_groups_are_per_tenant(ledger):
    ledger.registry.create_tenant("other", name="Other", weight=1, max_concurrent_jobs=4, max_queued_runs=100,
                                  pushes_per_minute=60, actor="admin")
    ledger.registry.register_repository("api", tenant_id="other", clone_url="file:///api", principal=ADMIN)
    start(ledger, planned(ledger, workflow("  group: deploy")))
    theirs = ledger.runs.plan_run(ledger.runs.push("api", "f" * 40, None, ADMIN).run_id, workflow("  group: deploy"))
    assert first_job_status(ledger, theirs) is JobStatus.QUEUED
    assert group(ledger, "deploy", tenant="other").holder == str(theirs.id)


def deploys(group: str = "prod") -> bytes:
    return (f"jobs:\n  - name: build\n    run: make\n  - name: deploy\n    run: ./deploy\n    concurrency: {group}\n"
            "  - name: smoke\n    run: ./smoke\n").encode()


def current(ledger: LedgerApp, run: Run) -> str | None:
    job = ledger.runs.load_run(run.id).current_job
    return None if job is None else f"{job.name}:{job.status.value}"


def test_a_job_level_group_serialises_one_job_across_runs_and_the_rest_runs_freely(ledger):
    first, second = planned(ledger, deploys()), planned(ledger, deploys())
    for run in (first, second):
        finish(ledger, start(ledger, run))  # both builds run at once: only deploy is grouped
    assert current(ledger, first) == "deploy:queued" and current(ledger, second) is None
    assert ledger.runs.load_run(second.id).waiting_for_group
    assert group(ledger, "prod").waiting == [str(second.id)]

    deploying = start(ledger, first)
    before = ledger.store.max_position()
    finish(ledger, deploying)  # deploy ends: the group goes to the second run
    assert current(ledger, first) == "smoke:queued" and current(ledger, second) == "deploy:queued"
    saved = [type(event).__qualname__ for _, event in ledger.store.events_after(before, 100)]
    assert saved == ["Run.JobSucceeded", "Run.RunLeftGroup", "Run.JobQueued", "ConcurrencyGroup.RunLeft",
                     "ConcurrencyGroup.GroupTaken", "Run.RunGotGroup", "Run.JobQueued"]
    finish(ledger, start(ledger, first))
    finish(ledger, start(ledger, second))
    finish(ledger, start(ledger, second))
    assert group(ledger, "prod").holder is None
    assert check_history(all_events(ledger)) == []


def test_a_run_that_needs_the_group_again_queues_behind_those_already_waiting(ledger):
    twice = (b"jobs:\n  - name: one\n    run: a\n    concurrency: prod\n"
             b"  - name: two\n    run: b\n    concurrency: prod\n")
    holder = start(ledger, planned(ledger, twice))
    other = planned(ledger, deploys())
    finish(ledger, start(ledger, other))  # its build; its deploy waits behind the holder
    finish(ledger, holder)  # "one" ends: the other run's deploy goes first, "two" waits
    assert current(ledger, other) == "deploy:queued"
    assert current(ledger, holder) is None and ledger.runs.load_run(holder.id).waiting_for_group
    assert group(ledger, "prod").waiting == [str(holder.id)]
    finish(ledger, start(ledger, other))
    assert current(ledger, holder) == "two:queued"


def test_a_run_that_ends_as_it_takes_the_group_leaves_it_in_the_same_save(ledger):
    """Every job skipped by `when`: the run ends the moment it is planned, or the moment its
    turn comes; either way the group goes on (found by a second read of the change)."""
    nothing_to_do = b"concurrency:\n  group: g\n  queue: max\njobs:\n  - name: a\n    run: x\n    when: on_failure\n"
    ended = planned(ledger, nothing_to_do)
    assert ended.status is RunStatus.SUCCEEDED and group(ledger, "g").holder is None
    holder = start(ledger, planned(ledger, workflow("  group: g\n  queue: max")))
    skipped, last = planned(ledger, nothing_to_do), planned(ledger, workflow("  group: g\n  queue: max"))
    ledger.runs.cancel_run(holder.id, ADMIN)
    assert ledger.runs.load_run(skipped.id).status is RunStatus.SUCCEEDED
    assert group(ledger, "g").holder == str(last.id) and first_job_status(ledger, last) is JobStatus.QUEUED
    assert check_history(all_events(ledger), require_final=False) == []


def test_a_superseded_run_does_not_start_its_finishing_job_again(ledger):
    """The job that was not interruptible is handed back by its stopping runner: the superseded
    run ends there, rather than running the job again while the newer run waits."""
    guarded = workflow("  group: deploy\n  cancel_in_progress: true", interruptible=False)
    older = start(ledger, planned(ledger, guarded))
    newer = planned(ledger, guarded)
    job = ledger.runs.load_run(older.id).jobs[0]
    ledger.runs.hand_back(HandBack(run_id=str(older.id), job_id=str(job.id), attempt=job.attempt, runner_id="r1"))
    assert ledger.runs.load_run(older.id).status is RunStatus.CANCELLED
    assert first_job_status(ledger, newer) is JobStatus.QUEUED


def test_racing_planners_runners_and_cancels_never_run_two_runs_of_a_group_at_once(ledger):
    """Four planners push 40 runs into one group (a third of them cancel_in_progress, some not
    interruptible) while two runners work the group and a user cancels at random. The invariant
    checker reads the whole history: one run of the group at a time, every run ended, the group
    left held by nobody."""
    files = [workflow("  group: race\n  queue: max"), workflow("  group: race\n  cancel_in_progress: true", jobs=2),
             workflow("  group: race", interruptible=False), deploys("race-jobs")]
    # The test's runners start whatever is queued (no admission here): the tenant's quota must
    # not be what limits them.
    ledger.registry.update_tenant("acme", {"max_concurrent_jobs": 1000}, actor="admin")
    pushed: list[UUID] = []
    done = threading.Event()
    failures: list[BaseException] = []

    def guarded(work):
        def run() -> None:
            try:
                work()
            except BaseException as failure:  # reported by the test, not lost in the thread
                failures.append(failure)
        return run

    def planner(seed: int) -> None:
        chance = random.Random(seed)
        for _ in range(10):
            pushed.append(planned(ledger, chance.choice(files)).id)

    def runner(name: str) -> None:
        chance = random.Random(name)
        while not done.is_set() or any(not ledger.runs.load_run(r).status.is_final for r in list(pushed)):
            for run_id in list(pushed):
                run = ledger.runs.load_run(run_id)
                job = run.current_job
                if job is None:
                    continue
                if job.status is JobStatus.QUEUED:
                    ledger.runs.start_job(StartJob(run_id=str(run_id), job_id=str(job.id), attempt=job.attempt,
                                                   runner_id=name))
                elif job.status is JobStatus.RUNNING and job.runner_id == name:
                    if chance.random() < 0.1:
                        ledger.runs.cancel_run(run_id, ADMIN)
                    else:
                        ledger.runs.finish_job(FinishJob(run_id=str(run_id), job_id=str(job.id),
                                                         attempt=job.attempt, runner_id=name, exit_code=0))

    planners = [threading.Thread(target=guarded(lambda s=s: planner(s))) for s in range(4)]
    runners = [threading.Thread(target=guarded(lambda n=n: runner(n))) for n in ("r1", "r2")]
    for thread in (*planners, *runners):
        thread.start()
    for thread in planners:
        thread.join(120)
    done.set()
    for thread in runners:
        thread.join(120)
    assert not failures, failures[0]
    assert len(pushed) == 40
    events = all_events(ledger)
    assert check_history(events) == []
    kinds = [type(event).__name__ for _, event in events]
    assert kinds.count("GroupTaken") >= 10 and kinds.count("RunSuperseded") + kinds.count("RunDropped") >= 1
    for name in ("race", "race-jobs"):
        assert group(ledger, name).holder is None and group(ledger, name).waiting == []
    assert group_breaches(events) == []
