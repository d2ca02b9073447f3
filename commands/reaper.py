"""The reaper: the clocks of ARCHITECTURE.md, enforced. Stateless; any number may run.

Each pass asks the read model which attempts are past a deadline (lease, timeout, queue) and
records that through the run aggregate, which checks the deadline again against the events:
a stale read, or a second reaper doing the same pass, finds nothing to do and appends nothing.

What an ended attempt makes ready (a retry, the next job) is queued by the same command and
admitted to a runner by the admission leader (commands.admission), like any queued job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Protocol
from uuid import UUID

from commands.app import LedgerApp
from commands.metrics import DEADLINES_PASSED

log = logging.getLogger(__name__)

LEASE, TIMEOUT, QUEUE = "lease", "timeout", "queue"


class Overdue(Protocol):
    run_id: str
    job_id: str
    attempt: int
    deadline: str  # which clock ran out: lease, timeout or queue


OverdueQuery = Callable[[datetime], list[Overdue]]


class Reaper:
    def __init__(self, app: LedgerApp, overdue: OverdueQuery, *, name: str = "reaper") -> None:
        self.app = app
        self.overdue = overdue
        self.actor = name

    async def sweep(self) -> int:
        """One pass; returns how many deadlines it acted on."""
        acted = 0
        for item in await asyncio.to_thread(self.overdue, self.app.clock()):
            try:
                acted += await self._act(item)
            except Exception:
                log.exception("reaper: %s deadline of %s:%d", item.deadline, item.job_id, item.attempt)
        return acted

    async def _act(self, item: Overdue) -> int:
        run_id = UUID(item.run_id)
        command = {LEASE: self.app.runs.mark_lost, TIMEOUT: self.app.runs.enforce_timeout,
                   QUEUE: self.app.runs.expire_queued}[item.deadline]
        before = await asyncio.to_thread(self.app.runs.get_run_version, run_id)
        run = await asyncio.to_thread(command, run_id, item.job_id, item.attempt, actor=self.actor)
        if run.version == before:
            return 0
        log.info("reaper: %s passed for %s attempt %d", item.deadline, item.job_id, item.attempt)
        DEADLINES_PASSED.labels(item.deadline).inc()
        return 1
