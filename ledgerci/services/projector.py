"""The projector: the read models, the log archive, and the commit statuses and outgoing webhooks
sent from the outboxes the read models fill."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS

from commands.app import LedgerApp
from commands.outbound import Outbound
from commands.status_sender import StatusSender
from commands.subscriptions import Subscriptions
from commands.wake import run_woken
from commands.webhook_sender import WebhookSender
from gateway.logs import read_live_log
from ledgerci.resources import (
    secret_book,
    waking_on_commits,
)
from ledgerci.settings import Settings
from projections.log_archive import PAGE as ARCHIVE_PAGE
from projections.log_archive import LogArchive, LogArchiver
from projections.runs import Outbox, RunsProjection
from projections.sql import Database
from projections.status_outbox import StatusOutbox
from projections.webhook_outbox import WebhookOutbox

PROJECTION_BATCH = 500  # events applied in one transaction


async def projector_service(settings: Settings, stop: asyncio.Event, ledger: LedgerApp, db: Database,
                            nc: NATS) -> None:
    wake = asyncio.Event()
    projection = RunsProjection(db)

    # Commit statuses and outgoing webhooks go out from the outboxes the projection fills
    # (projections/status_outbox.py, projections/webhook_outbox.py).
    book = secret_book(settings, ledger)
    outbound = Outbound(allow_private=settings.outbound_allow_private)
    statuses = StatusSender(StatusOutbox(db), book, outbound, ledger.clock, settings.public_url,
                            retry_seconds=settings.status_retry_seconds)
    webhooks = WebhookSender(WebhookOutbox(db), Subscriptions(ledger, book), outbound, ledger.clock,
                             settings.public_url, retry_seconds=settings.webhook_retry_seconds)
    status_wake, webhook_wake = asyncio.Event(), asyncio.Event()
    sender_wakes = {Outbox.STATUSES: status_wake, Outbox.WEBHOOKS: webhook_wake}

    async def step() -> int:
        applied = await asyncio.to_thread(projection.catch_up,
                                          lambda position: ledger.store.events_after(position, PROJECTION_BATCH))
        # A sender is woken only when its outbox got rows: most batches give a webhook none,
        # and on SQLite most give a status none. A retry's time comes with the backstop timer.
        for outbox in projection.take_filled_outboxes():
            sender_wakes[outbox].set()
        return applied

    # The log archiver shares the process, and with it the events read (commands.recent_events).
    js = nc.jetstream()
    archiver = LogArchiver(LogArchive(db), ledger.store.events_after,
                           lambda job_id, attempt: read_live_log(js, job_id, attempt))
    archive_wake = asyncio.Event()
    try:
        async with waking_on_commits(settings, ledger, stop, wake, archive_wake), asyncio.TaskGroup() as group:
            group.create_task(run_woken(step, wake, stop, settings.idle_check_seconds, batch=PROJECTION_BATCH))
            group.create_task(run_woken(archiver.archive_pending, archive_wake, stop, settings.idle_check_seconds,
                                        batch=ARCHIVE_PAGE))
            group.create_task(run_woken(statuses.send_due, status_wake, stop, settings.idle_check_seconds))
            group.create_task(run_woken(webhooks.send_due, webhook_wake, stop, settings.idle_check_seconds))
    finally:
        await outbound.close()
