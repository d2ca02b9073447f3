"""The relay: publishes every committed event to JetStream, once, in the store's order."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS

from commands.app import LedgerApp
from commands.relay import BATCH_SIZE, Relay
from commands.wake import run_woken
from ledgerci.resources import (
    waking_on_commits,
)
from ledgerci.settings import Settings
from projections.sql import Database


async def relay_service(settings: Settings, stop: asyncio.Event, ledger: LedgerApp, db: Database,
                        nc: NATS) -> None:
    wake = asyncio.Event()
    relay = Relay(ledger, nc.jetstream(), settings.stream_replicas)
    async with waking_on_commits(settings, ledger, stop, wake):
        await run_woken(relay.publish_pending, wake, stop, settings.idle_check_seconds, batch=BATCH_SIZE)
