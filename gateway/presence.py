"""Why a queued job waits, when it is not just its turn: no live runner of its pool.

Each gateway keeps its own view of the runners (commands.presence), complete within
milliseconds of starting."""

from __future__ import annotations

from nats.aio.client import Client as NATS

from commands.presence import RunnerRoster, follow_presence
from projections.queries import JobView


class RunnerPresenceView:
    def __init__(self) -> None:
        self.roster = RunnerRoster()

    async def watch(self, nc: NATS) -> None:
        await follow_presence(nc, self.roster)

    def alive(self, pool: str) -> bool:
        return self.roster.alive(pool)

    def explain_waiting(self, jobs: list[JobView]) -> None:
        for job in jobs:
            if job.status == "queued" and not self.alive(job.pool):
                job.waiting = f'no runner of pool "{job.pool}" is alive'
