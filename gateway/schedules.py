"""A repository's schedules as the API shows them: each with its next time and last firings."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import msgspec

from domain.schedule import ScheduleClock, next_time
from projections.schedules import Firing, ScheduleQueries
from projections.timestamps import rfc3339


class ScheduleResponse(msgspec.Struct, kw_only=True):
    branch: str
    cron: str  # five fields, UTC
    commit: str  # what each firing runs: the commit of the push that declared the schedule
    declared_at: str
    next_at: str  # the next nominal time (wall time)
    last_firings: list[Firing]  # newest first, at most 5


class ScheduleList(msgspec.Struct, kw_only=True):
    schedules: list[ScheduleResponse]


class ScheduleView:
    def __init__(self, queries: ScheduleQueries, clock: ScheduleClock, now: Callable[[], datetime]) -> None:
        self.queries = queries
        self.clock = clock
        self.now = now

    def of_repository(self, repository_id: str) -> ScheduleList:
        now = self.clock.schedule_time(self.now())
        return ScheduleList(schedules=[
            ScheduleResponse(branch=s.branch, cron=s.cron, commit=s.commit, declared_at=rfc3339(s.declared_at),
                             next_at=rfc3339(self.clock.wall_time(next_time(s.cron, now))),
                             last_firings=self.queries.firings(s.repository_id, s.branch, s.cron))
            for s in self.queries.in_force(repository_id)
        ])
