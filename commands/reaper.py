"""The reaper: the clocks of ARCHITECTURE.md, enforced. Stateless; any number may run.

Each pass asks the read model which attempts are past a deadline (lease, timeout, queue) and
records that through the run aggregate, which checks the deadline again against the events:
a stale read, or a second reaper doing the same pass, finds nothing to do and appends nothing.

It also reconciles the runners' queue with the event store: an attempt queued for a while is
offered again (same `Nats-Msg-Id`, so the stream keeps one copy while it remembers the id;
after a nats-server lost its data the copy is what brings the job back).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol
from uuid import UUID

from nats.js import JetStreamContext

from commands.app import LedgerApp
from commands.metrics import DEADLINES_PASSED
from commands.scheduler import publish_dispatch

log = logging.getLogger(__name__)

LEASE, TIMEOUT, QUEUE, REOFFER = "lease", "timeout", "queue", "reoffer"


class Overdue(Protocol):
    run_id: str
    job_id: str
    attempt: int
    deadline: str  # which clock ran out: lease, timeout, queue, or reoffer


OverdueQuery = Callable[[datetime, datetime], list[Overdue]]


class Reaper:
    def __init__(self, app: LedgerApp, js: JetStreamContext, overdue: OverdueQuery, *,
                 reoffer_after: timedelta, name: str = "reaper") -> None:
        self.app = app
        self.js = js
        self.overdue = overdue
        self.reoffer_after = reoffer_after
        self.actor = name
        self._next_reoffer: datetime | None = None

    async def sweep(self) -> int:
        """One pass; returns how many deadlines it acted on."""
        now = self.app.clock()
        # Re-offering is a reconciliation, not a deadline: once per `reoffer_after` is enough.
        reoffer = self._next_reoffer is None or now >= self._next_reoffer
        if reoffer:
            self._next_reoffer = now + self.reoffer_after
        acted = 0
        for item in await asyncio.to_thread(self.overdue, now, now - self.reoffer_after):
            if item.deadline == REOFFER and not reoffer:
                continue
            try:
                acted += await self._act(item)
            except Exception:
                log.exception("reaper: %s deadline of %s:%d", item.deadline, item.job_id, item.attempt)
        return acted

    async def _act(self, item: Overdue) -> int:
        run_id = UUID(item.run_id)
        if item.deadline == REOFFER:
            ready = await asyncio.to_thread(self.app.dispatch_for, run_id, item.job_id, item.attempt)
            if ready is not None:
                await publish_dispatch(self.js, ready)
            return 0
        command = {LEASE: self.app.mark_lost, TIMEOUT: self.app.enforce_timeout,
                   QUEUE: self.app.expire_queued}[item.deadline]
        before = await asyncio.to_thread(self.app.get_run_version, run_id)
        run = await asyncio.to_thread(command, run_id, item.job_id, item.attempt, actor=self.actor)
        if run.version == before:
            return 0
        log.info("reaper: %s passed for %s attempt %d", item.deadline, item.job_id, item.attempt)
        DEADLINES_PASSED.labels(item.deadline).inc()
        ready = self.app.ready_dispatch(run)
        if ready is not None:  # a retry was queued: offer it at once
            await publish_dispatch(self.js, ready)
        return 1
