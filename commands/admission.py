"""Weighted fair admission: one leader decides which queued attempt goes to which free slot.

The leader (one scheduler replica, elected by `commands.leadership`) follows the event store,
keeps the queues and counts of `commands.fair_share`, and publishes an attempt to the runners'
work queue only when the attempt's pool has a free slot and its tenant comes first. JetStream
carries only what was admitted; the event store, not NATS, is the source of every count, so a
missed wake-up delays a decision and never corrupts one. commands/ADMISSION.md says why.

- Takeover: first fence the JOBS work queue (`commands.work_queue`), so a former leader can
  publish nothing more. Then the read model gives the unfinished jobs (queued, running, not yet
  queued) and the store position it reflects, in one snapshot, and the leader catches up with
  the store from there to its head. Only then does it read the work queue: what a former
  leader released and no runner has started yet is exactly what the queue still holds, and
  every such attempt is known by now. It is counted as released, so a failover never admits
  past a quota.
- Capacity: the pool's live runners' slots (their presence announcements) minus the attempts
  released or running there.
- A release publishes with `Nats-Msg-Id` = job:attempt (exactly-once publish). A released
  attempt that no runner started within `reoffer_after` is looked up in the queue: while its
  message waits there, nothing is done; if the message is gone (dead-lettered, or lost with a
  nats-server's data), the attempt is offered again under a new id.
- A leader whose steps keep failing gives the lead up and takes over afresh (here or on
  another replica), so a view gone wrong in memory cannot hold admission for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import datetime
from typing import Protocol
from uuid import UUID

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from commands.app import LedgerApp
from commands.dispatch import RunOrigin, job_dispatch
from commands.fair_share import Attempt, FairShare
from commands.leadership import STANDBY_RETRY_SECONDS, Leadership, LeadershipLostError
from commands.metrics import ADMISSION_DECISION, ADMISSION_RELEASED
from commands.presence import RunnerRoster, follow_presence
from commands.wake import RETRY_PAUSE_SECONDS, run_woken
from commands.work_queue import Offered, WorkQueue
from domain.job_events import ATTEMPT_ENDING_EVENTS
from domain.messages import JobDispatch, dispatch_msg_id
from domain.registry import Tenant
from domain.run import Run
from domain.run_events import RUN_ENDING_EVENTS
from domain.workflow import JobSpec, priority_rank

log = logging.getLogger(__name__)

BATCH_SIZE = 500
# Consecutive failed steps (each retried after a pause) before the leader gives the lead up.
MAX_FAILED_STEPS = 5
# How often a long takeover asks its lock connection whether it needs a ping.
TAKEOVER_PING_CHECK_SECONDS = 1.0


class UnfinishedJob(Protocol):
    """One job of an unfinished run, as the read model has it at takeover."""

    run_id: str
    job_id: str
    tenant_id: str
    pool: str
    status: str  # pending, queued or running
    attempt: int
    queued_at: datetime | None
    started_at: datetime | None


# The read model's snapshot at takeover: (the store position it reflects, its unfinished jobs).
TakeoverQuery = Callable[[], tuple[int, list[UnfinishedJob]]]


class StepsFailingError(LeadershipLostError):
    """The leader's steps kept failing: it gives the lead up and takes over afresh."""


class NothingPublishedError(Exception):
    """Every offer of a step failed (NATS away from this replica): the step failed."""


async def run_admission(app: LedgerApp, nc: NATS, takeover: TakeoverQuery, leadership: Leadership,
                        wake: asyncio.Event, stop: asyncio.Event, *, reoffer_after: float,
                        idle_seconds: float, stream_replicas: int = 1) -> None:
    """Stand by until this replica leads, then lead until stopped or the lead is lost.

    `wake` is set when the store has news (the caller listens for commits); a runner coming,
    going or changing its slots sets it too."""
    roster = RunnerRoster()
    await follow_presence(nc, roster, on_change=wake.set)
    while not stop.is_set():
        if not await leadership.acquire(stop):
            return
        leader = AdmissionLeader(app, nc.jetstream(), roster, takeover, leadership, reoffer_after=reoffer_after,
                                 stream_replicas=stream_replicas)
        pause = 0.0
        try:
            await leader.take_over()
            await run_woken(leader.step, wake, stop, idle_seconds, fatal=(LeadershipLostError,), batch=BATCH_SIZE)
        except LeadershipLostError as lost:
            log.warning("admission: %s; giving the lead up", lost)
            pause = STANDBY_RETRY_SECONDS  # another replica's turn first, and no tight loop
        except Exception:
            log.warning("admission takeover failed; trying again", exc_info=True)
            pause = RETRY_PAUSE_SECONDS
        finally:
            leadership.release()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), pause)


