"""Queries over the runs/jobs read model, always scoped to the caller's tenant."""

from __future__ import annotations

import base64
from datetime import datetime

import msgspec

from projections.sql import Database
from projections.timestamps import rfc3339


class JobRow(msgspec.Struct, kw_only=True):
    """A job as the read model holds it (the API's body adds what it computes: gateway/views.py)."""

    id: str
    name: str
    status: str
    attempt: int
    runner_id: str | None
    exit_code: int | None
    queued_at: str | None
    started_at: str | None
    finished_at: str | None
    error: str | None
    pool: str = "default"
    priority: str = "normal"  # the run's tier in its tenant's queue (high, normal, low)


class RunRow(msgspec.Struct, kw_only=True):
    """A run as the read model holds it, with its jobs in workflow order."""

    id: str
    repository_id: str
    tenant_id: str
    commit: str
    ref: str | None
    status: str
    created_at: str
    finished_at: str | None
    error: str | None
    commit_subject: str | None = None  # read by the planner; None until then (or if it could not)
    commit_author: str | None = None  # "Name <email>"
    concurrency_group: str | None = None  # the group it joined (`concurrency:`), its name expanded
    waiting: str | None = None  # why no job of it is queued yet: its concurrency group is held
    schedule: str | None = None  # the cron expression that started it (null: a push or a re-run)
    scheduled_for: str | None = None  # the nominal time of that schedule it stands for
    jobs: list[JobRow] = []


class RunRows(msgspec.Struct, kw_only=True):
    runs: list[RunRow]
    next_cursor: str | None


class JobLocation(msgspec.Struct, kw_only=True):
    """Where a job's log lives: its run, tenant, current attempt and whether it ended."""

    job_id: str
    run_id: str
    tenant_id: str
    attempt: int
    status: str


_RUN_COLUMNS = ("id, repository_id, tenant_id, commit_sha, ref, status, created_at, finished_at, error, "
                "commit_subject, commit_author, concurrency_group, waiting, schedule, scheduled_for")
_JOB_COLUMNS = (
    "id, name, status, attempt, runner_id, exit_code, queued_at, started_at, finished_at, error, pool, priority"
)


def _run(row: tuple) -> RunRow:
    return RunRow(
        id=row[0], repository_id=row[1], tenant_id=row[2], commit=row[3], ref=row[4],
        status=row[5], created_at=row[6], finished_at=row[7], error=row[8],
        commit_subject=row[9], commit_author=row[10], concurrency_group=row[11], waiting=row[12],
        schedule=row[13], scheduled_for=row[14],
    )


def _job(row: tuple) -> JobRow:
    return JobRow(
        id=row[0], name=row[1], status=row[2], attempt=row[3], runner_id=row[4],
        exit_code=row[5], queued_at=row[6], started_at=row[7], finished_at=row[8], error=row[9],
        pool=row[10], priority=row[11],
    )


