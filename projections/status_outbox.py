"""The commit-status outbox: each state a run of a repository with a status target goes through
(pending, running, its end), written by the runs projector in the transaction that applies the
event, then delivered to the git host at least once by commands/status_sender.py.

Delivery bookkeeping (attempts, when, what the host answered) is not derived from events: a
rebuild leaves the table alone, and re-applying an event finds its row there (ON CONFLICT DO
NOTHING). A row that a later state of the same run has overtaken is passed over: the host shows
the newest, and the end of a run, which nothing overtakes, is always delivered.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

import msgspec

from domain.statuses import RunState
from projections.sql import Cursor, Database
from projections.timestamps import rfc3339


class Outcome(Protocol):  # commands.outbound.Outcome, as far as a row records it
    result: str


RANK = {RunState.PENDING: 1, RunState.RUNNING: 2, RunState.SUCCESS: 3, RunState.FAILURE: 3, RunState.CANCELLED: 3}

TABLES = [
    """CREATE TABLE IF NOT EXISTS lci_status_outbox (
        id TEXT PRIMARY KEY,
        run_id TEXT NOT NULL,
        repository_id TEXT NOT NULL,
        commit_sha TEXT NOT NULL,
        context TEXT NOT NULL,
        state TEXT NOT NULL,
        rank INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at TEXT NOT NULL,
        delivered_at TEXT,
        last_result TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS lci_status_outbox_due ON lci_status_outbox (delivered_at, next_at)",
    "CREATE INDEX IF NOT EXISTS lci_status_outbox_by_run ON lci_status_outbox (run_id, rank)",
]


def status_context(workflow_name: str | None, tag: str | None) -> str:
    """The context a run's states are sent under: `ledgerci/<workflow>`, and for a tag's run
    (a run of its own, domain/ids.py) the tag too, so a release's states never overwrite those
    of the branch's run of the same commit on the host."""
    context = f"ledgerci/{workflow_name or 'ci'}"
    return context if tag is None else f"{context} ({tag.removeprefix('refs/tags/')})"


def record_state(cursor: Cursor, run_id: str, state: RunState, at: datetime, context: str | None = None) -> bool:
    """Queue `state` of the run for its host, if its repository has a status target (else no
    row: runs without one pay one indexed lookup). `context`: the run's, once known (RunPlanned).
    False when no row was queued; True when one was, or when the database does not say
    (PostgreSQL in pipeline mode answers a row count only once results are fetched)."""
    cursor.execute(
        "INSERT INTO lci_status_outbox (id, run_id, repository_id, commit_sha, context, state, rank, created_at, "
        "next_at) SELECT r.id || ?, r.id, r.repository_id, r.commit_sha, "
        "COALESCE(?, (SELECT o.context FROM lci_status_outbox o WHERE o.run_id = r.id LIMIT 1), 'ledgerci/ci'), "
        "?, ?, ?, ? FROM lci_runs r JOIN lci_repositories p ON p.id = r.repository_id "
        "WHERE r.id = ? AND p.statuses = 1 ON CONFLICT (id) DO NOTHING",
        (f":{state.value}", context, state.value, RANK[state], rfc3339(at), rfc3339(at), run_id),
    )
    return cursor.rowcount != 0


class OutboxRow(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    run_id: str
    repository_id: str
    commit: str
    context: str
    state: str
    attempts: int
    created_at: str
    next_at: str
    delivered_at: str | None
    last_result: str | None


_COLUMNS = ("id, run_id, repository_id, commit_sha, context, state, attempts, created_at, next_at, delivered_at, "
            "last_result")


def _row(row: tuple) -> OutboxRow:
    return OutboxRow(id=row[0], run_id=row[1], repository_id=row[2], commit=row[3], context=row[4], state=row[5],
                     attempts=row[6], created_at=row[7], next_at=row[8], delivered_at=row[9], last_result=row[10])


class StatusOutbox:
    def __init__(self, db: Database) -> None:
        self.db = db

    def due(self, now: datetime, limit: int = 50) -> list[OutboxRow]:
        """Undelivered states whose time has come and that no later state of their run overtook."""
        rows = self.db.query(
            f"SELECT {_COLUMNS} FROM lci_status_outbox o WHERE delivered_at IS NULL AND next_at <= ? "
            "AND NOT EXISTS (SELECT 1 FROM lci_status_outbox l WHERE l.run_id = o.run_id AND l.rank > o.rank) "
            "ORDER BY created_at LIMIT ?", (rfc3339(now), limit))
        return [_row(row) for row in rows]

    def delivered(self, row_id: str, at: datetime, outcome: Outcome) -> None:
        with self.db.transaction() as cursor:
            cursor.execute("UPDATE lci_status_outbox SET delivered_at = ?, attempts = attempts + 1, last_result = ? "
                           "WHERE id = ?", (rfc3339(at), outcome.result, row_id))

    def failed(self, row_id: str, at: datetime, retry_at: datetime | None, outcome: Outcome) -> None:
        # A status is never given up (retry_at None): the host must learn the run's end.
        assert retry_at is not None
        with self.db.transaction() as cursor:
            cursor.execute("UPDATE lci_status_outbox SET attempts = attempts + 1, next_at = ?, last_result = ? "
                           "WHERE id = ?", (rfc3339(retry_at), outcome.result, row_id))

    def release(self, row_ids: list[str], at: datetime) -> None:
        """Nothing to give back: statuses are not claimed (the host keeps the newest anyway)."""

    def of_run(self, run_id: str) -> list[OutboxRow]:
        return [_row(row) for row in self.db.query(
            f"SELECT {_COLUMNS} FROM lci_status_outbox WHERE run_id = ? ORDER BY rank, created_at", (run_id,))]
