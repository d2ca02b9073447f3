"""A run's commands about its concurrency group (domain/concurrency_group.py holds the group's
own queue): joining a job-level group, getting its turn, and being superseded or dropped by a
newer run. Mixed into `Run` (domain/run.py), whose state, `cancel` and `_advance` they use.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from domain import run_events
from domain.job import Job
from domain.status import JobStatus, RunStatus


class GroupCommands:
    if TYPE_CHECKING:  # what it uses of Run
        status: RunStatus
        concurrency_group: str | None
        waiting_for_group: bool
        group_job: str | None
        needs_group: bool
        superseded_by: str | None

        @property
        def current_job(self) -> Job | None: ...
        def cancel(self, at: datetime, actor: str) -> bool: ...
        def _advance(self, at: datetime, actor: str) -> None: ...
        def trigger_event(self, event_class: type, **kwargs: Any) -> None: ...

    def enter_job_group(self, waits: bool, at: datetime, actor: str) -> bool:
        """The job next in line needs its job-level group: the run joins it, and queues the
        job now if the group was free."""
        if not self.needs_group or self.status.is_final:
            return False
        self.trigger_event(run_events.RunJoinedGroup, timestamp=at, group=self.concurrency_group, waits=waits,
                           job_id=self.group_job, actor=actor)
        if not waits:
            self._advance(at, actor)
        return True

    def take_group_turn(self, at: datetime, actor: str) -> bool:
        """The run waited for its concurrency group and now holds it: its first job is queued."""
        if not self.waiting_for_group or self.status.is_final:
            return False
        self.trigger_event(run_events.RunGotGroup, timestamp=at, group=self.concurrency_group, actor=actor)
        self._advance(at, actor)
        return True

    def supersede(self, by_run: UUID | str, at: datetime, actor: str) -> bool:
        """A newer run of its group cancels this one (`cancel_in_progress`): everything not
        ended is cancelled now, except a running job that is not `interruptible`, which
        finishes first; the run then ends cancelled without starting another job."""
        if self.status.is_final or self.superseded_by is not None:
            return False
        self.trigger_event(run_events.RunSuperseded, timestamp=at, by_run=str(by_run), actor=actor)
        job = self.current_job
        if job is None or job.status is not JobStatus.RUNNING or job.spec.interruptible:
            self.cancel(at, actor)
        return True

    def drop(self, by_run: UUID | str, at: datetime, actor: str) -> bool:
        """A newer run replaces this one, which was waiting for its group (`queue: single`)."""
        if self.status.is_final or not self.waiting_for_group:
            return False
        self.trigger_event(run_events.RunDropped, timestamp=at, by_run=str(by_run), actor=actor)
        self.cancel(at, actor)
        return True
