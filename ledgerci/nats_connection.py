"""The NATS connection every service opens, with the streams it needs made first (idempotently).

Apart from ledgerci/resources.py (the store) so that the runner, which never opens the database,
imports nothing of the store's."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats
from nats.aio.client import Client as NATS

from commands.streams import ensure_streams
from ledgerci.settings import Settings


async def connect_nats(settings: Settings, name: str) -> NATS:
    servers = [url.strip() for url in settings.nats_url.split(",") if url.strip()]
    return await nats.connect(
        servers=servers, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
        connect_timeout=5, allow_reconnect=True,
    )


@asynccontextmanager
async def nats_connection(settings: Settings, name: str) -> AsyncIterator[NATS]:
    nc = await connect_nats(settings, name)
    try:
        await ensure_streams(nc.jetstream(), settings.stream_replicas)
        yield nc
    finally:
        with contextlib.suppress(Exception):
            await nc.drain()
