"""A run aggregate shown with the same fields as the read model (for `?as_of=` replays)."""

from __future__ import annotations

from datetime import datetime

import msgspec

from domain.errors import DomainError
from domain.run import Run, waiting_reason
from projections.queries import JobView, RunView
from projections.timestamps import rfc3339


class InvalidAsOfError(DomainError):
    pass


class RunAsOf(RunView, kw_only=True):
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


def run_view(run: Run) -> RunView:
    return RunView(
        id=str(run.id), repository_id=run.repository_id, tenant_id=run.tenant_id, commit=run.commit, ref=run.ref,
        status=run.status.value, created_at=rfc3339(run.created_on), finished_at=_time(run.finished_at),
        error=run.error, commit_subject=run.commit_subject, commit_author=run.commit_author,
        concurrency_group=run.concurrency_group, schedule=run.scheduled_by, scheduled_for=_time(run.scheduled_for),
        waiting=waiting_reason(run.concurrency_group) if run.waiting_for_group and run.concurrency_group else None,
        jobs=[
            JobView(
                id=str(job.id), name=job.name, status=job.status.value, attempt=job.attempt,
                runner_id=job.runner_id, exit_code=job.exit_code, queued_at=_time(job.queued_at),
                started_at=_time(job.started_at), finished_at=_time(job.finished_at), error=job.error,
                pool=job.spec.pool, priority=job.spec.priority,
            )
            for job in run.jobs
        ],
    )