class RunQueries:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get_run(self, run_id: str, tenant_id: str | None) -> RunRow | None:
        """The run with its jobs in workflow order; None if absent or another tenant's."""
        sql = f"SELECT {_RUN_COLUMNS} FROM lci_runs WHERE id = ?"
        params: list = [run_id]
        if tenant_id is not None:
            sql += " AND tenant_id = ?"
            params.append(tenant_id)
        rows = self.db.query(sql, params)
        if not rows:
            return None
        run = _run(rows[0])
        jobs = self.db.query(f"SELECT {_JOB_COLUMNS} FROM lci_jobs WHERE run_id = ? ORDER BY idx", (run_id,))
        run.jobs = [_job(j) for j in jobs]
        return run

    def running_jobs(self, tenant_id: str) -> int:
        """How many of the tenant's jobs run now (index lci_jobs_active)."""
        return self.db.query("SELECT count(*) FROM lci_jobs WHERE status = 'running' AND tenant_id = ?",
                             (tenant_id,))[0][0]

    def list_runs(
        self,
        tenant_id: str | None,
        *,
        repository_id: str | None = None,
        status: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunRows:
        """Newest first, paged by a cursor (the last row's created_at and id)."""
        clauses, params = [], []
        for column, value in (("tenant_id", tenant_id), ("repository_id", repository_id),
                              ("status", status)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if cursor:
            created_at, run_id = _decode_cursor(cursor)
            clauses.append("(created_at < ? OR (created_at = ? AND id < ?))")
            params += [created_at, created_at, run_id]
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.db.query(
            f"SELECT {_RUN_COLUMNS} FROM lci_runs {where} ORDER BY created_at DESC, id DESC LIMIT ?",
            [*params, limit + 1],
        )
        runs = [_run(r) for r in rows[:limit]]
        next_cursor = _encode_cursor(runs[-1]) if len(rows) > limit else None
        return RunRows(runs=runs, next_cursor=next_cursor)

    def locate_job(self, job_id: str, tenant_id: str | None) -> JobLocation | None:
        sql = "SELECT id, run_id, tenant_id, attempt, status FROM lci_jobs WHERE id = ?"
        params: list = [job_id]
        if tenant_id is not None:
            sql += " AND tenant_id = ?"
            params.append(tenant_id)
        rows = self.db.query(sql, params)
        if not rows:
            return None
        row = rows[0]
        return JobLocation(job_id=row[0], run_id=row[1], tenant_id=row[2], attempt=row[3], status=row[4])


class OverdueAttempt(msgspec.Struct, frozen=True):
    run_id: str
    job_id: str
    attempt: int
    deadline: str  # lease | timeout | queue


class DeadlineQueries:
    """The reaper's view: attempts past one of their deadlines."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def overdue(self, now: datetime) -> list[OverdueAttempt]:
        at = rfc3339(now)
        rows = self.db.query(
            "SELECT run_id, id, attempt, 'lease' FROM lci_jobs WHERE status = 'running' AND lease_expires_at <= ? "
            "UNION ALL SELECT run_id, id, attempt, 'timeout' FROM lci_jobs "
            "  WHERE status = 'running' AND timeout_at <= ? "
            "UNION ALL SELECT run_id, id, attempt, 'queue' FROM lci_jobs WHERE status = 'queued' AND pick_up_by <= ?",
            (at, at, at),
        )
        return [OverdueAttempt(run_id=r[0], job_id=r[1], attempt=r[2], deadline=r[3]) for r in rows]


class LoadQueries:
    """What the system is carrying now, for metrics: read at scrape time, not kept."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def active_jobs(self) -> list[tuple[str, str, int]]:
        """(tenant, queued|running, how many); reads only active jobs (index lci_jobs_active)."""
        rows = self.db.query("SELECT tenant_id, status, count(*) FROM lci_jobs WHERE status IN ('queued', 'running') "
                             "GROUP BY tenant_id, status")
        return [(str(tenant), str(status), int(count)) for tenant, status, count in rows]

    def projected_position(self) -> int:
        rows = self.db.query("SELECT max(position) FROM lci_tracking")
        return int(rows[0][0] or 0)


class InvalidCursorError(ValueError):
    pass


def _encode_cursor(run: RunRow) -> str:
    return base64.urlsafe_b64encode(f"{run.created_at}|{run.id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        created_at, run_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
    except (ValueError, UnicodeDecodeError):
        raise InvalidCursorError(f"invalid cursor {cursor!r}") from None
    return created_at, run_id


class UnfinishedJob(msgspec.Struct, frozen=True):
    run_id: str
    job_id: str
    tenant_id: str
    pool: str
    priority: str
    status: str  # pending | queued | running
    attempt: int
    queued_at: datetime | None
    started_at: datetime | None


class AdmissionQueries:
    """The admission leader's starting point (commands.admission)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def unfinished_jobs(self) -> tuple[int, list[UnfinishedJob]]:
        """Every job of an unfinished run that is pending, queued or running, and the store
        position the read model reflects. One statement, so one snapshot: the leader follows
        the store from exactly that position."""
        rows = self.db.query(
            "WITH tracked AS (SELECT position FROM lci_tracking WHERE projection = 'runs') "
            "SELECT tracked.position, j.run_id, j.id, j.tenant_id, j.pool, j.status, j.attempt, j.queued_at, "
            "j.started_at, j.priority FROM tracked LEFT JOIN lci_jobs j ON j.status IN ('pending', 'queued', 'running')"
        )
        if not rows:
            return 0, []
        jobs = [
            UnfinishedJob(run_id=r[1], job_id=r[2], tenant_id=r[3], pool=r[4], priority=r[9], status=r[5],
                          attempt=r[6], queued_at=_parse_time(r[7]), started_at=_parse_time(r[8]))
            for r in rows if r[2] is not None
        ]
        return int(rows[0][0]), jobs


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None
