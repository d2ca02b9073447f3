"""The reaper: deadlines that passed (lost runners, timeouts, jobs never picked up), expired
artifacts, and the dead-letter stream."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NATS

from commands.app import LedgerApp
from commands.artifact_expiry import ArtifactExpiry
from commands.dead_letter import serve_dead_letters
from commands.reaper import Reaper
from commands.wake import run_woken
from domain.artifacts import BUCKET as ARTIFACTS_BUCKET
from ledgerci.settings import Settings
from objectstore import bucket
from projections.artifacts import ArtifactQueries
from projections.queries import DeadlineQueries
from projections.sql import Database


async def reaper_service(settings: Settings, stop: asyncio.Event, ledger: LedgerApp, db: Database,
                         nc: NATS) -> None:
    reaper = Reaper(ledger, DeadlineQueries(db).overdue)
    expiry = ArtifactExpiry(ledger, ArtifactQueries(db).expiring, bucket(nc.jetstream(), ARTIFACTS_BUCKET))
    never = asyncio.Event()  # the reaper keeps time; nothing wakes it early

    async def sweep() -> int:
        return await reaper.sweep() + await expiry.sweep()

    async with asyncio.TaskGroup() as group:
        group.create_task(serve_dead_letters(nc, stop))
        await run_woken(_idle_after(sweep), never, stop, settings.reaper_interval_seconds)


def _idle_after(sweep: Callable[[], Awaitable[int]]) -> Callable[[], Awaitable[int]]:
    """A periodic pass: run it once per wake-up, then wait for the next tick."""

    async def once() -> int:
        await sweep()
        return 0

    once.__qualname__ = getattr(sweep, "__qualname__", "sweep")
    return once
