"""A durable JetStream pull consumer loop: wake on a message, handle it, ack after commit."""

from __future__ import annotations

import asyncio
import contextlib
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
    ack_wait_seconds: float = 10.0,
    ensure_streams: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Handle every message of `filter_subject` once it is committed; stop when `stop` is set.

    `handle` returns None when done (the message is acked) or a delay in seconds after which
    it wants the message again (it is nak'ed with that delay). A handler that raises gets its
    message redelivered after a short delay: handlers act only through idempotent commands,
    so a redelivery changes nothing that already holds.

    When fetching fails (NATS restarting, or it lost the stream or the consumer), the
    subscription is made anew, streams first: the durable consumer keeps our place when it
    survived, and when it did not, starting over is safe for the same reason.
    """
    config = ConsumerConfig(
        durable_name=durable,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        filter_subject=filter_subject,
        ack_wait=ack_wait_seconds,
        max_ack_pending=1024,
    )
    while not stop.is_set():
        try:
            if ensure_streams is not None:
                await ensure_streams()
            subscription = await js.pull_subscribe(filter_subject, durable=durable, stream=stream, config=config)
        except Exception:
            log.warning("%s: cannot subscribe yet; retrying", durable, exc_info=True)
            await asyncio.sleep(RETRY_DELAY_SECONDS)
            continue
        try:
            await _drain(subscription, durable, handle, stop, batch, ack_wait_seconds)
        except Exception:
            log.warning("%s: fetch failed; subscribing again", durable, exc_info=True)
            await asyncio.sleep(RETRY_DELAY_SECONDS)
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()


async def _keep_in_progress(message: Msg, ack_wait_seconds: float) -> None:
    while True:
        await asyncio.sleep(ack_wait_seconds / 3)
        with contextlib.suppress(Exception):
            await message.in_progress()


async def _drain(subscription, durable: str, handle: Callable[[Msg], Awaitable[float | None]],
                 stop: asyncio.Event, batch: int, ack_wait_seconds: float) -> None:
    while not stop.is_set():
        try:
            messages = await subscription.fetch(batch, timeout=LONG_POLL_SECONDS)
        except TimeoutError:
            continue  # nothing arrived during the long poll
        # The messages of a batch are independent (the planner's: one per run), so they are
        # handled side by side; each is acked once its own command committed.
        await asyncio.gather(*(_handle_one(message, durable, handle, ack_wait_seconds) for message in messages))


async def _handle_one(message: Msg, durable: str, handle: Callable[[Msg], Awaitable[float | None]],
                      ack_wait_seconds: float) -> None:
    # Short ack_wait, kept alive while we work: a message held by a process that died is
    # redelivered within seconds, however long handling may take.
    keep_alive = asyncio.create_task(_keep_in_progress(message, ack_wait_seconds))
    try:
        again_after = await handle(message)
    except Exception:
        log.exception("%s: handling %s failed; it will be redelivered", durable, message.subject)
        await message.nak(delay=RETRY_DELAY_SECONDS)
        return
    finally:
        keep_alive.cancel()
    if again_after is not None:
        await message.nak(delay=again_after)
        return
    await message.ack_sync()  # the double ack: only after the command committed
