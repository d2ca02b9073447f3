"""A write side on a test's own PostgreSQL database, with tenant `acme` and its repository `web`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from commands.app import LedgerApp
from commands.principal import Principal
from commands.schema import create_event_store
from commands.store import eventsourcing_env
from projections.schema import create_read_model_tables
from projections.sql import Database, open_database

ADMIN = Principal("admin", None)


@contextmanager
def acme_ledger(postgres_url: str, *, max_concurrent_jobs: int = 4) -> Iterator[LedgerApp]:
    app = LedgerApp(env=eventsourcing_env(postgres_url))
    create_event_store(app, postgres_url)
    app.registry.create_tenant("acme", name="Acme", weight=1, max_concurrent_jobs=max_concurrent_jobs,
                               max_queued_runs=100, pushes_per_minute=60, actor="admin")
    app.registry.register_repository("web", tenant_id="acme", clone_url="file:///web", principal=ADMIN)
    try:
        yield app
    finally:
        app.close()


@contextmanager
def read_model(postgres_url: str) -> Iterator[Database]:
    """The read-model tables on the test's database (beside its event store)."""
    database = open_database(postgres_url)
    create_read_model_tables(database)
    try:
        yield database
    finally:
        database.close()
