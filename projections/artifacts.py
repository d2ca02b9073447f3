"""The artifacts read model: which files each run's jobs left (domain/artifacts.py), for the
API's list and downloads. A job's later attempt that stores files replaces the earlier one's
rows, as the run aggregate does."""

from __future__ import annotations

from datetime import datetime

import msgspec

from domain.run import Run
from projections.sql import Cursor, Database
from projections.timestamps import rfc3339

TABLES = [
    """CREATE TABLE IF NOT EXISTS lci_artifacts (
        run_id TEXT NOT NULL,
        name TEXT NOT NULL,
        tenant_id TEXT NOT NULL,
        job_id TEXT NOT NULL,
        job_name TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        path TEXT NOT NULL,
        size BIGINT NOT NULL,
        sha256 TEXT NOT NULL,
        object TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        created_at TEXT NOT NULL,
        removed_at TEXT,
        PRIMARY KEY (run_id, name)
    )""",
    # The reaper's question: which stored files are past their expiry.
    "CREATE INDEX IF NOT EXISTS lci_artifacts_expiring ON lci_artifacts (removed_at, expires_at)",
]
COMPARED = {"lci_artifacts": "run_id, name, tenant_id, job_id, job_name, attempt, path, size, sha256, object, "
                             "expires_at, created_at, removed_at"}


def artifact_uploaded(event: Run.ArtifactUploaded, cursor: Cursor) -> None:
    run_id = str(event.originator_id)
    cursor.execute("DELETE FROM lci_artifacts WHERE job_id = ? AND attempt <> ?", (event.job_id, event.attempt))
    # The job's name and the tenant from its row, in the same statement; the name is
    # domain.artifacts.artifact_name's, "<job name>/<path>".
    cursor.execute(
        "INSERT INTO lci_artifacts (run_id, name, tenant_id, job_id, job_name, attempt, path, size, sha256, object, "
        "expires_at, created_at) SELECT ?, name || '/' || ?, tenant_id, id, name, ?, ?, ?, ?, ?, ?, ? "
        "FROM lci_jobs WHERE id = ? ON CONFLICT (run_id, name) DO UPDATE SET attempt = excluded.attempt, "
        "size = excluded.size, sha256 = excluded.sha256, object = excluded.object, expires_at = excluded.expires_at, "
        "created_at = excluded.created_at",
        (run_id, event.path, event.attempt, event.path, event.size, event.sha256, event.object,
         rfc3339(event.expires_at), rfc3339(event.timestamp), event.job_id))


def artifacts_expired(event: Run.ArtifactsExpired, cursor: Cursor) -> None:
    for path in event.paths:
        cursor.execute("UPDATE lci_artifacts SET removed_at = ? WHERE job_id = ? AND path = ? AND removed_at IS NULL",
                       (rfc3339(event.timestamp), event.job_id, path))


class ArtifactRow(msgspec.Struct, frozen=True, kw_only=True):
    name: str  # <job name>/<path>: what the download route takes
    job: str
    attempt: int
    path: str
    size: int
    sha256: str
    expires_at: str
    created_at: str
    removed_at: str | None  # set once expired and removed from the store


class StoredObject(msgspec.Struct, frozen=True, kw_only=True):
    row: ArtifactRow
    object: str  # never shown: where the gateway reads it


_COLUMNS = "name, job_name, attempt, path, size, sha256, expires_at, created_at, removed_at, object"


def _row(row: tuple) -> ArtifactRow:
    return ArtifactRow(name=row[0], job=row[1], attempt=row[2], path=row[3], size=row[4], sha256=row[5],
                       expires_at=row[6], created_at=row[7], removed_at=row[8])


class Expiring(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    job_id: str
    path: str
    object: str


class ArtifactQueries:
    def __init__(self, db: Database) -> None:
        self.db = db

    def of_run(self, run_id: str) -> list[ArtifactRow]:
        columns = ", ".join(f"a.{column.strip()}" for column in _COLUMNS.split(","))
        rows = self.db.query(f"SELECT {columns} FROM lci_artifacts a JOIN lci_jobs j ON j.id = a.job_id "
                             "WHERE a.run_id = ? ORDER BY j.idx, a.path", (run_id,))
        return [_row(row) for row in rows]

    def find(self, run_id: str, name: str) -> StoredObject | None:
        rows = self.db.query(f"SELECT {_COLUMNS} FROM lci_artifacts WHERE run_id = ? AND name = ?", (run_id, name))
        return StoredObject(row=_row(rows[0]), object=rows[0][9]) if rows else None

    def expiring(self, now: datetime, limit: int = 200) -> list[Expiring]:
        """Stored files past their expiry, not yet removed."""
        rows = self.db.query("SELECT run_id, job_id, path, object FROM lci_artifacts WHERE removed_at IS NULL "
                             "AND expires_at <= ? ORDER BY expires_at LIMIT ?", (rfc3339(now), limit))
        return [Expiring(run_id=r[0], job_id=r[1], path=r[2], object=r[3]) for r in rows]

