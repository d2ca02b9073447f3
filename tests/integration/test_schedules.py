"""Schedules on the write side and the read model, against a real PostgreSQL store: a push to
the branch declares them, the newest planned push of the branch decides them, each nominal
time fires once however many replicas ask (also at the same instant, from threads), a
replica back from downtime fires the latest missed time once, and the invariant checker holds
over the whole history. The clock is the test's: `now` moves by hand."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import count

import pytest

from commands.app import LedgerApp
from commands.schedule_firing import ScheduleFiring
from domain.schedule import ScheduleClock, latest_time, next_time
from domain.status import JobStatus
from projections.runs import RunsProjection
from projections.schedules import ScheduleQueries
from projections.sql import Database
from tests.support.invariants import all_events, check_history
from tests.support.ledger import ADMIN, acme_ledger, read_model

pytestmark = pytest.mark.integration

EVERY_MINUTE = b"""on:
  branches: [main, release]
  schedule:
    - cron: "* * * * *"
    - cron: "0 3 * * *"
      branch: release
jobs:
  - name: nightly
    run: make
"""
NO_SCHEDULE = b"jobs:\n  - name: build\n    run: make\n"
_commits = count(1)


@pytest.fixture
def ledger(postgres_url: str) -> Iterator[LedgerApp]:
    with acme_ledger(postgres_url) as app:
        yield app


@pytest.fixture
def db(postgres_url: str, ledger: LedgerApp) -> Iterator[Database]:
    with read_model(postgres_url) as database:
        yield database


class Replica:
    """A scheduler replica's firing loop, on a clock the test moves."""

    def __init__(self, ledger: LedgerApp, db: Database, now: list[datetime]) -> None:
        self.firing = ScheduleFiring(ledger.runs, ScheduleQueries(db).in_force, ScheduleClock(), lambda: now[0])


def project(ledger: LedgerApp, db: Database) -> None:
    projection = RunsProjection(db)
    while projection.catch_up(lambda position: list(ledger.store.events_after(position, 500))):
        pass


def pushed(ledger: LedgerApp, db: Database, workflow: bytes, ref: str = "refs/heads/main") -> str:
    run = ledger.runs.plan_run(ledger.runs.push("web", f"{next(_commits):040x}", ref, ADMIN).run_id, workflow)
    project(ledger, db)
    return run.commit


def scheduled_runs(ledger: LedgerApp) -> list:
    return [event for _, event in all_events(ledger) if type(event).__name__ == "RunScheduled"]


def test_a_push_to_the_branch_declares_its_schedules_and_the_newest_push_decides(ledger, db):
    commit = pushed(ledger, db, EVERY_MINUTE)
    in_force = ScheduleQueries(db).in_force("web")
    assert [(s.branch, s.cron, s.commit) for s in in_force] == [("main", "* * * * *", commit)]
    newer = pushed(ledger, db, EVERY_MINUTE)
    assert [s.commit for s in ScheduleQueries(db).in_force("web")] == [newer]
    pushed(ledger, db, EVERY_MINUTE, ref="refs/heads/release")  # the release branch's own
    assert {(s.branch, s.cron) for s in ScheduleQueries(db).in_force("web")} == {
        ("main", "* * * * *"), ("release", "0 3 * * *")}
    pushed(ledger, db, NO_SCHEDULE)  # a newer file on main has none: main's schedule ends
    assert [(s.branch, s.cron) for s in ScheduleQueries(db).in_force("web")] == [("release", "0 3 * * *")]


def test_declaring_again_keeps_the_first_declaration_and_a_rerun_declares_nothing(ledger, db):
    pushed(ledger, db, EVERY_MINUTE)
    first = ScheduleQueries(db).in_force("web")[0]
    newer = pushed(ledger, db, EVERY_MINUTE)
    again = ScheduleQueries(db).in_force("web")[0]
    assert (again.declared_at, again.commit) == (first.declared_at, newer)  # a time in between still fires
    # Re-running the first push (which declared the same) or an older one without schedules
    # changes nothing: a re-run runs an old push again, it does not declare.
    rerun = ledger.runs.rerun(ledger.runs.push("web", first.commit, "refs/heads/main", ADMIN).run_id, ADMIN)
    ledger.runs.plan_run(rerun, NO_SCHEDULE)
    project(ledger, db)
    assert [s.commit for s in ScheduleQueries(db).in_force("web")] == [newer]


