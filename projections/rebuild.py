"""Rebuild the read models from the whole history into fresh tables, verify, switch over.

The live tables keep serving, and the live projector keeps applying, while the fresh ones
are built beside them: on PostgreSQL in the schema `lci_rebuild`, on SQLite (verify only) in
a scratch file. Then, with the live projector paused on its tracking row for the few
milliseconds it takes:
- `verify` brings the fresh tables to the live tables' exact position and compares every row;
- `switch_over` brings them to the head of the store and swaps the schemas of the tables in
  one transaction. The projector goes on from the fresh tables' position, which it reads
  from the table (RunsProjection.catch_up), so nothing is applied twice or skipped.
On SQLite, `ledgerci dev`'s store, a rebuild runs in place in one transaction instead: there
is one process, and readers keep the old rows until it commits.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from projections import artifacts, registry
from projections.runs import RunsProjection
from projections.schema import READ_MODEL_TABLES, create_read_model_tables
from projections.sql import Database, PostgresDatabase, open_database

STAGING_SCHEMA = "lci_rebuild"
RETIRED_SCHEMA = "lci_retired"
PAGE = 2000

EventsAfter = Callable[[int, int], list[tuple[int, Any]]]  # (position, limit) -> (position, event) pairs

COMPARED = {
    "lci_runs": "id, tenant_id, repository_id, commit_sha, ref, rerun, status, error, created_at, finished_at, "
                "commit_subject, commit_author, concurrency_group, waiting, schedule, scheduled_for",
    "lci_jobs": "id, run_id, tenant_id, idx, name, status, attempt, runner_id, exit_code, error, "
                "queued_at, started_at, finished_at, pick_up_by, lease_expires_at, timeout_at",
    "lci_schedules": "id, repository_id, tenant_id, branch, cron, commit_sha, declared_by, declared_at",
    **registry.COMPARED,
    **artifacts.COMPARED,
}


@contextmanager
def staging_tables(live: Database) -> Iterator[Database]:
    """Empty read-model tables beside the live ones, dropped afterwards."""
    if live.dialect == "postgresql":
        assert isinstance(live, PostgresDatabase)
        with live.transaction() as cursor:
            cursor.execute(f"DROP SCHEMA IF EXISTS {STAGING_SCHEMA} CASCADE")
            cursor.execute(f"CREATE SCHEMA {STAGING_SCHEMA}")
        staging: Database = PostgresDatabase(live.url, pool_size=2, schema=STAGING_SCHEMA,
                                              session_options=live.session_options)
        try:
            create_read_model_tables(staging)
            yield staging
        finally:
            staging.close()
            with live.transaction() as cursor:
                cursor.execute(f"DROP SCHEMA IF EXISTS {STAGING_SCHEMA} CASCADE")
        return
    with tempfile.TemporaryDirectory() as scratch:
        staging = open_database(f"sqlite:///{Path(scratch) / 'rebuild.db'}")
        try:
            create_read_model_tables(staging)
            yield staging
        finally:
            staging.close()


def fill(staging: Database, events_after: EventsAfter, upto: int | None = None) -> int:
    """Apply the history after the staging tables' position (up to `upto`); events applied."""
    projection = RunsProjection(staging)
    applied = 0
    while True:
        position = projection.position()
        limit = PAGE if upto is None else min(PAGE, upto - position)
        if limit <= 0:
            return applied
        page = events_after(position, limit)
        if upto is not None:
            page = [(p, e) for p, e in page if p <= upto]
        if not page:
            return applied
        projection.apply(page)
        applied += len(page)


@contextmanager
def projector_paused(live: Database) -> Iterator[int]:
    """Hold the live tracking row (the projector waits); yields the live position."""
    if live.dialect != "postgresql":  # dev: one process; a projector step may slip in, nothing breaks
        yield RunsProjection(live).position()
        return
    with live.transaction() as cursor:
        row = cursor.execute("SELECT position FROM lci_tracking WHERE projection = ? FOR UPDATE",
                             (RunsProjection(live).name,)).fetchone()
        yield int(row[0]) if row else 0


def verify(live: Database, events_after: EventsAfter) -> tuple[list[str], int]:
    """Every difference between the live tables and fresh ones built from the history, and
    the position compared at."""
    with staging_tables(live) as staging:
        fill(staging, events_after, upto=RunsProjection(live).position())  # the bulk, nothing paused
        with projector_paused(live) as position:
            fill(staging, events_after, upto=position)
            return compare(live, staging), position


def switch_over(live: Database, events_after: EventsAfter) -> tuple[int, int]:
    """Rebuild into fresh tables and make them the live ones: (events applied, position)."""
    if live.dialect != "postgresql":
        pages = _pages(events_after)
        rebuilt = RunsProjection(live).rebuild(pages)
        return rebuilt.events, rebuilt.position
    with staging_tables(live) as staging:
        applied = fill(staging, events_after)
        with live.transaction() as cursor:
            live_schema = cursor.execute("SELECT current_schema()").fetchone()[0]
            # The projector waits here; what it would have applied, the fresh tables get.
            cursor.execute("LOCK TABLE lci_tracking IN EXCLUSIVE MODE")
            applied += fill(staging, events_after)
            cursor.execute(f"DROP SCHEMA IF EXISTS {RETIRED_SCHEMA} CASCADE")
            cursor.execute(f"CREATE SCHEMA {RETIRED_SCHEMA}")
            for table in READ_MODEL_TABLES:
                cursor.execute(f'ALTER TABLE "{live_schema}".{table} SET SCHEMA {RETIRED_SCHEMA}')
                cursor.execute(f"ALTER TABLE {STAGING_SCHEMA}.{table} SET SCHEMA \"{live_schema}\"")
            cursor.execute(f"DROP SCHEMA {RETIRED_SCHEMA} CASCADE")
        return applied, RunsProjection(live).position()


def _pages(events_after: EventsAfter) -> Iterator[list[tuple[int, Any]]]:
    position = 0
    while page := events_after(position, PAGE):
        yield page
        position = page[-1][0]


def compare(live: Database, rebuilt: Database) -> list[str]:
    found = []
    for table, columns in COMPARED.items():
        want, have = _rows(rebuilt, table), _rows(live, table)
        names = [c.strip() for c in columns.split(",")]
        for key in sorted(want.keys() | have.keys()):
            if key not in have:
                found.append(f"{table} {key}: missing from the live table")
            elif key not in want:
                found.append(f"{table} {key}: in the live table, but no event made it")
            elif want[key] != have[key]:
                changed = [f"{n}: live {h!r}, history says {w!r}"
                           for n, w, h in zip(names, want[key], have[key], strict=True) if w != h]
                found.append(f"{table} {key}: " + "; ".join(changed))
    return found


def _rows(db: Database, table: str) -> dict[str, tuple]:
    rows = db.query(f"SELECT {COMPARED[table]} FROM {table}")
    return {str(row[0]): tuple(None if v is None else str(v) for v in row) for row in rows}
