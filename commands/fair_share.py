"""Who gets the next free runner slot: the admission leader's decision, with no I/O.

Fed in the order of the event store (queued, started, ended attempts; runs' tenants and
pools; tenants' weights and quotas), it answers which queued attempts to release into a pool's
free slots. Three rules, in this order:

1. Never past a tenant's quota: `occupied` (released + running attempts, all pools) stays at or
   under `max_concurrent_jobs`.
2. Least runner time per weight first. Each tenant has a virtual time: a release charges it the
   tenant's expected job duration / weight, and the attempt's end corrects the charge to the
   runner time it really took. Choosing the lowest virtual time gives each backlogged tenant
   runner time in proportion to its weight, whatever the number of slots.
   Why not only "lowest running jobs per weight": with 4 slots and weights 1, 2, 4 the running
   counts settle at (1, 1, 2) for ever, shares of 25/25/50% instead of 14/29/57%. That rule is
   kept as the tie-break, so equal tenants spread over free slots one each.
   A tenant that was idle starts at the lowest virtual time of the busy ones: idleness is not
   banked as credit to flood the runners with later.
3. Within a tenant, the highest priority tier first (`priority` of the workflow, capped by
   the tenant's `max_priority`), and oldest first within a tier. Priority never moves a job
   ahead of another tenant's: rules 1 and 2 choose the tenant, this rule its job.

A decision looks at the tenants with queued work in the pool, never at the queued jobs:
O(tenants), whether 10 or 10,000 jobs wait (bench/fairness.py measures it).
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

from domain.workflow import DEFAULT_PRIORITY, PRIORITIES, priority_rank

# Until a tenant's jobs have ended a few times, a release is charged this many seconds.
DEFAULT_EXPECTED_SECONDS = 1.0
# Weight of the newest duration in the expected-duration average.
EXPECTED_SMOOTHING = 0.2

AttemptKey = tuple[str, int]  # (job id, attempt)
DEFAULT_RANK = priority_rank(DEFAULT_PRIORITY)


class State(Enum):
    QUEUED = "queued"
    RELEASED = "released"  # offered to the pool's runners, not started yet
    RUNNING = "running"


@dataclass
class Attempt:
    run_id: str
    job_id: str
    attempt: int
    tenant_id: str
    pool: str
    state: State
    order: int  # the order it was queued in: oldest first within a tenant's tier
    rank: int = DEFAULT_RANK  # its priority tier's rank (domain.workflow.PRIORITIES): highest first
    released_at: float = 0.0  # monotonic, when last offered (for the re-offer)
    started_at: datetime | None = None
    charged: float = 0.0  # seconds charged to the tenant at release
    # The leader's latest offer of it: its number (1, 2, ...; 0 = none known) and its sequence
    # in the runners' work queue, to tell whether the message still waits there.
    offer: int = 0
    offer_seq: int = 0

    @property
    def key(self) -> AttemptKey:
        return self.job_id, self.attempt


class TieredQueue:
    """A tenant's queued attempts in one pool: one first-in-first-out queue per priority tier."""

    def __init__(self) -> None:
        self.tiers: list[deque[Attempt]] = [deque() for _ in PRIORITIES]

    def __len__(self) -> int:
        return sum(len(tier) for tier in self.tiers)

    def append(self, item: Attempt) -> None:
        self.tiers[item.rank].append(item)

    def head(self) -> Attempt:
        """The next to go: the oldest of the highest tier that has any (the queue is not empty)."""
        return next(tier[0] for tier in reversed(self.tiers) if tier)

    def remove(self, item: Attempt) -> None:
        tier = self.tiers[item.rank]
        if tier and tier[0] is item:
            tier.popleft()  # the usual case: the oldest leaves first
        else:
            with contextlib.suppress(ValueError):
                tier.remove(item)  # cancelled or expired while waiting: rare


@dataclass
class TenantShare:
    weight: int = 1
    max_concurrent_jobs: int = 1
    virtual: float = 0.0  # runner seconds / weight received so far (see rule 2)
    occupied: int = 0  # released + running attempts, every pool
    expected_seconds: float = DEFAULT_EXPECTED_SECONDS
    queues: dict[str, TieredQueue] = field(default_factory=dict)  # pool -> its queued attempts

    @property
    def has_queued(self) -> bool:
        return any(self.queues.values())

    @property
    def busy(self) -> bool:
        return self.occupied > 0 or self.has_queued


@dataclass(frozen=True)
class RunRoute:
    """Whose a run is and which pool each of its jobs asks for."""

    tenant_id: str
    pools: dict[str, str]  # job id -> pool
    ranks: dict[str, int] = field(default_factory=dict)  # job id -> priority rank, if not the default