def test_each_nominal_time_fires_once_whichever_replicas_ask(ledger, db):
    commit = pushed(ledger, db, EVERY_MINUTE)
    start = datetime.now(UTC)
    now = [next_time("* * * * *", start) + timedelta(seconds=1)]
    first, second = Replica(ledger, db, now), Replica(ledger, db, now)
    assert first.firing.fire_due() == 1
    assert second.firing.fire_due() == 0  # the same nominal time: the store has its run
    assert first.firing.fire_due() == 0
    now[0] += timedelta(minutes=1)
    assert second.firing.fire_due() == 1 and first.firing.fire_due() == 0

    fired = scheduled_runs(ledger)
    assert [e.nominal_at for e in fired] == [latest_time("* * * * *", now[0]) - timedelta(minutes=1),
                                             latest_time("* * * * *", now[0])]
    run = ledger.runs.load_run(fired[0].originator_id)
    assert (run.commit, run.ref, run.scheduled_by) == (commit, "refs/heads/main", "* * * * *")
    # Planned like a push, from the file of the commit that declared the schedule; it declares nothing.
    planned = ledger.runs.plan_run(run.id, EVERY_MINUTE)
    assert planned.jobs[0].status is JobStatus.QUEUED
    assert not any(type(e).__name__ == "SchedulesDeclared" for e in ledger.store.stream(run.id))
    project(ledger, db)
    assert [f.run_id for f in ScheduleQueries(db).firings("web", "main", "* * * * *")] == [
        str(e.originator_id) for e in reversed(fired)]
    assert check_history(all_events(ledger), require_final=False) == []


def test_replicas_firing_the_same_instant_make_one_run(ledger, db):
    pushed(ledger, db, EVERY_MINUTE)
    now = [next_time("* * * * *", datetime.now(UTC)) + timedelta(seconds=1)]
    replicas = [Replica(ledger, db, now) for _ in range(6)]
    barrier = threading.Barrier(len(replicas))
    created: list[int] = []

    def fire(replica: Replica) -> None:
        barrier.wait()
        created.append(replica.firing.fire_due())

    threads = [threading.Thread(target=fire, args=(replica,)) for replica in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(created) == [0, 0, 0, 0, 0, 1]
    assert len(scheduled_runs(ledger)) == 1


def test_after_downtime_the_latest_missed_time_fires_once_and_never_a_time_before_the_declaration(ledger, db):
    pushed(ledger, db, EVERY_MINUTE)
    declared = ScheduleQueries(db).in_force("web")[0].declared_at
    assert Replica(ledger, db, [declared + timedelta(seconds=0.001)]).firing.fire_due() == 0
    back = [next_time("* * * * *", declared) + timedelta(minutes=10, seconds=7)]  # ten minutes missed
    assert Replica(ledger, db, back).firing.fire_due() == 1
    assert [e.nominal_at for e in scheduled_runs(ledger)] == [latest_time("* * * * *", back[0])]


def test_a_deleted_repository_fires_nothing(ledger, db):
    pushed(ledger, db, EVERY_MINUTE)
    ledger.registry.delete_repository("web", ADMIN)
    now = [next_time("* * * * *", datetime.now(UTC)) + timedelta(seconds=1)]
    assert Replica(ledger, db, now).firing.fire_due() == 0
    assert scheduled_runs(ledger) == []


def test_a_faster_schedule_clock_makes_a_minute_pass_in_seconds():
    clock = ScheduleClock(speed=20)
    wall = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
    assert clock.schedule_time(wall + timedelta(seconds=3)) - clock.schedule_time(wall) == timedelta(minutes=1)
    assert clock.wall_time(clock.schedule_time(wall)) == wall
