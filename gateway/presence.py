"""Why a queued job waits, when it is not just its turn: no live runner of its pool, or its
tenant at its concurrent-job quota.

Each gateway keeps its own view of the runners (commands.presence), complete within
milliseconds of starting."""

from __future__ import annotations

from nats.aio.client import Client as NATS

from commands.app import LedgerApp
from commands.presence import RunnerRoster, follow_presence
from gateway.views import JobBody, RunBody
from projections.queries import RunQueries


class RunnerPresenceView:
    def __init__(self) -> None:
        self.roster = RunnerRoster()

    async def watch(self, nc: NATS) -> None:
        await follow_presence(nc, self.roster)

    def alive(self, pool: str) -> bool:
        return self.roster.alive(pool)

    def explain_waiting(self, jobs: list[JobBody]) -> None:
        for job in jobs:
            if job.status == "queued" and not self.alive(job.pool):
                job.waiting = f'no runner of pool "{job.pool}" is alive'


def explain_quota(run: RunBody, queries: RunQueries, ledger: LedgerApp) -> None:
    """A queued job not waiting for a runner may wait for its tenant's quota: say so."""
    waiting = [job for job in run.jobs if job.status == "queued" and job.waiting is None]
    if not waiting:
        return
    quota = ledger.registry.get_tenant(run.tenant_id).max_concurrent_jobs
    running = queries.running_jobs(run.tenant_id)
    if running >= quota:
        for job in waiting:
            job.waiting = f'tenant "{run.tenant_id}" has {running} jobs running, its max_concurrent_jobs quota'
