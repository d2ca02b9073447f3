"""The runs/jobs read model: what the API's run list and run detail show.

Each batch of events is applied in one transaction together with the projection's tracking
position, so an event is applied exactly once however often it is delivered: a position at or
below the tracked one is skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from enum import Enum
from functools import singledispatchmethod
from typing import Any, NamedTuple

from domain.refs import tag_of
from domain.run import Run
from domain.run_events import superseded_reason, waiting_reason
from domain.status import JobStatus, RunStatus
from domain.statuses import RunState
from projections.artifacts import artifact_uploaded, artifacts_expired
from projections.registry import REGISTRY_TABLES, apply_registry_event
from projections.sql import Cursor, Database
from projections.status_outbox import record_state, status_context
from projections.timestamps import rfc3339
from projections.webhook_outbox import queue_deliveries

PROJECTION_NAME = "runs"


class Rebuilt(NamedTuple):
    position: int
    events: int


def _overwritten_lease_extensions(events: list[tuple[int, Any]]) -> set[int]:
    """Positions of lease extensions that a later one of the same attempt in this batch
    overwrites. Heartbeats are most of a long job's events, and each would rewrite one row
    (in one transaction PostgreSQL then walks every dead version of it): only the last counts."""
    later: set[tuple[Any, str, int]] = set()
    overwritten = set()
    for position, event in reversed(events):
        if isinstance(event, Run.JobLeaseExtended):
            attempt = (event.originator_id, event.job_id, event.attempt)
            if attempt in later:
                overwritten.add(position)
            later.add(attempt)
    return overwritten


class Outbox(Enum):
    STATUSES = "statuses"
    WEBHOOKS = "webhooks"


class RunsProjection:
    def __init__(self, db: Database, name: str = PROJECTION_NAME) -> None:
        self.db = db
        self.name = name
        # The outboxes this projection may have put rows in since they were last taken: their
        # senders are woken for those only (rows sent later are found by their backstop timer).
        self._filled: set[Outbox] = set()

    def take_filled_outboxes(self) -> set[Outbox]:
        """The outboxes given rows (or maybe given rows, where the database does not say) since
        the last call; a sender not named here has nothing new to send."""
        filled, self._filled = self._filled, set()
        return filled

    def position(self) -> int:
        rows = self.db.query("SELECT position FROM lci_tracking WHERE projection = ?", (self.name,))
        return int(rows[0][0]) if rows else 0

    def apply(self, events: Iterable[tuple[int, Any]]) -> int:
        """Apply (position, event) pairs in order; returns the new tracked position."""
        with self.db.transaction(lock=True) as cursor:
            tracked = self._apply_in(cursor, events, self._lock_position(cursor))
            self._save_position(cursor, tracked)
        return tracked

    def catch_up(self, events_after: Callable[[int], list[tuple[int, Any]]]) -> int:
        """Apply what follows the tracked position, read under the tracking row's lock.

        The position comes from the table, never from memory, so a projector goes on
        correctly after a rebuild switched the tables under it. Returns the events applied.
        """
        with self.db.transaction(lock=True) as cursor:
            tracked = self._lock_position(cursor)
            events = events_after(tracked)
            if events:
                self._save_position(cursor, self._apply_in(cursor, events, tracked))
        return len(events)

    def rebuild(self, pages: Iterable[Iterable[tuple[int, Any]]]) -> Rebuilt:
        """Throw the read model away and build it again from the whole history.

        One transaction: readers keep seeing the old rows until the rebuilt ones commit, and
        a live projector waits on the tracking row, then goes on from the rebuilt position.
        """
        with self.db.transaction(lock=True) as cursor:
            self._lock_position(cursor)
            for table in ("lci_jobs", "lci_runs", "lci_schedules", "lci_artifacts", *REGISTRY_TABLES):
                cursor.execute(f"DELETE FROM {table}")
            tracked = events = 0
            for page in pages:
                page = list(page)
                events += len(page)
                tracked = self._apply_in(cursor, page, tracked)
            self._save_position(cursor, tracked)
        return Rebuilt(position=tracked, events=events)

    def _lock_position(self, cursor: Cursor) -> int:
        # FOR UPDATE: two projector replicas take turns; the second skips what the first did.
        lock = " FOR UPDATE" if self.db.dialect == "postgresql" else ""
        row = cursor.execute(f"SELECT position FROM lci_tracking WHERE projection = ?{lock}", (self.name,)).fetchone()
        return int(row[0]) if row else 0

    def _apply_in(self, cursor: Cursor, events: Iterable[tuple[int, Any]], tracked: int) -> int:
        events = list(events)
        overwritten = _overwritten_lease_extensions(events)
        for position, event in events:
            if position <= tracked:
                continue  # already applied: a redelivery or a second replica
            if position not in overwritten:
                self.handle(event, cursor, position)
                if queue_deliveries(cursor, event, position):  # outgoing webhooks, from the rows just written
                    self._filled.add(Outbox.WEBHOOKS)
            tracked = position
        return tracked

    def _record_state(self, cursor: Cursor, run_id: str, state: RunState, at: datetime,
                      context: str | None = None) -> None:
        if record_state(cursor, run_id, state, at, context):
            self._filled.add(Outbox.STATUSES)

    def _save_position(self, cursor: Cursor, tracked: int) -> None:
        cursor.execute(
            "INSERT INTO lci_tracking (projection, position) VALUES (?, ?) "
            "ON CONFLICT (projection) DO UPDATE SET position = excluded.position",
            (self.name, tracked),
        )

    @singledispatchmethod
    def handle(self, event: Any, cursor: Cursor, position: int) -> None:
        """Events of other aggregates: the lists of tenants and repositories, or nothing."""
        apply_registry_event(event, cursor)

    @handle.register
    def _(self, event: Run.RunRequested, cursor: Cursor, position: int) -> None:
        cursor.execute(
            "INSERT INTO lci_runs (id, tenant_id, repository_id, commit_sha, ref, rerun, status, "
            "created_at, position) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            (str(event.originator_id), event.tenant_id, event.repository_id, event.commit,
             event.ref, event.rerun, RunStatus.QUEUED.value, rfc3339(event.timestamp), position),
        )

    @handle.register
    def _(self, event: Run.RunPlanned, cursor: Cursor, position: int) -> None:
        run_id = str(event.originator_id)
        for index, (job_id, spec) in enumerate(event.planned_jobs()):
            # The tenant comes from the run's row in the same statement: no round trip to wait on.
            cursor.execute(
                "INSERT INTO lci_jobs (id, run_id, tenant_id, idx, name, status, attempt, pool, priority) "
                "SELECT ?, id, tenant_id, ?, ?, ?, 0, ?, ? FROM lci_runs WHERE id = ? ON CONFLICT (id) DO NOTHING",
                (job_id, index, spec.name, JobStatus.PENDING.value, spec.pool, spec.priority, run_id),
            )

        # A push to a branch that declares no schedules ends the ones an older push declared
        # (a declaring push's SchedulesDeclared came first, so its own rows stay).
        cursor.execute(
            "DELETE FROM lci_schedules WHERE declared_by <> ? AND EXISTS (SELECT 1 FROM lci_runs r WHERE r.id = ? "
            "AND r.schedule IS NULL AND r.rerun = 0 AND r.repository_id = lci_schedules.repository_id "
            "AND r.ref = 'refs/heads/' || lci_schedules.branch)",
            (run_id, run_id),
        )
        ref = cursor.execute("SELECT ref FROM lci_runs WHERE id = ?", (run_id,)).fetchone()
        self._record_state(cursor, run_id, RunState.PENDING, event.timestamp,
                           status_context(event.workflow_name, tag_of(ref[0] if ref else None)))

    @handle.register
    def _(self, event: Run.SchedulesDeclared, cursor: Cursor, position: int) -> None:
        # A schedule declared again keeps when it was first declared (a time between the two
        # declarations still fires); it runs the newest declaring commit.
        run_id = str(event.originator_id)
        listed = ", ".join("?" for _ in event.crons)
        cursor.execute(f"DELETE FROM lci_schedules WHERE branch = ? AND cron NOT IN ({listed}) AND repository_id = "
                       "(SELECT repository_id FROM lci_runs WHERE id = ?)", (event.branch, *event.crons, run_id))
        for cron in event.crons:
            cursor.execute(
                "INSERT INTO lci_schedules (id, repository_id, tenant_id, branch, cron, commit_sha, declared_by, "
                "declared_at) SELECT repository_id || ?, repository_id, tenant_id, ?, ?, commit_sha, id, ? "
                "FROM lci_runs WHERE id = ? ON CONFLICT (id) DO UPDATE SET commit_sha = excluded.commit_sha, "
                "declared_by = excluded.declared_by",
                (f"\n{event.branch}\n{cron}", event.branch, cron, rfc3339(event.timestamp), run_id),
            )

    @handle.register
    def _(self, event: Run.RunScheduled, cursor: Cursor, position: int) -> None:
        cursor.execute("UPDATE lci_runs SET schedule = ?, scheduled_for = ? WHERE id = ?",
                       (event.cron, rfc3339(event.nominal_at), str(event.originator_id)))

    @handle.register
    def _(self, event: Run.CommitRead, cursor: Cursor, position: int) -> None:
        cursor.execute("UPDATE lci_runs SET commit_subject = ?, commit_author = ? WHERE id = ?",
                       (event.subject, event.author, str(event.originator_id)))

    @handle.register
    def _(self, event: Run.RunSkipped, cursor: Cursor, position: int) -> None:
        self._end_run(cursor, event, RunStatus.SKIPPED, event.reason)

    @handle.register
    def _(self, event: Run.RunFailed, cursor: Cursor, position: int) -> None:
        self._end_run(cursor, event, RunStatus.FAILED, event.error)
        self._record_state(cursor, str(event.originator_id), RunState.FAILURE, event.timestamp)

    @handle.register
    def _(self, event: Run.RunSucceeded, cursor: Cursor, position: int) -> None:
        self._end_run(cursor, event, RunStatus.SUCCEEDED, None)
        self._record_state(cursor, str(event.originator_id), RunState.SUCCESS, event.timestamp)

    @handle.register
    def _(self, event: Run.RunCancelled, cursor: Cursor, position: int) -> None:
        # The error stays: a run its concurrency group superseded says by which run.
        cursor.execute("UPDATE lci_runs SET status = ?, finished_at = ?, waiting = NULL WHERE id = ?",
                       (RunStatus.CANCELLED.value, rfc3339(event.timestamp), str(event.originator_id)))
        self._record_state(cursor, str(event.originator_id), RunState.CANCELLED, event.timestamp)

    @handle.register
    def _(self, event: Run.RunJoinedGroup, cursor: Cursor, position: int) -> None:
        waiting = waiting_reason(event.group) if event.waits else None
        cursor.execute("UPDATE lci_runs SET concurrency_group = ?, waiting = ? WHERE id = ?",
                       (event.group, waiting, str(event.originator_id)))

    @handle.register
    def _(self, event: Run.JobNeedsGroup, cursor: Cursor, position: int) -> None:
        cursor.execute("UPDATE lci_runs SET concurrency_group = ? WHERE id = ?",
                       (event.group, str(event.originator_id)))

    @handle.register
    def _(self, event: Run.RunLeftGroup, cursor: Cursor, position: int) -> None:
        cursor.execute("UPDATE lci_runs SET concurrency_group = NULL, waiting = NULL WHERE id = ?",
                       (str(event.originator_id),))

    @handle.register
    def _(self, event: Run.RunGotGroup, cursor: Cursor, position: int) -> None:
        cursor.execute("UPDATE lci_runs SET waiting = NULL WHERE id = ?", (str(event.originator_id),))

    @handle.register
    def _(self, event: Run.RunSuperseded, cursor: Cursor, position: int) -> None:
        self._superseded(cursor, event)

    @handle.register
    def _(self, event: Run.RunDropped, cursor: Cursor, position: int) -> None:
        self._superseded(cursor, event)

    @staticmethod
    def _superseded(cursor: Cursor, event: Run.RunSuperseded | Run.RunDropped) -> None:
        cursor.execute("UPDATE lci_runs SET error = ?, waiting = NULL WHERE id = ?",
                       (superseded_reason(event.by_run), str(event.originator_id)))

    @handle.register
    def _(self, event: Run.JobQueued, cursor: Cursor, position: int) -> None:
        cursor.execute(
            "UPDATE lci_jobs SET status = ?, attempt = ?, queued_at = ?, pick_up_by = ?, runner_id = NULL, "
            "started_at = NULL, lease_expires_at = NULL, timeout_at = NULL WHERE id = ?",
            (JobStatus.QUEUED.value, event.attempt, rfc3339(event.timestamp), rfc3339(event.pick_up_by),
             event.job_id),
        )

    @handle.register
    def _(self, event: Run.JobStarted, cursor: Cursor, position: int) -> None:
        cursor.execute(
            "UPDATE lci_jobs SET status = ?, runner_id = ?, started_at = ?, lease_expires_at = ?, "
            "timeout_at = ? WHERE id = ?",
            (JobStatus.RUNNING.value, event.runner_id, rfc3339(event.timestamp),
             rfc3339(event.lease_expires_at), rfc3339(event.timeout_at), event.job_id),
        )
        cursor.execute(
            "UPDATE lci_runs SET status = ? WHERE id = ? AND status = ?",
            (RunStatus.RUNNING.value, str(event.originator_id), RunStatus.QUEUED.value),
        )
        self._record_state(cursor, str(event.originator_id), RunState.RUNNING, event.timestamp)

    @handle.register
    def _(self, event: Run.ArtifactUploaded, cursor: Cursor, position: int) -> None:
        artifact_uploaded(event, cursor)

    @handle.register
    def _(self, event: Run.ArtifactsExpired, cursor: Cursor, position: int) -> None:
        artifacts_expired(event, cursor)

    @handle.register
    def _(self, event: Run.JobSucceeded, cursor: Cursor, position: int) -> None:
        self._end_job(cursor, event, JobStatus.SUCCEEDED, event.exit_code, None)

    @handle.register
    def _(self, event: Run.JobFailed, cursor: Cursor, position: int) -> None:
        self._end_job(cursor, event, JobStatus.FAILED, event.exit_code, event.error)

    @handle.register
    def _(self, event: Run.JobSkipped, cursor: Cursor, position: int) -> None:
        self._end_job(cursor, event, JobStatus.SKIPPED, None, None)

    @handle.register
    def _(self, event: Run.JobCancelled, cursor: Cursor, position: int) -> None:
        self._end_job(cursor, event, JobStatus.CANCELLED, None, "cancelled")

    @handle.register
    def _(self, event: Run.JobLeaseExtended, cursor: Cursor, position: int) -> None:
        cursor.execute("UPDATE lci_jobs SET lease_expires_at = ? WHERE id = ? AND attempt = ?",
                       (rfc3339(event.lease_expires_at), event.job_id, event.attempt))

    @handle.register
    def _(self, event: Run.JobAttemptAbandoned, cursor: Cursor, position: int) -> None:
        cursor.execute("UPDATE lci_jobs SET error = ?, lease_expires_at = NULL WHERE id = ? AND attempt = ?",
                       (event.reason, event.job_id, event.attempt))

    @staticmethod
    def _end_run(cursor: Cursor, event: Any, status: RunStatus, error: str | None) -> None:
        cursor.execute(
            "UPDATE lci_runs SET status = ?, error = ?, finished_at = ? WHERE id = ?",
            (status.value, error, rfc3339(event.timestamp), str(event.originator_id)),
        )

    @staticmethod
    def _end_job(cursor: Cursor, event: Any, status: JobStatus, exit_code: int | None,
                 error: str | None) -> None:
        cursor.execute(
            "UPDATE lci_jobs SET status = ?, exit_code = ?, error = ?, finished_at = ?, "
            "lease_expires_at = NULL WHERE id = ?",
            (status.value, exit_code, error, rfc3339(event.timestamp), event.job_id),
        )