class AdmissionLeader:
    def __init__(self, app: LedgerApp, js: JetStreamContext, roster: RunnerRoster, takeover: TakeoverQuery,
                 leadership: Leadership, *, reoffer_after: float, stream_replicas: int = 1) -> None:
        self.app = app
        self.roster = roster
        self.takeover_query = takeover
        self.leadership = leadership
        self.reoffer_after = reoffer_after
        self.queue = WorkQueue(js, replicas=stream_replicas)
        self.share = FairShare()
        self.position = 0
        self.failed_steps = 0
        # What a dispatch message says, for runs whose start was followed: no store read per release.
        self.origins: dict[str, RunOrigin] = {}
        self.specs: dict[str, dict[str, JobSpec]] = {}

    # ----- takeover ------------------------------------------------------------------------

    async def take_over(self) -> None:
        async with self._keeping_the_lead():
            await self.queue.fence()  # from here on, a former leader publishes nothing
            position, jobs = await asyncio.to_thread(self.takeover_query)
            await asyncio.to_thread(self._load, jobs)
            self.position = position
            # The snapshot may lag the store: catch up first, so that every attempt a former
            # leader released is known when its message is found in the queue.
            while await asyncio.to_thread(self._catch_up) >= BATCH_SIZE:
                pass
            found = [offered for offered in await self.queue.offered()
                     if self.share.released_elsewhere(offered.job_id, offered.attempt)]
            for offered in found:
                self._record(self.share.attempts[(offered.job_id, offered.attempt)], offered)
        log.info("admission leader took over at position %d, caught up to %d: %d queued, %d released by a "
                 "former leader", position, self.position, self.share.queued_count(), len(found))

    @contextlib.asynccontextmanager
    async def _keeping_the_lead(self) -> AsyncIterator[None]:
        """Ping the lock connection while a long takeover keeps it otherwise idle (keep_alive
        pings only when its session needs it: asking every second costs nothing)."""
        async def ping() -> None:
            with contextlib.suppress(LeadershipLostError):  # the next confirm says so
                while True:
                    await asyncio.sleep(TAKEOVER_PING_CHECK_SECONDS)
                    await asyncio.to_thread(self.leadership.keep_alive)

        pinger = asyncio.create_task(ping())
        try:
            yield
        finally:
            pinger.cancel()

    def _load(self, jobs: list[UnfinishedJob]) -> None:
        pools: dict[str, dict[str, str]] = {}
        ranks: dict[str, dict[str, int]] = {}
        owners: dict[str, str] = {}
        for job in jobs:
            pools.setdefault(job.run_id, {})[job.job_id] = job.pool
            ranks.setdefault(job.run_id, {})[job.job_id] = priority_rank(job.priority)
            owners[job.run_id] = job.tenant_id
        for run_id, run_pools in pools.items():
            self._know_tenant(owners[run_id])
            self.share.route(run_id, owners[run_id], run_pools, ranks[run_id])
        # Oldest first, as they were queued (a job not queued yet only gives its run's route).
        for job in sorted(jobs, key=lambda j: j.queued_at.timestamp() if j.queued_at else 0.0):
            if job.status == "queued":
                self.share.queued(job.run_id, job.job_id, job.attempt)
            elif job.status == "running":
                self.share.queued(job.run_id, job.job_id, job.attempt)
                self.share.started(job.job_id, job.attempt, job.started_at or self.app.clock())

    # ----- following the store --------------------------------------------------------------

    async def step(self) -> int:
        """Catch up with the store; once caught up, fill the free slots. Returns work done.

        Raises LeadershipLostError when the lead is lost, or given up after failing steps."""
        try:
            done = await self._step()
        except LeadershipLostError:
            raise
        except Exception as failure:
            self.failed_steps += 1
            if self.failed_steps >= MAX_FAILED_STEPS:
                raise StepsFailingError(f"{self.failed_steps} steps failed in a row, the last with: "
                                        f"{failure!r}") from failure
            raise
        self.failed_steps = 0
        return done

    async def _step(self) -> int:
        applied = await asyncio.to_thread(self._catch_up)
        if applied >= BATCH_SIZE:
            return applied  # more to read before deciding on a stale view
        released = await self._release()
        await self._reoffer()
        return applied + released

    def _catch_up(self) -> int:
        self.leadership.keep_alive()
        events = list(self.app.store.events_after(self.position, BATCH_SIZE))
        for position, event in events:
            self._apply(event)
            self.position = position
        return len(events)

    def _apply(self, event: object) -> None:
        if isinstance(event, Run.RunRequested):
            run_id = str(event.originator_id)
            self._know_tenant(event.tenant_id)
            self.share.route(run_id, event.tenant_id, {})
            self.origins[run_id] = RunOrigin(run_id, event.tenant_id, event.repository_id, event.clone_url,
                                             event.commit, event.ref)
        elif isinstance(event, Run.RunPlanned):
            run_id = str(event.originator_id)
            route = self.share.routes.get(run_id)
            specs = {job.id: job.spec for job in event.planned_jobs()}
            if route is None:
                self._route_from_store(UUID(run_id))
            else:
                self.share.route(run_id, route.tenant_id, *_places(specs))
            if run_id in self.origins:
                self.specs[run_id] = specs
        elif isinstance(event, Run.JobQueued):
            run_id = str(event.originator_id)
            if run_id not in self.share.routes:
                self._route_from_store(UUID(run_id))
            self.share.queued(run_id, event.job_id, event.attempt)
        elif isinstance(event, Run.JobStarted):
            self.share.started(event.job_id, event.attempt, event.timestamp)
        elif isinstance(event, ATTEMPT_ENDING_EVENTS):
            self.share.ended(event.job_id, event.attempt, event.timestamp)
        elif isinstance(event, RUN_ENDING_EVENTS):
            run_id = str(event.originator_id)
            self.share.forget_run(run_id)
            self.origins.pop(run_id, None)
            self.specs.pop(run_id, None)
        elif isinstance(event, Tenant.TenantUpdated) and {"weight", "max_concurrent_jobs"} & event.changes.keys():
            tenant = self.app.store.load(event.originator_id, Tenant)
            # A tenant not known yet is read when its first run comes.
            if tenant is not None and self.share.knows_tenant(tenant.tenant_id):
                self._know_tenant(tenant.tenant_id, reload=True)

    def _route_from_store(self, run_id: UUID) -> None:
        """A run whose start we did not follow (requested before the takeover's snapshot)."""
        run = self.app.runs.load_run(run_id)
        self._know_tenant(run.tenant_id)
        self.share.route(str(run.id), run.tenant_id, *_places({str(job.id): job.spec for job in run.jobs}))

    def _know_tenant(self, tenant_id: str, *, reload: bool = False) -> None:
        if reload or not self.share.knows_tenant(tenant_id):
            tenant = self.app.registry.get_tenant(tenant_id)
            self.share.set_tenant(tenant_id, weight=tenant.weight, max_concurrent_jobs=tenant.max_concurrent_jobs)

    # ----- deciding --------------------------------------------------------------------------

    async def _release(self) -> int:
        chosen: list[Attempt] = []
        with ADMISSION_DECISION.time():
            for pool in self.share.pools_with_queued():
                free = self.roster.slots(pool) - self.share.occupied_in(pool)
                if free > 0:
                    chosen += self.share.release(pool, free)
        if chosen:
            await self._offer(chosen)
            ADMISSION_RELEASED.inc(len(chosen))
        return len(chosen)

    async def _reoffer(self) -> None:
        """Offer again what was released a while ago, not started, and is no longer in the queue."""
        gone = [item for item in self.share.due_for_reoffer(self.reoffer_after) if not await self._still_offered(item)]
        if gone:
            # Its message may have left because it started and ended just now: look again.
            await asyncio.to_thread(self._catch_up)
            gone = [item for item in gone if self.share.is_released(item)]
        if gone:
            log.warning("offering again %d released attempts whose messages left the work queue unstarted",
                        len(gone))
            await self._offer(gone)

    async def _still_offered(self, item: Attempt) -> bool:
        return item.offer > 0 and await self.queue.holds(item.offer_seq,
                                                         dispatch_msg_id(item.job_id, item.attempt, item.offer))

    @staticmethod
    def _record(item: Attempt, offered: Offered) -> None:
        item.offer, item.offer_seq = offered.offer, offered.seq

    async def _offer(self, attempts: Iterable[Attempt]) -> None:
        dispatches = await asyncio.to_thread(self._confirmed_dispatches, list(attempts))
        # One after another: each publish expects the sequence the previous one left.
        failed = 0
        for item, dispatch in dispatches:
            try:
                self._record(item, await self.queue.offer(dispatch, item.offer + 1))
            except LeadershipLostError:
                raise
            except Exception as failure:
                # Still counted as released: the re-offer sends it again once NATS answers.
                log.warning("offering %s:%d failed: %s", dispatch.job_id, dispatch.attempt, failure)
                failed += 1
        if dispatches and failed == len(dispatches):
            raise NothingPublishedError(f"none of {failed} offers could be published")

    def _confirmed_dispatches(self, attempts: list[Attempt]) -> list[tuple[Attempt, JobDispatch]]:
        dispatches = self._dispatches(attempts)
        # Confirm the lead after the (possibly slow) store reads, right before publishing (in
        # the same thread hop). The fenced work queue refuses a former leader's publish even if
        # this check passes late.
        self.leadership.confirm()
        return dispatches

    def _dispatches(self, attempts: list[Attempt]) -> list[tuple[Attempt, JobDispatch]]:
        found = []
        for item in attempts:
            spec = self.specs.get(item.run_id, {}).get(item.job_id)
            if spec is not None:
                found.append((item, job_dispatch(self.origins[item.run_id], item.job_id, item.attempt, spec)))
                continue
            # A run planned before the takeover: read it. None: no longer queued (cancelled,
            # expired), and the events saying so are on their way.
            dispatch = self.app.runs.dispatch_for(UUID(item.run_id), item.job_id, item.attempt)
            if dispatch is not None:
                found.append((item, dispatch))
        return found


def _places(specs: dict[str, JobSpec]) -> tuple[dict[str, str], dict[str, int]]:
    """Where each job of a run queues: its pool, and its priority tier's rank."""
    return ({job_id: spec.pool for job_id, spec in specs.items()},
            {job_id: priority_rank(spec.priority) for job_id, spec in specs.items()})
