"""The event store's tables, made append-only in the database itself (`ledgerci migrate`).

The events table refuses UPDATE, DELETE and TRUNCATE with triggers, for every role, the
owner's included: undoing that takes `ALTER TABLE … DISABLE TRIGGER`, which only the table's
owner can do, and which the chain links (commands.chain) then make visible anyway.

On PostgreSQL the services may also connect as a role of their own (`ledgerci migrate
--grant ROLE`, run as the owner). That role may read and insert events, and do anything to
the read models and snapshots, which are derived. It keeps the UPDATE privilege on the events
table only because eventsourcing takes `LOCK TABLE … IN EXCLUSIVE MODE` to keep notification
ids in commit order, and PostgreSQL 15 grants that lock only with UPDATE, DELETE or TRUNCATE;
the trigger refuses every UPDATE it would allow.
"""

from __future__ import annotations

import sqlite3
from typing import Protocol

import psycopg
from psycopg import sql

from commands.store import is_postgres, sqlite_path


class EventStoreApp(Protocol):
    recorder: object
    snapshots: object


_POSTGRES_GUARD = """
CREATE OR REPLACE FUNCTION ledgerci_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE OR REPLACE TRIGGER {row_trigger} BEFORE UPDATE OR DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION ledgerci_refuse_change();
CREATE OR REPLACE TRIGGER {truncate_trigger} BEFORE TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION ledgerci_refuse_change();
"""

_SQLITE_GUARD = """
CREATE TRIGGER IF NOT EXISTS {table}_no_update BEFORE UPDATE ON {table}
BEGIN SELECT RAISE(ABORT, '{table} is append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS {table}_no_delete BEFORE DELETE ON {table}
BEGIN SELECT RAISE(ABORT, '{table} is append-only: DELETE refused'); END;
"""


def create_event_store(app: EventStoreApp, database_url: str) -> None:
    """Create the events and snapshots tables if missing, and make the events append-only."""
    app.store.recorder.create_table()  # type: ignore[attr-defined]
    if app.store.snapshots is not None:
        app.store.snapshots.recorder.create_table()  # type: ignore[attr-defined]
    table: str = app.store.recorder.events_table_name  # type: ignore[attr-defined]
    if is_postgres(database_url):
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL(_POSTGRES_GUARD).format(
                table=sql.Identifier(table),
                row_trigger=sql.Identifier(f"{table}_append_only"),
                truncate_trigger=sql.Identifier(f"{table}_no_truncate"),
            ))
    else:
        with sqlite3.connect(sqlite_path(database_url)) as conn:
            conn.executescript(_SQLITE_GUARD.format(table=table))
        conn.close()


def grant_service_role(app: EventStoreApp, database_url: str, role: str) -> None:
    """Give the services' role what it needs and no more (PostgreSQL only)."""
    if not is_postgres(database_url):
        raise ValueError("--grant needs PostgreSQL: SQLite has no roles")
    events = sql.Identifier(app.store.recorder.events_table_name)  # type: ignore[attr-defined]
    grantee = sql.Identifier(role)
    with psycopg.connect(database_url, autocommit=True) as conn, conn.transaction():
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(grantee))
        conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}")
                     .format(grantee))
        conn.execute(sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {}").format(grantee))
        conn.execute(sql.SQL("REVOKE DELETE, TRUNCATE ON {} FROM {}").format(events, grantee))
