"""Queries over the schedules in force (`lci_schedules`, kept by projections.runs) and the runs
they started."""

from __future__ import annotations

from datetime import datetime

import msgspec

from domain.schedule import ScheduleInForce
from projections.sql import Database

_COLUMNS = "repository_id, tenant_id, branch, cron, commit_sha, declared_at"


class Firing(msgspec.Struct, kw_only=True):
    """One run a schedule started: the nominal time it stands for, and how it went."""

    run_id: str
    scheduled_for: str
    status: str
    created_at: str


class ScheduleQueries:
    def __init__(self, db: Database) -> None:
        self.db = db

    def in_force(self, repository_id: str | None = None) -> list[ScheduleInForce]:
        """Every schedule in force (the scheduler fires them), or one repository's."""
        where, params = (" WHERE repository_id = ?", (repository_id,)) if repository_id else ("", ())
        rows = self.db.query(f"SELECT {_COLUMNS} FROM lci_schedules{where} ORDER BY repository_id, branch, cron",
                             params)
        return [ScheduleInForce(repository_id=row[0], tenant_id=row[1], branch=row[2], cron=row[3], commit=row[4],
                                declared_at=datetime.fromisoformat(str(row[5]).replace("Z", "+00:00")))
                for row in rows]

    def firings(self, repository_id: str, branch: str, cron: str, limit: int = 5) -> list[Firing]:
        """The schedule's latest runs, newest first."""
        rows = self.db.query(
            "SELECT id, scheduled_for, status, created_at FROM lci_runs WHERE repository_id = ? AND ref = ? "
            "AND schedule = ? ORDER BY scheduled_for DESC LIMIT ?",
            (repository_id, f"refs/heads/{branch}", cron, limit))
        return [Firing(run_id=row[0], scheduled_for=row[1], status=row[2], created_at=row[3]) for row in rows]
