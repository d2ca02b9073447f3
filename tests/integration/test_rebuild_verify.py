"""`ledgerci projections rebuild --verify` over a history of at least 10,000 runs reports no
difference, and reports the difference when a read-model row is altered by hand.

The history is written fast: straight through the domain aggregates, with times of the test's
choosing, many runs per save (one transaction each) into PostgreSQL. The read model is filled
and checked by the real CLI, each command a process of its own, as an operator would run them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import psycopg
import pytest

from commands.app import LedgerApp
from commands.store import eventsourcing_env
from domain.ids import job_id_for, run_id_for
from domain.run import Run
from domain.workflow import parse_workflow
from tests.support.processes import NatsServer

pytestmark = pytest.mark.integration

LEDGERCI = Path(sys.executable).parent / "ledgerci"
# Enough for several pages of every step (rebuild, verify, switch); the timings at 10,000 runs and more
# are bench.rebuild's (bench/RESULTS.md), not this test's.
RUNS = 600  # 4,800 events: three pages of PAGE (2,000) for every step
BATCH = 500  # runs per save, one transaction each
START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)

# Two jobs: `build` may be retried once, `test` runs only if `build` succeeded.
JOBS = parse_workflow(b"""name: ci
jobs:
  - name: build
    run: make
    retries: 1
  - name: test
    run: make test
""").jobs


def request(index: int, at: datetime) -> Run:
    tenant = f"tenant-{index % 7}"
    repository = f"{tenant}/repo-{index % 13}"
    commit = f"{index:040x}"
    return Run.request(
        run_id=run_id_for(repository, commit), repository_id=repository, tenant_id=tenant, commit=commit,
        ref="refs/heads/main" if index % 5 else f"refs/heads/topic-{index}", clone_url=f"file:///srv/{repository}.git",
        rerun=0, request_id=f"request-{index}", actor=f"tenant:{tenant}", at=at,
    )


def plan(run: Run, at: datetime) -> None:
    run.plan(JOBS, "ci", at, "planner")


def run_job(run: Run, index: int, at: datetime, exit_code: int, runner: str = "runner-1") -> datetime:
    """Start, heartbeat and finish the job's current attempt; returns the time after it."""
    job = run.jobs[index]
    run.start_job(job.id, job.attempt, runner, at)
    run.heartbeat(job.id, job.attempt, runner, at + timedelta(seconds=10))
    run.finish_job(job.id, job.attempt, runner, exit_code, at + timedelta(seconds=20))
    return at + timedelta(seconds=21)


def succeeded(run: Run, at: datetime) -> None:
    plan(run, at)
    run_job(run, 1, run_job(run, 0, at + timedelta(seconds=1), 0), 0)


def failed(run: Run, at: datetime) -> None:
    plan(run, at)
    run_job(run, 0, at + timedelta(seconds=1), 2)  # test is skipped, the run fails


def cancelled(run: Run, at: datetime) -> None:
    plan(run, at)
    build = run.jobs[0]
    run.start_job(build.id, 1, "runner-1", at + timedelta(seconds=1))
    run.cancel(at + timedelta(seconds=5), "tenant:someone")


def lost_then_retried(run: Run, at: datetime) -> None:
    plan(run, at)
    build = run.jobs[0]
    run.start_job(build.id, 1, "runner-1", at + timedelta(seconds=1))
    assert run.mark_lost(build.id, 1, at + timedelta(seconds=1) + LEASE, "reaper")
    after = run_job(run, 0, at + LEASE + timedelta(seconds=2), 0, runner="runner-2")
    run_job(run, 1, after, 0, runner="runner-2")


def still_running(run: Run, at: datetime) -> None:
    plan(run, at)
    build = run.jobs[0]
    run.start_job(build.id, 1, "runner-3", at + timedelta(seconds=1))
    run.heartbeat(build.id, 1, "runner-3", at + timedelta(seconds=11))


def skipped(run: Run, at: datetime) -> None:
    run.skip("no .ledgerci.yml at this commit", at, "planner")


def still_queued(run: Run, at: datetime) -> None:
    plan(run, at)


STORIES: list[tuple[Callable[[Run, datetime], None], str]] = [
    (succeeded, "succeeded"),
    (failed, "failed"),
    (succeeded, "succeeded"),
    (cancelled, "cancelled"),
    (lost_then_retried, "succeeded"),
    (failed, "failed"),
    (still_running, "running"),
    (skipped, "skipped"),
    (succeeded, "succeeded"),
    (still_queued, "queued"),
]


