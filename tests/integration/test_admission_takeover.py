"""The admission leader against the real store, read model and JetStream: a new leader counts
what a former one released (the messages still in the JOBS work queue) against the quota, even
from a read model that lags the store; a former leader, once fenced out, publishes nothing; a
released attempt is offered again only once its message has left the queue unstarted; a
leader whose steps keep failing gives the lead up."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

import nats
import pytest

from commands.admission import MAX_FAILED_STEPS, AdmissionLeader, NothingPublishedError, StepsFailingError
from commands.app import LedgerApp
from commands.leadership import SoleLeadership
from commands.presence import RunnerRoster
from commands.streams import ensure_streams
from commands.work_queue import FencedOutError, WorkQueue
from domain.messages import JOBS_STREAM, FinishJob, RunnerPresence, StartJob
from projections.queries import AdmissionQueries
from projections.runs import RunsProjection
from projections.sql import Database
from tests.support.ledger import ADMIN, acme_ledger, read_model

pytestmark = pytest.mark.integration

WORKFLOW = b"jobs:\n  - name: build\n    run: make\n"


@pytest.fixture
def ledger(postgres_url: str) -> Iterator[LedgerApp]:
    with acme_ledger(postgres_url, max_concurrent_jobs=2) as app:
        yield app


@pytest.fixture
def db(postgres_url: str, ledger: LedgerApp) -> Iterator[Database]:
    with read_model(postgres_url) as database:
        yield database


@pytest.fixture
async def js(fresh_nats_server) -> AsyncIterator:
    nc = await nats.connect(fresh_nats_server.url)
    try:
        await ensure_streams(nc.jetstream())
        yield nc.jetstream()
    finally:
        with contextlib.suppress(OSError):  # a test may have killed the server under it
            await nc.close()


def project(ledger: LedgerApp, db: Database) -> None:
    projection = RunsProjection(db)
    while projection.catch_up(lambda position: list(ledger.store.events_after(position, 500))):
        pass


def leader(ledger: LedgerApp, db: Database, js, *, slots: int, reoffer_after: float = 60.0) -> AdmissionLeader:
    roster = RunnerRoster()
    roster.record(RunnerPresence(runner_id="runner-1", pool="default", slots=slots))
    return AdmissionLeader(ledger, js, roster, AdmissionQueries(db).unfinished_jobs, SoleLeadership(),
                           reoffer_after=reoffer_after)


async def in_work_queue(js) -> int:
    return (await js.stream_info(JOBS_STREAM)).state.messages


async def test_a_new_leader_counts_what_the_former_one_released_against_the_quota(ledger, db, js) -> None:
    runs = push_runs(ledger, 4)
    project(ledger, db)

    first = leader(ledger, db, js, slots=8)
    await first.take_over()
    await first.step()
    assert await in_work_queue(js) == 2  # the quota, although 8 slots are free

    # The first leader dies; the next one starts from the read model and the work queue.
    second = leader(ledger, db, js, slots=8)
    await second.take_over()
    assert second.share.tenants["acme"].occupied == 2
    await second.step()
    assert await in_work_queue(js) == 2

    # One released attempt runs and ends, and its runner acks the message: one more may go.
    job_ids = [job_of(ledger, run_id) for run_id in runs]
    assert set(await work_queue(js)) == {job_ids[0], job_ids[1]}  # oldest first
    ledger.runs.start_job(StartJob(run_id=str(runs[0]), job_id=job_ids[0], attempt=1, runner_id="runner-1"))
    ledger.runs.finish_job(FinishJob(run_id=str(runs[0]), job_id=job_ids[0], attempt=1, runner_id="runner-1",
                                exit_code=0))
    await js.delete_msg(JOBS_STREAM, (await work_queue(js))[job_ids[0]])
    await second.step()
    assert set(await work_queue(js)) == {job_ids[1], job_ids[2]}


async def test_a_new_leader_counts_what_was_released_even_from_a_read_model_that_lags(ledger, db, js) -> None:
    project(ledger, db)  # the read model stops here: the runs below are newer than its snapshot
    push_runs(ledger, 4)

    first = leader(ledger, db, js, slots=8)
    await first.take_over()
    await first.step()
    assert await in_work_queue(js) == 2

    second = leader(ledger, db, js, slots=8)
    await second.take_over()  # catches up with the store before reading the work queue
    assert second.share.tenants["acme"].occupied == 2
    await second.step()
    assert await in_work_queue(js) == 2


async def test_a_fenced_out_former_leader_publishes_nothing(ledger, db, js) -> None:
    push_runs(ledger, 4)
    project(ledger, db)
    former = leader(ledger, db, js, slots=8)
    await former.take_over()
    # Paused here, say; another replica takes the lead meanwhile and fences the work queue.
    successor = leader(ledger, db, js, slots=8)
    await successor.take_over()

    with pytest.raises(FencedOutError):
        await former.step()  # it would release two attempts on its stale view
    assert await in_work_queue(js) == 0
    await successor.step()
    assert await in_work_queue(js) == 2


async def test_a_released_attempt_is_offered_again_only_once_its_message_left_the_queue(ledger, db, js) -> None:
    job_id = job_of(ledger, push_runs(ledger, 1)[0])
    project(ledger, db)
    admission = leader(ledger, db, js, slots=1, reoffer_after=0.0)
    await admission.take_over()
    await admission.step()
    first = await work_queue(js)

    await admission.step()  # due for a re-offer, but its message still waits: nothing to do
    assert await work_queue(js) == first

    await js.delete_msg(JOBS_STREAM, first[job_id])  # as the dead-letter path does
    await admission.step()
    again = await js.get_msg(JOBS_STREAM, seq=(await work_queue(js))[job_id])
    assert again.headers["Nats-Msg-Id"] == f"{job_id}:1:2"  # a new id: the stream's dedup would drop the old


async def test_a_leader_whose_steps_keep_failing_gives_the_lead_up(ledger, db, js) -> None:
    project(ledger, db)
    admission = leader(ledger, db, js, slots=1)
    await admission.take_over()
    ledger.store.close()  # its connections gone: every read of the store fails from now on
    for _ in range(MAX_FAILED_STEPS - 1):
        with pytest.raises(Exception) as failed:
            await admission.step()
        assert not isinstance(failed.value, StepsFailingError)  # not yet: a few failures are weathered
    with pytest.raises(StepsFailingError):
        await admission.step()


def push_runs(ledger: LedgerApp, count: int) -> list:
    runs = []
    for n in range(count):
        run_id = ledger.runs.push("web", f"{n:040x}", "refs/heads/main", ADMIN).run_id
        ledger.runs.plan_run(run_id, WORKFLOW)
        runs.append(run_id)
    return runs


def job_of(ledger: LedgerApp, run_id) -> str:
    return str(ledger.runs.get_run(run_id, ADMIN).jobs[0].id)


async def work_queue(js) -> dict[str, int]:
    """job id -> stream sequence of each message in the JOBS work queue."""
    return {offered.job_id: offered.seq for offered in await WorkQueue(js).offered()}


async def test_a_new_leader_offers_again_what_left_the_queue_within_the_dedup_window(ledger, db, js) -> None:
    job_id = job_of(ledger, push_runs(ledger, 1)[0])
    project(ledger, db)
    former = leader(ledger, db, js, slots=1)
    await former.take_over()
    await former.step()
    await js.delete_msg(JOBS_STREAM, (await work_queue(js))[job_id])  # dead-lettered, say

    successor = leader(ledger, db, js, slots=1)
    await successor.take_over()  # the queue holds nothing: the attempt counts as queued
    await successor.step()  # job:1 is a duplicate in the stream's eyes, and its message is gone

    again = await js.get_msg(JOBS_STREAM, seq=(await work_queue(js))[job_id])
    assert again.headers["Nats-Msg-Id"] == f"{job_id}:1:2"


async def test_a_leader_brings_back_a_work_queue_that_vanished(ledger, db, js) -> None:
    push_runs(ledger, 1)
    project(ledger, db)
    await js.delete_stream(JOBS_STREAM)  # as after a nats-server lost its data

    admission = leader(ledger, db, js, slots=1)
    await admission.take_over()
    await admission.step()

    assert await in_work_queue(js) == 1


async def test_a_step_whose_every_offer_fails_is_a_failed_step(ledger, db, js, fresh_nats_server) -> None:
    push_runs(ledger, 1)
    project(ledger, db)
    admission = leader(ledger, db, js, slots=1)
    await admission.take_over()

    fresh_nats_server.kill()
    with pytest.raises(NothingPublishedError):  # counted towards giving the lead up
        await admission.step()
    assert admission.failed_steps == 1
