"""The loop every follower of the store runs: work while there is work, then sleep until woken."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

RETRY_PAUSE_SECONDS = 0.5


async def run_woken(
    step: Callable[[], Awaitable[int]], wake: asyncio.Event, stop: asyncio.Event, idle_seconds: float,
    *, fatal: tuple[type[BaseException], ...] = (),
) -> None:
    """Call `step` until it has nothing to do, then sleep until woken (or the backstop timer).

    A failing step (the store or NATS away) is logged and retried after a pause: the
    service outlives the outage and resumes from durable state. A `fatal` error ends the loop.
    """
    while not stop.is_set():
        wake.clear()  # before the step, so a commit during it is not missed
        try:
            if await step():
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
