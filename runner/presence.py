"""Tells the rest of the system that this runner is alive, so a job whose pool has no live
runner can say why it waits. Presence is a core NATS message every PRESENCE_SECONDS: it is
news, not history, and nothing is stored."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec
from nats.aio.client import Client as NATS

from domain.messages import PRESENCE_SECONDS, RUNNERS_PING_SUBJECT, RunnerPresence, presence_subject

log = logging.getLogger(__name__)


async def announce_presence(nc: NATS, runner_id: str, pool: str, slots: int, stop: asyncio.Event) -> None:
    """Until `stop`: announce now, on every ping, and every PRESENCE_SECONDS; then say goodbye."""
    subject = presence_subject(pool, runner_id)

    async def announce(slots_now: int) -> None:
        with contextlib.suppress(Exception):  # NATS away: the next announcement says it again
            await nc.publish(subject, msgspec.json.encode(RunnerPresence(runner_id=runner_id, pool=pool,
                                                                         slots=slots_now)))

    async def on_ping(_msg) -> None:
        await announce(slots)

    ping = await nc.subscribe(RUNNERS_PING_SUBJECT, cb=on_ping)
    try:
        while not stop.is_set():
            await announce(slots)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=PRESENCE_SECONDS)
        await announce(0)
    finally:
        with contextlib.suppress(Exception):
            await ping.unsubscribe()
