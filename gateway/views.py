"""The API's bodies for runs and jobs: the read model's rows plus what the gateway computes
(why a queued job waits), and a run replayed from the store in the same shape (`?as_of=`)."""

from __future__ import annotations

from datetime import datetime

import msgspec

from domain.errors import DomainError
from domain.run import Run
from domain.run_events import waiting_reason
from projections.queries import JobRow, RunRow, RunRows
from projections.timestamps import rfc3339


class InvalidAsOfError(DomainError):
    pass


class JobBody(JobRow, kw_only=True):
    waiting: str | None = None  # why a queued job is not running yet, beyond waiting its turn


class RunBody(RunRow, kw_only=True, forbid_unknown_fields=True):
    # Closed (additionalProperties: false in the schema), so a run `as_of` a version (a RunBody
    # with more fields, below) is told apart from the run now.
    jobs: list[JobBody] = []


class RunPage(msgspec.Struct, kw_only=True):
    runs: list[RunBody]
    next_cursor: str | None


def run_body(row: RunRow) -> RunBody:
    fields = msgspec.structs.asdict(row)
    fields["jobs"] = [JobBody(**msgspec.structs.asdict(job)) for job in row.jobs]
    return RunBody(**fields)


def run_page(rows: RunRows) -> RunPage:
    return RunPage(runs=[run_body(row) for row in rows.runs], next_cursor=rows.next_cursor)


class RunAsOf(RunBody, kw_only=True):
    """A run as it was at one of its versions (`?as_of=`), replayed from the store: history, not now."""

    as_of_version: int  # the version shown
    as_of_at: str  # when that version was recorded
    latest_version: int  # the run's version now


def parse_as_of(value: str) -> tuple[int | None, datetime | None]:
    """`as_of` is a version number (`7`) or an RFC 3339 time (`2026-11-28T14:02:00Z`)."""
    if value.isascii() and value.isdigit() and len(value) <= 18:  # not "²", nor a 5000-digit int()
        return int(value), None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidAsOfError(f"as_of must be a version number or an RFC 3339 time, not {value!r}") from None
    if moment.tzinfo is None:
        raise InvalidAsOfError("as_of needs a time zone (e.g. a trailing Z)")
    return None, moment


def _time(moment: datetime | None) -> str | None:
    return rfc3339(moment) if moment else None


def run_as_of_view(run: Run, latest_version: int) -> RunAsOf:
    return RunAsOf(**msgspec.structs.asdict(run_view(run)), as_of_version=run.version,
                   as_of_at=rfc3339(run.modified_on), latest_version=latest_version)


def run_view(run: Run) -> RunBody:
    return RunBody(
        id=str(run.id), repository_id=run.repository_id, tenant_id=run.tenant_id, commit=run.commit, ref=run.ref,
        status=run.status.value, created_at=rfc3339(run.created_on), finished_at=_time(run.finished_at),
        error=run.error, commit_subject=run.commit_subject, commit_author=run.commit_author,
        concurrency_group=run.concurrency_group, schedule=run.scheduled_by, scheduled_for=_time(run.scheduled_for),
        waiting=waiting_reason(run.concurrency_group) if run.waiting_for_group and run.concurrency_group else None,
        jobs=[
            JobBody(
                id=str(job.id), name=job.name, status=job.status.value, attempt=job.attempt,
                runner_id=job.runner_id, exit_code=job.exit_code, queued_at=_time(job.queued_at),
                started_at=_time(job.started_at), finished_at=_time(job.finished_at), error=job.error,
                pool=job.spec.pool, priority=job.spec.priority,
            )
            for job in run.jobs
        ],
    )
