"""Runner commands decided together (`RunCommands.runner_commands`): saved in one
transaction, with the runs this process decided last standing in for loads. Each command must
get the answer it would get alone, and the history must hold each effect once, also when a
kept run is stale because another replica appended to it (commands/recent_runs.py).

On the embedded default's store (SQLite in a file); "another replica" is a second write side
on the same file, as a second process would be.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest

from commands.app import LedgerApp
from commands.principal import Principal
from commands.runner_decisions import CommandResult
from commands.schema import create_event_store
from commands.store import eventsourcing_env
from domain.messages import FinishJob, Heartbeat, StartJob
from domain.run import Run
from tests.support.invariants import all_events, check_history

pytestmark = pytest.mark.integration

ADMIN = Principal("admin", None)
WORKFLOW = b"jobs:\n  - name: a\n    run: echo a\n  - name: b\n    run: echo b\n"
RUNNER = "runner-1"


def _ledger(database_url: str) -> LedgerApp:
    app = LedgerApp(env=eventsourcing_env(database_url))
    create_event_store(app, database_url)
    return app


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture
def ledger(database_url: str) -> Iterator[LedgerApp]:
    app = _ledger(database_url)
    app.registry.create_tenant("acme", name="Acme", weight=1, max_concurrent_jobs=100, max_queued_runs=100,
                               pushes_per_minute=600, actor="admin")
    app.registry.register_repository("web", tenant_id="acme", clone_url="file:///web", principal=ADMIN)
    yield app
    app.close()


@pytest.fixture
def other_replica(database_url: str, ledger: LedgerApp) -> Iterator[LedgerApp]:
    app = _ledger(database_url)
    yield app
    app.close()


def planned(ledger: LedgerApp, n: int) -> UUID:
    run_id = ledger.runs.push("web", f"{n:040x}", "refs/heads/main", ADMIN).run_id
    ledger.runs.plan_run(run_id, WORKFLOW)
    return run_id


def start(ledger: LedgerApp, run_id: UUID, name: str) -> StartJob:
    job = next(job for job in ledger.runs.load_run(run_id).jobs if job.spec.name == name)
    return StartJob(run_id=str(run_id), job_id=str(job.id), attempt=job.attempt, runner_id=RUNNER)


def finish(claim: StartJob, exit_code: int = 0) -> FinishJob:
    return FinishJob(run_id=claim.run_id, job_id=claim.job_id, attempt=claim.attempt, runner_id=RUNNER,
                     exit_code=exit_code)


def replies(results: list[CommandResult | Exception]) -> list[tuple[bool, bool]]:
    assert not [result for result in results if isinstance(result, Exception)]
    return [(result.reply.ok, result.reply.refused) for result in results]  # type: ignore[union-attr]


def event_names(ledger: LedgerApp, run_id: UUID) -> list[str]:
    return [type(event).__name__ for event in ledger.store.stream(run_id)]


def test_commands_on_different_runs_are_answered_and_recorded_as_if_each_came_alone(ledger: LedgerApp):
    runs = [planned(ledger, n) for n in range(4)]
    claims = [start(ledger, run_id, "a") for run_id in runs]
    results = ledger.runs.runner_commands(claims)
    assert replies(results) == [(True, False)] * 4
    assert all(result.reply.lease_expires_at is not None for result in results)  # type: ignore[union-attr]

    seconds = ledger.runs.runner_commands([finish(claim) for claim in claims])
    assert replies(seconds) == [(True, False)] * 4
    claims_b = [start(ledger, run_id, "b") for run_id in runs]
    assert replies(ledger.runs.runner_commands(claims_b)) == [(True, False)] * 4
    assert replies(ledger.runs.runner_commands([finish(claim, 1) for claim in claims_b])) == [(True, False)] * 4

    for run_id in runs:
        assert event_names(ledger, run_id) == ["RunRequested", "RunPlanned", "JobQueued", "JobStarted",
                                               "JobSucceeded", "JobQueued", "JobStarted", "JobFailed", "RunFailed"]
    assert check_history(all_events(ledger)) == []


def test_commands_on_one_run_in_one_group_go_in_order_and_a_duplicate_changes_nothing(ledger: LedgerApp):
    run_id = planned(ledger, 1)
    claim = start(ledger, run_id, "a")
    # A claim, its report, the report delivered twice, a heartbeat of the ended attempt.
    results = ledger.runs.runner_commands([
        claim, finish(claim), finish(claim),
        Heartbeat(run_id=claim.run_id, job_id=claim.job_id, attempt=claim.attempt, runner_id=RUNNER),
    ])
    assert replies(results)[:3] == [(True, False)] * 3
    assert replies(results)[3] == (False, True)  # the attempt has ended: the runner is told to stop
    assert results[1].changed is not None and results[2].changed is None  # type: ignore[union-attr]
    assert event_names(ledger, run_id) == ["RunRequested", "RunPlanned", "JobQueued", "JobStarted",
                                           "JobSucceeded", "JobQueued"]
    assert check_history(all_events(ledger), require_final=False) == []


def test_a_refusal_is_its_own_command_s_and_the_others_are_saved(ledger: LedgerApp):
    first, second = planned(ledger, 1), planned(ledger, 2)
    stale = start(ledger, first, "a")
    stale = StartJob(run_id=stale.run_id, job_id=stale.job_id, attempt=stale.attempt + 1, runner_id=RUNNER)
    results = ledger.runs.runner_commands([stale, start(ledger, second, "a")])
    assert replies(results) == [(False, True), (True, False)]
    assert event_names(ledger, first)[-1] == "JobQueued"
    assert event_names(ledger, second)[-1] == "JobStarted"


def test_a_kept_run_another_replica_appended_to_decides_as_the_stored_run_does(
        ledger: LedgerApp, other_replica: LedgerApp):
    run_id, beside = planned(ledger, 1), planned(ledger, 2)
    claim = start(ledger, run_id, "a")
    assert replies(ledger.runs.runner_commands([claim])) == [(True, False)]  # this replica keeps the run

    # The report reaches the other replica, which records it and queues job b.
    assert other_replica.runs.finish_job(finish(claim)).reply.ok
    claim_b = start(other_replica, run_id, "b")

    # Here the kept run is stale: it has job a running and b not queued. Alone it would
    # refuse the claim of b; beside a command on another run, its save would conflict.
    results = ledger.runs.runner_commands([claim_b, start(ledger, beside, "a"), finish(claim)])
    assert replies(results) == [(True, False)] * 3
    assert results[2].changed is None  # type: ignore[union-attr]  # the report was recorded once, there
    assert event_names(ledger, run_id) == ["RunRequested", "RunPlanned", "JobQueued", "JobStarted",
                                           "JobSucceeded", "JobQueued", "JobStarted"]
    assert event_names(ledger, beside)[-1] == "JobStarted"

    # A heartbeat that would append on the stale run, beside a claim on the other run: the
    # group's save conflicts, and each is decided again alone: both recorded, once.
    kept_version = ledger.store.load(run_id, Run).version
    assert other_replica.runs.heartbeat(Heartbeat(run_id=claim_b.run_id, job_id=claim_b.job_id,
                                                  attempt=claim_b.attempt, runner_id=RUNNER)).reply.ok
    beside_finish = finish(start(ledger, beside, "a"))
    results = ledger.runs.runner_commands([
        Heartbeat(run_id=claim_b.run_id, job_id=claim_b.job_id, attempt=claim_b.attempt, runner_id=RUNNER),
        beside_finish,
    ])
    assert replies(results) == [(True, False)] * 2
    assert ledger.store.load(run_id, Run).version == kept_version + 2  # two heartbeats, one from each replica
    assert event_names(ledger, beside).count("JobSucceeded") == 1
    assert check_history(all_events(ledger), require_final=False) == []