class FairShare:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.tenants: dict[str, TenantShare] = {}
        self.routes: dict[str, RunRoute] = {}  # unfinished runs only
        self.attempts: dict[AttemptKey, Attempt] = {}  # queued, released or running
        # Released and not started, in the order of their last offer: the re-offer looks at the
        # front only, however many attempts wait.
        self._released: dict[AttemptKey, Attempt] = {}
        self._occupied_in_pool: dict[str, int] = {}
        self._queued_by_pool: dict[str, set[str]] = {}  # pool -> tenants with queued attempts there
        self._order = itertools.count()

    # ----- what the history says ----------------------------------------------------------------

    def knows_tenant(self, tenant_id: str) -> bool:
        return tenant_id in self.tenants

    def set_tenant(self, tenant_id: str, *, weight: int, max_concurrent_jobs: int) -> None:
        share = self.tenants.setdefault(tenant_id, TenantShare())
        share.weight = max(weight, 1)
        share.max_concurrent_jobs = max_concurrent_jobs

    def route(self, run_id: str, tenant_id: str, pools: dict[str, str], ranks: dict[str, int] | None = None) -> None:
        self.routes[run_id] = RunRoute(tenant_id, pools, ranks or {})

    def forget_run(self, run_id: str) -> None:
        self.routes.pop(run_id, None)

    def queued(self, run_id: str, job_id: str, attempt: int) -> Attempt:
        """An attempt is queued. The run's route must be known (`route`) and its tenant set."""
        if (job_id, attempt) in self.attempts:
            return self.attempts[(job_id, attempt)]
        route = self.routes[run_id]
        share = self.tenants[route.tenant_id]
        if not share.busy:
            # Back from idle: start level with the busy tenants, not below them.
            share.virtual = max(share.virtual, min((t.virtual for t in self.tenants.values() if t.busy),
                                                   default=share.virtual))
        item = Attempt(run_id, job_id, attempt, route.tenant_id, route.pools.get(job_id, "default"),
                       State.QUEUED, next(self._order), route.ranks.get(job_id, DEFAULT_RANK))
        self.attempts[item.key] = item
        share.queues.setdefault(item.pool, TieredQueue()).append(item)
        self._queued_by_pool.setdefault(item.pool, set()).add(item.tenant_id)
        return item

    def started(self, job_id: str, attempt: int, at: datetime) -> None:
        item = self.attempts.get((job_id, attempt))
        if item is None or item.state is State.RUNNING:
            return
        if item.state is State.QUEUED:
            # Started without our release (a former leader's, found late): it occupies a slot now.
            self._occupy(item)
        self._released.pop(item.key, None)
        item.state = State.RUNNING
        item.started_at = at

    def ended(self, job_id: str, attempt: int, at: datetime) -> None:
        """The attempt ended (or left the queue): whatever it held is free again."""
        item = self.attempts.pop((job_id, attempt), None)
        if item is None:
            return
        if item.state is State.QUEUED:
            self._unqueue(item)
            return
        self._released.pop(item.key, None)
        share = self.tenants[item.tenant_id]
        share.occupied -= 1
        self._occupied_in_pool[item.pool] -= 1
        took = max((at - item.started_at).total_seconds(), 0.0) if item.started_at else 0.0
        share.virtual += (took - item.charged) / share.weight
        if item.started_at is not None:
            share.expected_seconds += EXPECTED_SMOOTHING * (took - share.expected_seconds)

    def released_elsewhere(self, job_id: str, attempt: int) -> bool:
        """At takeover, once caught up with the store: an attempt still in the runners' queue was
        released by a former leader. False if it is not queued (started, or ended already)."""
        item = self.attempts.get((job_id, attempt))
        if item is None or item.state is not State.QUEUED:
            return False
        self._occupy(item)
        self._mark_released(item)
        return True

    # ----- the decision ---------------------------------------------------------------------------

    def occupied_in(self, pool: str) -> int:
        return self._occupied_in_pool.get(pool, 0)

    def pools_with_queued(self) -> list[str]:
        return [pool for pool, tenants in self._queued_by_pool.items() if tenants]

    def release(self, pool: str, free_slots: int) -> list[Attempt]:
        """Choose up to `free_slots` queued attempts of the pool and mark them released."""
        chosen: list[Attempt] = []
        while len(chosen) < free_slots:
            share_id = self._next_tenant(pool)
            if share_id is None:
                break
            item = self.tenants[share_id].queues[pool].head()
            self._occupy(item)
            self._mark_released(item)
            chosen.append(item)
        return chosen

    def _next_tenant(self, pool: str) -> str | None:
        best: tuple[float, float, int] | None = None
        best_id = None
        for tenant_id in self._queued_by_pool.get(pool, ()):
            share = self.tenants[tenant_id]
            if share.occupied >= share.max_concurrent_jobs:
                continue
            rank = (share.virtual, share.occupied / share.weight, share.queues[pool].head().order)
            if best is None or rank < best:
                best, best_id = rank, tenant_id
        return best_id

    def is_released(self, item: Attempt) -> bool:
        """Still released and not started (not ended, not replaced by a newer view)."""
        return self._released.get(item.key) is item

    def due_for_reoffer(self, older_than_seconds: float) -> list[Attempt]:
        """Released attempts no runner has started for a while; each is due again only after
        another `older_than_seconds`. Costs O(due), not O(released)."""
        now = self.clock()
        due: list[Attempt] = []
        for item in self._released.values():
            if item.released_at >= now - older_than_seconds:
                break  # the rest were offered later still
            due.append(item)
        for item in due:
            self._mark_released(item)  # to the back, offered now
        return due

    def queued_count(self) -> int:
        return sum(len(queue) for share in self.tenants.values() for queue in share.queues.values())

    # ----- bookkeeping ------------------------------------------------------------------------

    def _occupy(self, item: Attempt) -> None:
        self._unqueue(item)
        share = self.tenants[item.tenant_id]
        share.occupied += 1
        self._occupied_in_pool[item.pool] = self._occupied_in_pool.get(item.pool, 0) + 1
        item.charged = share.expected_seconds
        share.virtual += item.charged / share.weight

    def _mark_released(self, item: Attempt) -> None:
        item.state = State.RELEASED
        item.released_at = self.clock()
        self._released.pop(item.key, None)
        self._released[item.key] = item

    def _unqueue(self, item: Attempt) -> None:
        share = self.tenants[item.tenant_id]
        queue = share.queues.get(item.pool)
        if queue is None:
            return
        queue.remove(item)
        if not queue:
            self._queued_by_pool[item.pool].discard(item.tenant_id)

