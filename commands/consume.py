"""A durable JetStream pull consumer loop: wake on a message, handle it, ack after commit."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

log = logging.getLogger(__name__)

# A fetch is a long poll held by the server: it returns the moment a message arrives.
# This only bounds how long a stop request can go unnoticed.
LONG_POLL_SECONDS = 1.0
RETRY_DELAY_SECONDS = 1.0


async def consume(
    js: JetStreamContext,
    *,
    stream: str,
    durable: str,
    filter_subject: str,
    handle: Callable[[Msg], Awaitable[float | None]],
    stop: asyncio.Event,
    batch: int = 16,
    ack_wait_seconds: float = 60.0,
) -> None:
    """Handle every message of `filter_subject` once it is committed; stop when `stop` is set.

    `handle` returns None when done (the message is acked) or a delay in seconds after which
    it wants the message again (it is nak'ed with that delay).

    A handler that raises gets its message redelivered after a short delay: handlers act only
    through idempotent commands, so a redelivery changes nothing that already holds.
    """
    config = ConsumerConfig(
        durable_name=durable,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        filter_subject=filter_subject,
        ack_wait=ack_wait_seconds,
        max_ack_pending=1024,
    )
    subscription = await js.pull_subscribe(filter_subject, durable=durable, stream=stream, config=config)
    try:
        while not stop.is_set():
            try:
                messages = await subscription.fetch(batch, timeout=LONG_POLL_SECONDS)
            except TimeoutError:
                continue  # nothing arrived during the long poll
            except Exception:
                # NATS reconnecting, the stream being restored: the durable consumer keeps
                # our place, so wait a moment and ask again.
                log.warning("%s: fetch failed; retrying", durable, exc_info=True)
                await asyncio.sleep(RETRY_DELAY_SECONDS)
                continue
            for message in messages:
                try:
                    again_after = await handle(message)
                except Exception:
                    log.exception("%s: handling %s failed; it will be redelivered", durable, message.subject)
                    await message.nak(delay=RETRY_DELAY_SECONDS)
                    continue
                if again_after is not None:
                    await message.nak(delay=again_after)
                    continue
                await message.ack_sync()  # the double ack: only after the command committed
    finally:
        await subscription.unsubscribe()
