"""The dead-letter path: a dispatch that reached `max_deliver` leaves the runners' queue.

A work-queue stream keeps such a message forever, undeliverable, which would hide it. The
server announces it with an advisory; we copy the message to the DEAD stream (where an
operator can see and replay it) and delete it from the queue. The job itself is not lost:
its attempt is still released in the event store's view: the admission leader, finding its
message gone and the attempt unstarted after LEDGERCI_REOFFER_AFTER_SECONDS, offers it again
under a new message id, and its queue deadline fails it "not picked up" if nothing can run it.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from domain.messages import DEAD_SUBJECT_PREFIX, JOBS_STREAM

log = logging.getLogger(__name__)

MAX_DELIVERIES_ADVISORY = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{JOBS_STREAM}.*"


class MaxDeliveries(msgspec.Struct):
    stream: str
    consumer: str
    stream_seq: int
    deliveries: int


async def serve_dead_letters(nc: NATS, stop: asyncio.Event) -> None:
    js = nc.jetstream()

    async def on_advisory(message: Msg) -> None:
        advisory = msgspec.json.decode(message.data, type=MaxDeliveries)
        try:
            original = await js.get_msg(advisory.stream, advisory.stream_seq)
        except NotFoundError:
            return  # another replica moved it already
        headers = dict(original.headers or {})
        headers["Nats-Msg-Id"] = f"dead:{headers.get('Nats-Msg-Id', advisory.stream_seq)}"
        headers["Ledgerci-Deliveries"] = str(advisory.deliveries)
        await js.publish(f"{DEAD_SUBJECT_PREFIX}.jobs", original.data, headers=headers)
        await js.delete_msg(advisory.stream, advisory.stream_seq)
        log.error("dispatch %s reached %d deliveries on %s: moved to the dead-letter stream",
                  headers["Nats-Msg-Id"], advisory.deliveries, advisory.consumer)

    subscription = await nc.subscribe(MAX_DELIVERIES_ADVISORY, cb=on_advisory)
    try:
        await stop.wait()
    finally:
        await subscription.unsubscribe()
