"""Tamper evidence: the chain links of stored events, the append-only events table, and
`ledgerci audit verify`, against a real PostgreSQL (and SQLite, the embedded store)."""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID

import psycopg
import pytest
from eventsourcing.persistence import IntegrityError

from commands.app import LedgerApp
from commands.principal import Principal
from commands.schema import create_event_store
from commands.store import eventsourcing_env
from domain.errors import AlreadyExistsError
from domain.messages import FinishJob, Heartbeat, StartJob
from tests.reference.state import aggregate_state

pytestmark = pytest.mark.integration

ADMIN = Principal("admin", None)
LEDGERCI = Path(sys.executable).parent / "ledgerci"
WORKFLOW = b"jobs:\n  - name: build\n    run: make\n  - name: test\n    run: make test\n"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 5, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=10)
        return self.now


def open_app(url: str, key: bytes = b"k1") -> LedgerApp:
    app = LedgerApp(env=eventsourcing_env(url), clock=Clock(), audit_key=key)
    create_event_store(app, url)
    return app


def ran_a_run(app: LedgerApp, commit: str = "a" * 40, heartbeats: int = 2) -> UUID:
    """A run with two jobs: the first succeeds after some heartbeats, the second fails."""
    with contextlib.suppress(AlreadyExistsError):
        app.registry.create_tenant("acme", name="Acme", weight=1, max_concurrent_jobs=2, max_queued_runs=10,
                          pushes_per_minute=10, actor="admin")
    with contextlib.suppress(AlreadyExistsError):
        app.registry.register_repository("web", tenant_id="acme", clone_url="file:///x", principal=ADMIN)
    run_id = app.runs.push("web", commit, "refs/heads/main", ADMIN).run_id
    app.runs.plan_run(run_id, WORKFLOW)
    for index, exit_code in enumerate((0, 1)):
        job = app.runs.get_run(run_id, ADMIN).jobs[index]
        ids = {"run_id": str(run_id), "job_id": str(job.id), "attempt": job.attempt, "runner_id": "r1"}
        assert app.runs.start_job(StartJob(**ids)).reply.ok
        for _ in range(heartbeats if index == 0 else 0):
            assert app.runs.heartbeat(Heartbeat(**ids)).reply.ok
        assert app.runs.finish_job(FinishJob(**ids, exit_code=exit_code)).reply.ok
    return run_id


def audit(url: str, *args: str, key: str = "k1") -> subprocess.CompletedProcess:
    env = {**os.environ, "LEDGERCI_DATABASE_URL": url, "LEDGERCI_AUDIT_KEY": key}
    return subprocess.run([str(LEDGERCI), "audit", "verify", "--store", *args], env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/events.db"


def test_every_stored_event_is_linked_and_an_intact_history_verifies(sqlite_url: str) -> None:
    app = open_app(sqlite_url)
    run_id = ran_a_run(app)
    stored = app.store.stored_events(run_id)
    assert all(event.state.startswith(b'{"_chain":"') for event in stored)
    assert app.audit.verify_chain(run_id) == (len(stored), [])
    checked, broken = app.audit.verify_chain()
    assert broken == [] and checked > len(stored)
    # The link is invisible to readers: the domain events are what they always were.
    assert [e.type for e in app.audit.history(run_id)][:3] == ["RunRequested", "RunPlanned", "JobQueued"]


def test_the_events_table_refuses_update_and_delete_on_sqlite(sqlite_url: str) -> None:
    app = open_app(sqlite_url)
    run_id = ran_a_run(app)
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as conn:
        for statement in ("UPDATE stored_events SET state = x'00'", "DELETE FROM stored_events"):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                conn.execute(statement)
    conn.close()
    assert app.audit.verify_chain(run_id)[1] == []


def test_an_event_altered_in_the_database_is_named_with_the_first_break(sqlite_url: str) -> None:
    app = open_app(sqlite_url)
    run_id = ran_a_run(app)
    other = ran_a_run(app, commit="b" * 40)
    failed = next(e for e in app.store.stored_events(run_id) if e.topic.endswith("JobFailed"))
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as conn:
        conn.execute("DROP TRIGGER stored_events_no_update")  # what someone with the file can do
        conn.execute("UPDATE stored_events SET state = ? WHERE originator_id = ? AND originator_version = ?",
                     (failed.state.replace(b'"exit_code":1', b'"exit_code":0'), run_id.hex,
                      failed.originator_version))
    conn.close()
    _, broken = app.audit.verify_chain()
    assert [(b.originator_id, b.version) for b in broken] == [(str(run_id), failed.originator_version)]
    assert "does not match" in broken[0].reason
    assert app.audit.verify_chain(other)[1] == []


def test_a_save_that_loses_a_race_leaves_the_chain_intact(sqlite_url: str) -> None:
    """Two writers decide on the same version: the loser's computed link must not be reused."""
    first, second = open_app(sqlite_url), open_app(sqlite_url)
    run_id = ran_a_run(first)
    stale = second.runs.get_run(run_id, ADMIN)
    first.runs.rerun(run_id, ADMIN)
    stale.request_rerun(datetime.now(UTC), "admin")  # decided on what `second` saw before
    with pytest.raises(IntegrityError):
        second.store.save(stale)
    second.runs.rerun(run_id, ADMIN)  # reloads, decides again, appends after `first`'s event
    assert [e.type for e in second.audit.history(run_id)][-2:] == ["RunRerunRequested", "RunRerunRequested"]
    for app in (first, second):
        assert app.audit.verify_chain()[1] == []


def test_a_long_run_loads_from_snapshots_to_the_state_its_events_give(sqlite_url: str) -> None:
    app = open_app(sqlite_url)
    run_id = ran_a_run(app, heartbeats=250)
    run = app.runs.get_run(run_id, ADMIN)
    assert run.version > 250
    snapshots = list(app.store.snapshots.recorder.select_events(run_id))  # type: ignore[union-attr]
    assert [s.originator_version for s in snapshots] == [100, 200]
    # A fresh process (nothing remembered) loads from the newest snapshot and appends on it.
    fresh = open_app(sqlite_url)
    assert aggregate_state(fresh.runs.get_run(run_id, ADMIN)) == aggregate_state(run)
    for version in (1, 99, 100, 101, 150, 200, run.version):
        from_snapshot = fresh.store.repository.get(run_id, version=version)
        from_events = fresh.audit.replay_events_only(run_id, version)
        assert aggregate_state(from_snapshot) == aggregate_state(from_events), version
    fresh.runs.cancel_run(run_id, ADMIN)
    fresh.runs.rerun(run_id, ADMIN)
    assert fresh.audit.verify_chain()[1] == []


# ----- PostgreSQL: the services' role, and the command line ---------------------------------

@pytest.fixture
def service_role(postgres_url: str) -> Iterator[str]:
    role = f"ledgerci_service_{secrets.token_hex(3)}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
    yield role
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"DROP OWNED BY {role}")
        conn.execute(f"DROP ROLE {role}")


