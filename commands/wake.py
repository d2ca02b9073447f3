"""The loop every follower of the store runs: work while there is work, then sleep until woken."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

RETRY_PAUSE_SECONDS = 0.5


async def run_woken(
    step: Callable[[], Awaitable[int]], wake: asyncio.Event, stop: asyncio.Event, idle_seconds: float,
    *, fatal: tuple[type[BaseException], ...] = (), batch: int | None = None,
) -> None:
    """Call `step` until it has nothing to do, then sleep until woken (or the backstop timer).

    `step` returns the work it did. Without `batch`, any work means it is called again, and
    it has caught up only when it finds nothing. With `batch` (the most one step handles of a
    store's events, read with LedgerStore.events_after, whose answer is short of its limit only
    when the store had no more), a step that did less has caught up already: whatever is
    committed after its read sets `wake`, which is cleared before the step. So it sleeps at
    once, where asking again would cost a thread hop and a query to find nothing (under load,
    that was every third step of every follower).

    A failing step (the store or NATS away) is logged and retried after a pause: the
    service outlives the outage and resumes from durable state. A `fatal` error ends the loop.
    """
    while not stop.is_set():
        wake.clear()  # before the step, so a commit during it is not missed
        try:
            done = await step()
            if done and (batch is None or done >= batch or wake.is_set()):
                continue
        except fatal:
            raise
        except Exception:
            log.warning("%s failed; retrying", getattr(step, "__qualname__", "step"), exc_info=True)
            await asyncio.sleep(RETRY_PAUSE_SECONDS)
            continue
        waiters = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stop.wait())]
        await asyncio.wait(waiters, timeout=idle_seconds, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
