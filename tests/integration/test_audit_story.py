"""For a run that went through retries, a lost runner and a cancel, the history tells the whole
story in order, and as_of at each version gives the state the run really had then.

A real LedgerApp over PostgreSQL, driven in-process with a clock of the test's own. After every
command the run is read back as the system had it at that moment (its whole aggregate state, and
the API's view of it); at the end `history` must list every event with who caused it, and
`run_as_of` (by version, and by time) must give back each of those moments exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import msgspec
import pytest

from commands.app import LedgerApp
from commands.dispatch import ready_dispatch
from commands.principal import Principal
from commands.schema import create_event_store
from commands.store import eventsourcing_env
from domain.errors import RunNotFoundError
from domain.job import RUNNER_LOST
from domain.messages import FinishJob, Heartbeat, StartJob
from gateway.views import run_view
from tests.reference.record import THREE_JOBS, Clock
from tests.reference.state import aggregate_state

pytestmark = pytest.mark.integration

ADMIN = Principal("admin", None)
# The tenant's principal as the gateway names it (gateway.auth): the actor of its push and cancel.
ACME = Principal("tenant:acme", "acme")
COMMIT = "ab" * 20


class Moment(NamedTuple):
    """The run as the system had it right after one command."""

    command: str
    at: datetime
    version: int
    state: dict[str, Any]
    view: bytes


@pytest.fixture
def app(postgres_url: str) -> Iterator[tuple[LedgerApp, Clock]]:
    clock = Clock()
    ledger = LedgerApp(env=eventsourcing_env(postgres_url), clock=clock)
    create_event_store(ledger, postgres_url)
    try:
        yield ledger, clock
    finally:
        ledger.close()


def test_history_and_as_of_tell_the_story_of_a_retried_lost_and_cancelled_run(
    app: tuple[LedgerApp, Clock],
) -> None:
    ledger, clock = app
    ledger.registry.create_tenant("acme", name="Acme", weight=1, max_concurrent_jobs=4, max_queued_runs=100,
                         pushes_per_minute=60, actor="admin")
    ledger.registry.register_repository("web", tenant_id="acme", clone_url="file:///srv/web.git", principal=ADMIN)

    moments: list[Moment] = []

    def seen(command: str) -> None:
        run = ledger.runs.get_run(run_id, ACME)
        moments.append(Moment(command, clock(), run.version, aggregate_state(run),
                              msgspec.json.encode(run_view(run))))

    def job(index: int) -> tuple[str, int]:
        current = ledger.runs.get_run(run_id, ACME).jobs[index]
        return str(current.id), current.attempt

    def start(index: int, runner: str) -> None:
        job_id, attempt = job(index)
        clock.tick()
        result = ledger.runs.start_job(StartJob(run_id=str(run_id), job_id=job_id, attempt=attempt, runner_id=runner))
        assert result.reply.ok, result.reply
        seen(f"start job {index} ({runner})")

    def beat(index: int, runner: str) -> None:
        job_id, attempt = job(index)
        clock.tick(5)
        result = ledger.runs.heartbeat(Heartbeat(run_id=str(run_id), job_id=job_id, attempt=attempt, runner_id=runner))
        assert result.reply.ok, result.reply
        seen(f"heartbeat job {index} ({runner})")

    clock.tick()
    push = ledger.runs.push("web", COMMIT, "refs/heads/main", ACME)
    run_id = push.run_id
    assert not push.duplicate
    seen("push")

    clock.tick()
    planned = ledger.runs.plan_run(run_id, THREE_JOBS)
    seen("plan")
    # What the command itself decided (in memory) is what a reload finds.
    assert aggregate_state(planned) == moments[-1].state
    lint, test, deploy = (job(i)[0] for i in range(3))

    # Job 1 (lint) succeeds; job 2 (test, retries: 1) is queued in the same save.
    start(0, "runner-1")
    beat(0, "runner-1")
    clock.tick()
    finished = ledger.runs.finish_job(FinishJob(run_id=str(run_id), job_id=lint, attempt=1, runner_id="runner-1",
                                           exit_code=0))
    assert finished.reply.ok
    ready = ready_dispatch(ledger.runs.get_run(run_id, ACME))
    assert ready is not None and (ready.job_id, ready.attempt) == (test, 1)
    seen("finish job 0")

    # Job 2's first attempt: runner-1 claims it, beats once, then falls silent past its lease.
    start(1, "runner-1")
    beat(1, "runner-1")
    lease_ends = ledger.runs.get_run(run_id, ACME).job(test).lease_expires_at
    assert lease_ends is not None
    clock.now = lease_ends - timedelta(seconds=1)  # a reaper with a fast clock: still held, a no-op
    ledger.runs.mark_lost(run_id, test, 1)
    seen("early mark lost")
    clock.now = lease_ends + timedelta(seconds=1)
    reaped = ledger.runs.mark_lost(run_id, test, 1)
    seen("mark lost job 1 attempt 1")
    assert aggregate_state(reaped) == moments[-1].state
    assert job(1) == (test, 2)

    # The retry runs on runner-2; runner-1 wakes up and reports attempt 1: refused, nothing recorded.
    start(1, "runner-2")
    clock.tick()
    stale = ledger.runs.finish_job(FinishJob(run_id=str(run_id), job_id=test, attempt=1, runner_id="runner-1",
                                        exit_code=0))
    assert stale.reply.refused and not stale.reply.ok, stale.reply
    assert stale.changed is None
    seen("stale finish by runner-1")
    beat(1, "runner-2")

    # The tenant cancels while attempt 2 runs; runner-2's own late report is refused in turn.
    clock.tick()
    cancelled, running, _ = ledger.runs.cancel_run(run_id, ACME)
    assert running is not None and (str(running.id), running.attempt, running.runner_id) == (test, 2, "runner-2")
    assert cancelled.status.value == "cancelled"
    seen("cancel")
    assert aggregate_state(cancelled) == moments[-1].state
    clock.tick()
    late = ledger.runs.finish_job(FinishJob(run_id=str(run_id), job_id=test, attempt=2, runner_id="runner-2",
                                       exit_code=0))
    assert late.reply.refused, late.reply
    seen("late finish by runner-2")

    # (a) The history: every event, in order, contiguous versions, each with who caused it.
    runner_1, runner_2, reaper = "runner:runner-1", "runner:runner-2", "reaper"
    expected = [
        # type, actor, (job_id, attempt) for job events
        ("RunRequested", ACME.name, None),
        ("RunPlanned", "planner", None),
        ("JobQueued", "planner", (lint, 1)),
        ("JobStarted", runner_1, (lint, 1)),
        ("JobLeaseExtended", runner_1, (lint, 1)),
        ("JobSucceeded", runner_1, (lint, 1)),
        ("JobQueued", runner_1, (test, 1)),
        ("JobStarted", runner_1, (test, 1)),
        ("JobLeaseExtended", runner_1, (test, 1)),
        ("JobAttemptAbandoned", reaper, (test, 1)),
        ("JobQueued", reaper, (test, 2)),
        ("JobStarted", runner_2, (test, 2)),
        ("JobLeaseExtended", runner_2, (test, 2)),
        ("JobCancelled", ACME.name, (test, 2)),
        ("JobCancelled", ACME.name, (deploy, 0)),  # never queued: cancelled at attempt 0
        ("RunCancelled", ACME.name, None),
    ]
    history = ledger.audit.history(run_id)
    assert [(e.type, e.actor) for e in history] == [(t, a) for t, a, _ in expected]
    assert [e.version for e in history] == list(range(1, len(expected) + 1))
    assert {e.aggregate_id for e in history} == {str(run_id)}
    assert {e.aggregate_type for e in history} == {"Run"}
    for event, (_, _, job_attempt) in zip(history, expected, strict=True):
        if job_attempt is None:
            assert "job_id" not in event.data, event
        else:
            assert (event.data["job_id"], event.data["attempt"]) == job_attempt, event
    by_version = {e.version: e for e in history}
    assert by_version[1].data["commit"] == COMMIT and by_version[1].data["tenant_id"] == "acme"
    assert [j["spec"]["name"] for j in by_version[2].data["jobs"]] == ["lint", "test", "deploy"]
    assert by_version[4].data["runner_id"] == "runner-1" and by_version[12].data["runner_id"] == "runner-2"
    assert by_version[10].data["reason"] == RUNNER_LOST
    assert by_version[6].data["exit_code"] == 0
    # Events are recorded at the moment of the command that caused them, never later.
    assert [e.at for e in history] == sorted(e.at for e in history)
    at = {m.command: m.at for m in moments}
    assert by_version[10].at == at["mark lost job 1 attempt 1"] == lease_ends + timedelta(seconds=1)
    assert by_version[14].at == by_version[16].at == at["cancel"]

    # The commands' captured versions: each command that changed something moved the version on.
    assert [(m.command, m.version) for m in moments] == [
        ("push", 1),
        ("plan", 3),
        ("start job 0 (runner-1)", 4),
        ("heartbeat job 0 (runner-1)", 5),
        ("finish job 0", 7),
        ("start job 1 (runner-1)", 8),
        ("heartbeat job 1 (runner-1)", 9),
        ("early mark lost", 9),
        ("mark lost job 1 attempt 1", 11),
        ("start job 1 (runner-2)", 12),
        ("stale finish by runner-1", 12),
        ("heartbeat job 1 (runner-2)", 13),
        ("cancel", 16),
        ("late finish by runner-2", 16),
    ]
    # The refused and no-op commands changed nothing, not even the state's times.
    state = {m.command: m.state for m in moments}
    assert state["early mark lost"] == state["heartbeat job 1 (runner-1)"]
    assert state["stale finish by runner-1"] == state["start job 1 (runner-2)"]
    assert state["late finish by runner-2"] == state["cancel"]

    # (b) as_of, by version and by time, gives back exactly what the system had at each moment.
    for moment in moments:
        by_version_run = ledger.audit.run_as_of(run_id, ACME, version=moment.version)
        assert by_version_run.version == moment.version, moment.command
        assert aggregate_state(by_version_run) == moment.state, moment.command
        assert msgspec.json.encode(run_view(by_version_run)) == moment.view, moment.command
        at_time = ledger.audit.run_as_of(run_id, ACME, at=moment.at)
        assert aggregate_state(at_time) == moment.state, moment.command
        assert msgspec.json.encode(run_view(at_time)) == moment.view, moment.command
    # ...and so does every version in between (no version of the stream is unreadable).
    for event in history:
        assert ledger.audit.run_as_of(run_id, ACME, version=event.version).version == event.version

    # Some moments, spelled out: the lost attempt, then the retry queued on nobody.
    view = {m.command: msgspec.json.decode(m.view) for m in moments}
    lost = view["mark lost job 1 attempt 1"]
    assert lost["status"] == "running"
    assert [(j["name"], j["status"], j["attempt"], j["runner_id"], j["error"]) for j in lost["jobs"]] == [
        ("lint", "succeeded", 1, "runner-1", None),
        ("test", "queued", 2, None, RUNNER_LOST),
        ("deploy", "pending", 0, None, None),
    ]
    retried = view["start job 1 (runner-2)"]["jobs"][1]
    assert (retried["status"], retried["attempt"], retried["runner_id"]) == ("running", 2, "runner-2")

    # (c) The final version: the run is cancelled, attempt 2 of test with it, and deploy never ran.
    final = msgspec.json.decode(msgspec.json.encode(run_view(ledger.audit.run_as_of(run_id, ACME, version=16))))
    assert final["status"] == "cancelled"
    assert final["finished_at"] is not None
    assert [(j["name"], j["status"], j["attempt"], j["runner_id"], j["exit_code"], j["error"])
            for j in final["jobs"]] == [
        ("lint", "succeeded", 1, "runner-1", 0, None),
        ("test", "cancelled", 2, "runner-2", None, "cancelled"),
        ("deploy", "cancelled", 0, None, None, "cancelled"),
    ]
    assert final["jobs"][2]["started_at"] is None and final["jobs"][2]["queued_at"] is None

    # Asking before the run existed, for version 0, or as another tenant, is "not found".
    with pytest.raises(RunNotFoundError, match="did not exist"):
        ledger.audit.run_as_of(run_id, ACME, at=at["push"] - timedelta(seconds=1))
    with pytest.raises(RunNotFoundError, match="no version 0"):
        ledger.audit.run_as_of(run_id, ACME, version=0)
    with pytest.raises(RunNotFoundError):
        ledger.audit.run_as_of(run_id, Principal("tenant:other", "other"), version=1)