def write_history(database_url: str) -> tuple[dict[str, list[str]], int]:
    """RUNS runs told by STORIES in turn; returns run ids by expected status, and the event count."""
    app = LedgerApp(env=eventsourcing_env(database_url))
    runs_by_status: dict[str, list[str]] = {}
    events = 0
    try:
        for first in range(0, RUNS, BATCH):
            batch = []
            for index in range(first, min(first + BATCH, RUNS)):
                at = START + timedelta(minutes=index)
                run = request(index, at)
                story, status = STORIES[index % len(STORIES)]
                story(run, at + timedelta(seconds=1))
                assert run.status.value == status, (index, story.__name__, run.status)
                runs_by_status.setdefault(status, []).append(str(run.id))
                events += len(run.pending_events)
                batch.append(run)
            app.store.save(*batch)
    finally:
        app.close()
    return runs_by_status, events


def ledgerci(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LEDGERCI), *args], env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


@pytest.fixture
def cli_env(postgres_url: str, nats_server: NatsServer, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "LEDGERCI_DATABASE_URL": postgres_url,
        "LEDGERCI_NATS_URL": nats_server.url,  # `migrate` also prepares the streams
        "LEDGERCI_ADMIN_TOKEN": "test-admin-token",
        "LEDGERCI_DATA_DIR": str(tmp_path / "data"),
        "LEDGERCI_LOG_LEVEL": "WARNING",
    }


def test_verify_finds_no_difference_after_a_rebuild_and_names_each_hand_made_one(
    postgres_url: str, cli_env: dict[str, str]
) -> None:
    timings: dict[str, float] = {}

    def timed(step: str, *args: str) -> subprocess.CompletedProcess[str]:
        started = time.perf_counter()
        done = ledgerci(*args, env=cli_env)
        timings[step] = time.perf_counter() - started
        return done

    migrated = timed("migrate", "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.strip().splitlines()[-1] == "schema and streams are ready"

    started = time.perf_counter()
    runs_by_status, events = write_history(postgres_url)
    timings["write history"] = time.perf_counter() - started
    assert sum(len(ids) for ids in runs_by_status.values()) == RUNS
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT count(*) FROM ledgerci_events").fetchone() == (events,)

    rebuilt = timed("rebuild", "projections", "rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert rebuilt.stdout.strip().splitlines()[-1].startswith(
        f"rebuilt the read model from {events} events up to position {events} and switched over in "
    ), rebuilt.stdout

    # The rebuilt read model shows every run, with the status its history gave it.
    with psycopg.connect(postgres_url) as conn:
        shown = dict(conn.execute("SELECT status, count(*) FROM lci_runs GROUP BY status").fetchall())
        jobs = dict(conn.execute("SELECT status, count(*) FROM lci_jobs GROUP BY status").fetchall())
        retried = conn.execute("SELECT count(*) FROM lci_jobs WHERE attempt = 2 AND runner_id = 'runner-2' "
                               "AND status = 'succeeded' AND error IS NULL").fetchone()
    assert shown == {status: len(ids) for status, ids in runs_by_status.items()}
    assert set(jobs) == {"pending", "queued", "running", "succeeded", "failed", "skipped", "cancelled"}
    assert retried == (RUNS // len(STORIES),)

    clean = timed("verify (clean)", "projections", "rebuild", "--verify")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    no_difference = f"0 difference(s) between the read model and the history up to position {events}"
    assert clean.stdout.strip().splitlines() == [no_difference]

    # Alter the read model by hand: a failed job said to have succeeded, and a run deleted.
    failed_run = UUID(sorted(runs_by_status["failed"])[0])
    altered_job = job_id_for(failed_run, "build")
    deleted_run = sorted(runs_by_status["succeeded"])[0]
    with psycopg.connect(postgres_url) as conn:
        changed = conn.execute("UPDATE lci_jobs SET status = 'succeeded' WHERE id = %s AND status = 'failed'",
                               (str(altered_job),))
        assert changed.rowcount == 1
        assert conn.execute("DELETE FROM lci_runs WHERE id = %s", (deleted_run,)).rowcount == 1

    tampered = timed("verify (altered)", "projections", "rebuild", "--verify")
    assert tampered.returncode == 1, tampered.stdout + tampered.stderr
    lines = tampered.stdout.strip().splitlines()
    assert sorted(lines[:-1]) == sorted([
        f"lci_jobs {altered_job}: status: live 'succeeded', history says 'failed'",
        f"lci_runs {deleted_run}: missing from the live table",
    ]), tampered.stdout
    assert lines[-1] == f"2 difference(s) between the read model and the history up to position {events}"

    # A rebuild repairs both, and --verify agrees again.
    repaired = timed("rebuild (repair)", "projections", "rebuild")
    assert repaired.returncode == 0, repaired.stderr
    again = timed("verify (repaired)", "projections", "rebuild", "--verify")
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.strip().splitlines()[-1] == no_difference

    print(f"\n{RUNS} runs, {events} events: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
