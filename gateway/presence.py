"""Which runner pools have a live runner, as the runners announce it (runner/presence.py).

Each gateway keeps its own view from the announcements; a new gateway asks every runner to
announce at once, so its view is complete within milliseconds of starting."""

from __future__ import annotations

import time

import msgspec
from nats.aio.client import Client as NATS

from domain.messages import PRESENCE_SECONDS, RUNNERS_PING_SUBJECT, RUNNERS_SUBJECT_PREFIX, RunnerPresence
from projections.queries import JobView

# A runner unheard for three announcements is taken for gone (it was SIGKILLed, or cut off).
GONE_AFTER_SECONDS = 3 * PRESENCE_SECONDS


class RunnerPresenceView:
    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], float] = {}  # (pool, runner id) -> when last heard

    async def watch(self, nc: NATS) -> None:
        await nc.subscribe(f"{RUNNERS_SUBJECT_PREFIX}.>", cb=self._on_presence)
        await nc.publish(RUNNERS_PING_SUBJECT, b"")

    async def _on_presence(self, message) -> None:
        try:
            presence = msgspec.json.decode(message.data, type=RunnerPresence)
        except msgspec.DecodeError:
            return
        key = (presence.pool, presence.runner_id)
        if presence.slots > 0:
            self._seen[key] = time.monotonic()
        else:
            self._seen.pop(key, None)

    def alive(self, pool: str) -> bool:
        cutoff = time.monotonic() - GONE_AFTER_SECONDS
        return any(seen >= cutoff for (p, _), seen in self._seen.items() if p == pool)

    def explain_waiting(self, jobs: list[JobView]) -> None:
        """Say what a queued job waits for, when it is not just its turn."""
        for job in jobs:
            if job.status == "queued" and not self.alive(job.pool):
                job.waiting = f'no runner of pool "{job.pool}" is alive'
