"""The admission leader against the real store, read model and JetStream: a new leader counts
what a former one released (the messages still in the JOBS work queue) against the quota, and
a re-offer publishes under the same message id, so the stream keeps one copy."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import msgspec
import nats
import pytest
from nats.js.errors import NotFoundError

from commands.admission import AdmissionLeader
from commands.app import LedgerApp
from commands.leadership import SoleLeadership
from commands.presence import RunnerRoster
from commands.streams import ensure_streams
from domain.messages import JOBS_STREAM, FinishJob, JobDispatch, RunnerPresence, StartJob
from projections.queries import AdmissionQueries
from projections.runs import RunsProjection
from projections.schema import create_read_model_tables
from projections.sql import Database, open_database
from tests.support.ledger import ADMIN, acme_ledger

pytestmark = pytest.mark.integration

WORKFLOW = b"jobs:\n  - name: build\n    run: make\n"


@pytest.fixture
def ledger(postgres_url: str) -> Iterator[LedgerApp]:
    with acme_ledger(postgres_url, max_concurrent_jobs=2) as app:
        yield app


@pytest.fixture
def db(postgres_url: str, ledger: LedgerApp) -> Iterator[Database]:
    database = open_database(postgres_url)
    create_read_model_tables(database)
    try:
        yield database
    finally:
        database.close()


@pytest.fixture
async def js(fresh_nats_server) -> AsyncIterator:
    nc = await nats.connect(fresh_nats_server.url)
    try:
        await ensure_streams(nc.jetstream())
        yield nc.jetstream()
    finally:
        await nc.close()


def project(ledger: LedgerApp, db: Database) -> None:
    projection = RunsProjection(db)
    while projection.catch_up(lambda position: list(ledger.events_after(position, 500))):
        pass


def leader(ledger: LedgerApp, db: Database, js, *, slots: int, reoffer_after: float = 60.0) -> AdmissionLeader:
    roster = RunnerRoster()
    roster.record(RunnerPresence(runner_id="runner-1", pool="default", slots=slots))
    return AdmissionLeader(ledger, js, roster, AdmissionQueries(db).unfinished_jobs, SoleLeadership(),
                           reoffer_after=reoffer_after)


async def in_work_queue(js) -> int:
    return (await js.stream_info(JOBS_STREAM)).state.messages


async def test_a_new_leader_counts_what_the_former_one_released_against_the_quota(ledger, db, js) -> None:
    runs = []
    for n in range(4):
        run_id = ledger.push("web", f"{n:040x}", "refs/heads/main", ADMIN).run_id
        ledger.plan_run(run_id, WORKFLOW)
        runs.append(run_id)
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
    ledger.start_job(StartJob(run_id=str(runs[0]), job_id=job_ids[0], attempt=1, runner_id="runner-1"))
    ledger.finish_job(FinishJob(run_id=str(runs[0]), job_id=job_ids[0], attempt=1, runner_id="runner-1",
                                exit_code=0))
    await js.delete_msg(JOBS_STREAM, (await work_queue(js))[job_ids[0]])
    await second.step()
    assert set(await work_queue(js)) == {job_ids[1], job_ids[2]}


async def test_a_reoffer_publishes_under_the_same_id_and_the_stream_keeps_one_copy(ledger, db, js) -> None:
    run_id = ledger.push("web", "f" * 40, "refs/heads/main", ADMIN).run_id
    ledger.plan_run(run_id, WORKFLOW)
    project(ledger, db)
    admission = leader(ledger, db, js, slots=1, reoffer_after=0.0)
    await admission.take_over()

    await admission.step()
    await admission.step()  # released a moment ago and not started: offered again

    assert await in_work_queue(js) == 1


def job_of(ledger: LedgerApp, run_id) -> str:
    return str(ledger.get_run(run_id, ADMIN).jobs[0].id)


async def work_queue(js) -> dict[str, int]:
    """job id -> stream sequence of each message in the JOBS work queue."""
    found, seq = {}, 1
    while True:
        try:
            message = await js.get_msg(JOBS_STREAM, seq=seq, subject="ledgerci.jobs.>", next=True)
        except NotFoundError:
            return found
        found[msgspec.json.decode(message.data, type=JobDispatch).job_id] = message.seq
        seq = message.seq + 1
