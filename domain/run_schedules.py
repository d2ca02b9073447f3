"""A run's records of schedules (domain/schedule.py): that a schedule started it, and the
schedules the file at its push declares for its branch. Mixed into `Run` (domain/run.py)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from domain import run_events

if TYPE_CHECKING:
    from domain.status import RunStatus


class ScheduleRecords:
    if TYPE_CHECKING:  # what it uses of Run
        planned: bool
        status: RunStatus

        def trigger_event(self, event_class: type, **kwargs: Any) -> None: ...

    def mark_scheduled(self, branch: str, cron: str, nominal_at: datetime, at: datetime, actor: str) -> None:
        """Started by a schedule, not a push: recorded in the save that creates the run."""
        self.trigger_event(run_events.RunScheduled, timestamp=at, branch=branch, cron=cron, nominal_at=nominal_at,
                           actor=actor)

    def declare_schedules(self, branch: str, crons: list[str], at: datetime, actor: str) -> bool:
        """The file at this push declares these schedules for its branch (planned with it)."""
        if self.planned or self.status.is_final:
            return False
        self.trigger_event(run_events.SchedulesDeclared, timestamp=at, branch=branch, crons=crons, actor=actor)
        return True
