"""The scheduler: the planner, the runners' command service, weighted fair admission (led by one
replica) and the schedules' firing."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS

from commands.admission import TAKEOVER_PING_CHECK_SECONDS, run_admission
from commands.app import LedgerApp
from commands.leadership import FileLeadership, Leadership, PostgresLeadership
from commands.runner_service import STALLED_AFTER_SECONDS, serve_runner_commands
from commands.schedule_firing import ScheduleFiring, run_schedules
from commands.scheduler import run_planner
from commands.store import is_postgres, sqlite_path
from domain.schedule import ScheduleClock
from gitcache import GitMirrors
from ledgerci.resources import (
    secret_book,
    waking_on_commits,
)
from ledgerci.settings import Settings
from projections.queries import AdmissionQueries
from projections.schedules import ScheduleQueries
from projections.sql import Database


async def scheduler_service(settings: Settings, stop: asyncio.Event, ledger: LedgerApp, db: Database,
                            nc: NATS) -> None:
    leadership = admission_leadership(settings)  # a setting it refuses stops the start here
    mirrors = GitMirrors(settings.data_dir / "mirrors")
    try:
        async with asyncio.TaskGroup() as group:
            # Replicas on PostgreSQL step aside while their store stalls; the embedded one never.
            stalled_after = STALLED_AFTER_SECONDS if is_postgres(settings.database_url) else None
            group.create_task(serve_runner_commands(ledger, nc, stop, secret_book(settings, ledger), stalled_after))
            group.create_task(run_planner(ledger, nc.jetstream(), mirrors, stop, settings.stream_replicas))
            group.create_task(admission_service(settings, stop, ledger, db, nc, leadership))
            group.create_task(run_schedules(ScheduleFiring(ledger.runs, ScheduleQueries(db).in_force,
                                                           ScheduleClock(settings.schedule_clock_speed), ledger.clock),
                                            stop))
    finally:
        mirrors.close()


def admission_leadership(settings: Settings) -> Leadership:
    """How this replica learns whether it leads admission: PostgreSQL's advisory lock, or a file
    lock beside the embedded SQLite store."""
    if not is_postgres(settings.database_url):
        return FileLeadership(sqlite_path(settings.database_url).with_suffix(".admission.lock"))
    # A leader pings every third of its session, but only between steps (at least every idle
    # check) or, in a takeover, every TAKEOVER_PING_CHECK_SECONDS: six of the longer leaves half
    # the session for a slow step before PostgreSQL would end a leader that is alive.
    least = 6 * max(settings.idle_check_seconds, TAKEOVER_PING_CHECK_SECONDS)
    if settings.leader_session_seconds < least:
        raise SystemExit(f"LEDGERCI_LEADER_SESSION_SECONDS is {settings.leader_session_seconds:g}: make it at least "
                         f"{least:g} (six times LEDGERCI_IDLE_CHECK_SECONDS, and no less than 6)")
    return PostgresLeadership(settings.database_url, session_seconds=settings.leader_session_seconds)


async def admission_service(settings: Settings, stop: asyncio.Event, ledger: LedgerApp, db: Database,
                            nc: NATS, leadership: Leadership) -> None:
    """Weighted fair admission, led by one scheduler replica (commands.admission)."""
    wake = asyncio.Event()
    async with waking_on_commits(settings, ledger, stop, wake):
        await run_admission(ledger, nc, AdmissionQueries(db).unfinished_jobs, leadership, wake, stop,
                            reoffer_after=settings.reoffer_after_seconds, idle_seconds=settings.idle_check_seconds,
                            stream_replicas=settings.stream_replicas)