def as_role(url: str, role: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))


def test_the_services_role_appends_but_postgres_refuses_its_update_delete_and_truncate(
    postgres_url: str, service_role: str, nats_server
) -> None:
    env = {**os.environ, "LEDGERCI_DATABASE_URL": postgres_url, "LEDGERCI_NATS_URL": nats_server.url}
    migrated = subprocess.run([str(LEDGERCI), "migrate", "--grant", service_role], env=env, capture_output=True,
                              text=True, timeout=60)
    assert migrated.returncode == 0, migrated.stderr
    service_url = as_role(postgres_url, service_role)
    app = LedgerApp(env=eventsourcing_env(service_url), clock=Clock(), audit_key=b"k1")
    run_id = ran_a_run(app)  # the role can do everything the services do
    app.close()
    with psycopg.connect(service_url, autocommit=True) as conn:
        conn.execute("UPDATE lci_tracking SET position = position")  # read models are the role's to keep
        for statement, refusal in (
            ("UPDATE ledgerci_events SET state = state", "append-only: UPDATE refused"),
            ("DELETE FROM ledgerci_events", "permission denied"),
            ("TRUNCATE ledgerci_events", "permission denied"),
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match=refusal):
                conn.execute(statement)
    with psycopg.connect(postgres_url, autocommit=True) as conn:  # the owner is refused too
        for statement in ("UPDATE ledgerci_events SET state = state", "DELETE FROM ledgerci_events",
                          "TRUNCATE ledgerci_events"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute(statement)
    assert audit(postgres_url, str(run_id)).returncode == 0


def test_audit_verify_names_the_event_altered_in_postgres(postgres_url: str) -> None:
    app = open_app(postgres_url)
    run_id = ran_a_run(app)
    other = ran_a_run(app, commit="b" * 40)
    app.close()
    intact = audit(postgres_url, "--all")
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert "every chain intact" in intact.stdout
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE ledgerci_events DISABLE TRIGGER USER")  # only the owner can
        conn.execute("UPDATE ledgerci_events SET state = convert_to(replace(convert_from(state, 'UTF8'), 'runner:r1', "
                     "'runner:r2'), 'UTF8') "
                     "WHERE originator_id = %s AND originator_version = 4", (run_id,))
    found = audit(postgres_url, "--all")
    assert found.returncode == 1
    assert f"BROKEN {run_id} version 4 (JobStarted)" in found.stdout
    assert str(other) not in found.stdout
    one = audit(postgres_url, str(run_id))
    assert one.returncode == 1 and f"{run_id} version 4" in one.stdout
    assert audit(postgres_url, str(other)).returncode == 0
    wrong_key = audit(postgres_url, str(other), key="not-the-key")
    assert wrong_key.returncode == 1 and f"BROKEN {other} version 1" in wrong_key.stdout
