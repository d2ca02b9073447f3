"""Schedules: `on: {schedule: [{cron: "*/15 * * * *", branch: main}]}` (docs/workflow.md).

A schedule's times are nominal minutes in UTC, computed from its cron expression (croniter).
One firing per (repository, branch, cron, nominal time): the run it starts has an id derived
from those four (`domain.ids.scheduled_run_id`), so however many scheduler replicas fire the
same time, the store keeps one run.

Tests run schedules on a faster clock (`ScheduleClock.speed`): schedule time runs `speed`
times as fast as the wall clock from a fixed anchor, the same on every replica, so a cron
minute can pass in seconds without any replica disagreeing on which minute it is.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
from croniter import croniter

DEFAULT_SCHEDULE_BRANCH = "main"
MAX_SCHEDULES = 10
# Schedule time and wall time meet here; any fixed instant would do, as long as every
# replica uses the same one.
CLOCK_ANCHOR = datetime(2026, 1, 1, tzinfo=UTC)


class Schedule(msgspec.Struct, frozen=True, kw_only=True):
    cron: str  # five fields, UTC
    branch: str = DEFAULT_SCHEDULE_BRANCH


def cron_problem(cron: str) -> str | None:
    """Why `cron` is not a schedule ledgerci runs, if it is not."""
    if len(cron.split()) != 5:
        return f'expected five fields (minute hour day-of-month month day-of-week), got "{cron}"'
    if not croniter.is_valid(cron):
        return f'not a valid cron expression: "{cron}"'
    return None


def latest_time(cron: str, at: datetime) -> datetime:
    """The last nominal time of `cron` at or before `at` (a schedule time)."""
    minute = at.replace(second=0, microsecond=0)
    return croniter(cron, minute + timedelta(seconds=1)).get_prev(datetime)


def next_time(cron: str, at: datetime) -> datetime:
    """The first nominal time of `cron` after `at` (a schedule time)."""
    return croniter(cron, at).get_next(datetime)


class ScheduleClock:
    """Converts between wall time and schedule time (the same at speed 1)."""

    def __init__(self, speed: float = 1.0) -> None:
        self.speed = speed

    def schedule_time(self, wall: datetime) -> datetime:
        return CLOCK_ANCHOR + (wall - CLOCK_ANCHOR) * self.speed

    def wall_time(self, scheduled: datetime) -> datetime:
        return CLOCK_ANCHOR + (scheduled - CLOCK_ANCHOR) / self.speed


class ScheduleInForce(msgspec.Struct, frozen=True, kw_only=True):
    """A schedule as the read model holds it: declared by the newest planned push of its branch."""

    repository_id: str
    tenant_id: str
    branch: str
    cron: str
    commit: str  # the declaring push's commit: what each firing runs
    declared_at: datetime
