"""Which runners are alive, and how many slots each pool has, from the runners' announcements
(runner/presence.py). The gateway (to say why a job waits) and the admission leader (to know
the free slots) both follow presence through here.

Presence is a core NATS message: news, not history. A follower that starts asks every runner
to announce at once, so its view is complete within milliseconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec
from nats.aio.client import Client as NATS

from domain.messages import PRESENCE_SECONDS, RUNNERS_PING_SUBJECT, RUNNERS_SUBJECT_PREFIX, RunnerPresence

# A runner unheard for three announcements is taken for gone (it was SIGKILLed, or cut off).
GONE_AFTER_SECONDS = 3 * PRESENCE_SECONDS


class RunnerRoster:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._runners: dict[tuple[str, str], tuple[int, float]] = {}  # (pool, runner) -> (slots, heard at)

    def record(self, presence: RunnerPresence) -> bool:
        """Note an announcement; True if the pool's capacity changed (a runner came, left or
        changed its slots), which is when a scheduler has new room to fill."""
        key = (presence.pool, presence.runner_id)
        before = self._runners.get(key)
        if presence.slots > 0:
            self._runners[key] = (presence.slots, self.clock())
        else:
            self._runners.pop(key, None)
        return before is None or before[0] != presence.slots or self._is_gone(before[1])

    def alive(self, pool: str) -> bool:
        return self.slots(pool) > 0

    def slots(self, pool: str) -> int:
        """The slots of the pool's live runners."""
        return sum(slots for (p, _), (slots, heard) in self._runners.items()
                   if p == pool and not self._is_gone(heard))

    def _is_gone(self, heard: float) -> bool:
        return heard < self.clock() - GONE_AFTER_SECONDS


async def follow_presence(nc: NATS, roster: RunnerRoster, on_change: Callable[[], None] | None = None) -> None:
    """Feed `roster` from now on (and call `on_change` when a pool's capacity changed)."""

    async def on_presence(message) -> None:
        try:
            presence = msgspec.json.decode(message.data, type=RunnerPresence)
        except msgspec.DecodeError:
            return
        if roster.record(presence) and on_change is not None:
            on_change()

    await nc.subscribe(f"{RUNNERS_SUBJECT_PREFIX}.>", cb=on_presence)
    await nc.publish(RUNNERS_PING_SUBJECT, b"")
