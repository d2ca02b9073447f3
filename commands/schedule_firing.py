"""Fires the schedules in force: every scheduler replica, at every nominal minute.

No leader: each replica asks for the run of (repository, branch, cron, nominal time), whose
id derives from those four, and the store keeps the first (`RunCommands.fire_schedule`). So a
time fires once whichever replicas are alive, and goes on firing while any one is.

Catch-up: at each wake-up a schedule fires its latest nominal time at or before now, once;
times it missed while no replica ran are not fired one by one (a schedule down for a day does
not start 96 runs when it comes back). A time before the schedule was declared never fires.
The loop sleeps until the next minute of schedule time: nominal times are whole minutes, and
it re-reads the schedules in force at each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from commands.runs import RunCommands
from domain.errors import DomainError
from domain.schedule import ScheduleClock, ScheduleInForce, latest_time

log = logging.getLogger(__name__)

# Past the minute's boundary before looking, so that "now" is surely in the new minute.
_AFTER_BOUNDARY = timedelta(milliseconds=5)


class ScheduleFiring:
    def __init__(self, runs: RunCommands, in_force: Callable[[], list[ScheduleInForce]],
                 schedule_clock: ScheduleClock, now: Callable[[], datetime]) -> None:
        self.runs = runs
        self.in_force = in_force
        self.schedule_clock = schedule_clock
        self.now = now
        self._asked: dict[tuple[str, str, str], datetime] = {}  # the last time this replica fired

    def fire_due(self) -> int:
        """Fire each schedule's latest nominal time not yet asked for; returns the runs this
        call created (0 when other replicas were first)."""
        now = self.schedule_clock.schedule_time(self.now())
        created = 0
        for schedule in self.in_force():
            key = (schedule.repository_id, schedule.branch, schedule.cron)
            nominal = latest_time(schedule.cron, now)
            if nominal < self.schedule_clock.schedule_time(schedule.declared_at) or self._asked.get(key) == nominal:
                continue
            try:
                fired = self.runs.fire_schedule(schedule.repository_id, schedule.branch, schedule.cron, nominal,
                                                schedule.commit)
            except DomainError as refused:  # the repository was deleted, say: its schedules end with it
                log.info("schedule %r of %s@%s not fired: %s", schedule.cron, schedule.repository_id,
                         schedule.branch, refused)
            else:
                created += not fired.duplicate
                if not fired.duplicate:
                    log.info("schedule %r of %s@%s fired for %s: run %s", schedule.cron, schedule.repository_id,
                             schedule.branch, nominal.isoformat(), fired.run_id)
            self._asked[key] = nominal
        return created

    def seconds_to_next_minute(self) -> float:
        """Wall seconds until the next whole minute of schedule time."""
        now = self.schedule_clock.schedule_time(self.now())
        boundary = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
        return max(0.0, (self.schedule_clock.wall_time(boundary) - self.now() + _AFTER_BOUNDARY).total_seconds())


async def run_schedules(firing: ScheduleFiring, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await asyncio.to_thread(firing.fire_due)
        except Exception:  # the store or the read model away: the next minute tries again
            log.exception("firing schedules failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), firing.seconds_to_next_minute())
