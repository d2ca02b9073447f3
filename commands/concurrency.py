"""Concurrency groups, decided in the store (domain/concurrency_group.py says what a group is).

Every decision here returns the aggregates it changed, and the caller saves them together
with the run that asked, in one transaction at their expected versions: a run takes a group
and queues its first job in one save; a run that ends leaves its group, and the next waiting
run takes it and queues its first job, in the save that ends it. A conflict on any of them
(another planner, a runner's finish, a cancel) retries the whole decision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import NamedTuple
from uuid import UUID

from eventsourcing.domain import Aggregate

from commands.ledger_store import LedgerStore
from domain.concurrency import MAX_WAITING, Concurrency
from domain.concurrency_group import ConcurrencyGroup
from domain.ids import concurrency_group_id
from domain.run import Run
from domain.run_events import RUN_ENDING_EVENTS


class Joined(NamedTuple):
    """What joining a group decided: whether the run waits, what else changed, or why the
    run cannot join (it fails before starting)."""

    waits: bool
    changed: list[Aggregate]
    refusal: str | None = None


class ConcurrencyGroups:
    def __init__(self, store: LedgerStore, max_waiting: int = MAX_WAITING) -> None:
        self.store = store
        self.max_waiting = max_waiting  # queue: max's cap (documented; a test lowers it)

    def join(self, run: Run, group_name: str, concurrency: Concurrency, at: datetime, actor: str) -> Joined:
        """A run about to be planned joins `group_name`: it takes the group if it is free,
        else waits; `cancel_in_progress` cancels the holder and drops the waiting runs, and
        `queue: single` drops the run waiting before it."""
        group = self._group(run.tenant_id, group_name) or ConcurrencyGroup.open(run.tenant_id, group_name, at)
        changed: list[Aggregate] = [group]
        if concurrency.cancel_in_progress or concurrency.queue == "single":
            for waiting_id in list(group.waiting):
                waiting = self._run(waiting_id)
                if waiting is not None and waiting.drop(run.id, at, actor):
                    changed.append(waiting)
                group.leave(waiting_id, at, actor)
        if concurrency.cancel_in_progress and group.holder is not None:
            holder = self._run(group.holder)
            if holder is not None and holder.supersede(run.id, at, actor):
                changed.append(holder)
            if holder is None or holder.status.is_final:
                group.leave(group.holder, at, actor)
        if group.holder is None:
            group.take(run.id, at, actor)
            return Joined(waits=False, changed=changed)
        if len(group.waiting) >= self.max_waiting:
            return Joined(waits=False, changed=[], refusal=(
                f'concurrency group "{group_name}" already has {self.max_waiting} runs waiting (queue: max)'))
        group.wait(run.id, at, actor)
        return Joined(waits=True, changed=changed)

    def settle(self, run: Run, at: datetime, actor: str, decided: Sequence[Aggregate] = ()) -> list[Aggregate]:
        """After a decision on `run`, what its groups need, read from the decision's own
        events (a decision that touches no group, the common case, loads nothing):

        - it ended, or the job that held a job-level group ended: it leaves the group, and the
          oldest waiting run that has not ended takes it and queues its next job;
        - its next job has a job-level group: it joins it, and the job is queued if it was free.

        `decided`: the other aggregates this decision changed (the group a run just took when
        it was planned): used as they are, never loaded a second time.
        """
        pending = run.pending_events
        left = [event.group for event in pending if isinstance(event, Run.RunLeftGroup)]
        if run.concurrency_group is not None and any(isinstance(event, RUN_ENDING_EVENTS) for event in pending):
            left.append(run.concurrency_group)
        joins = run.needs_group and not run.status.is_final
        if not left and not joins:
            return []
        known = {aggregate.id: aggregate for aggregate in decided}  # one object per aggregate in a save
        loaded: dict[str, ConcurrencyGroup] = {}
        changed: list[Aggregate] = []
        for name in left:
            group = self._group(run.tenant_id, name, known)
            if group is not None:
                loaded[name] = group
                changed += self._hand_on(run, group, at, actor, known)
        if joins:
            assert run.concurrency_group is not None
            name = run.concurrency_group
            group = loaded.get(name) or self._group(run.tenant_id, name, known)
            group = loaded[name] = group or ConcurrencyGroup.open(run.tenant_id, name, at)
            free = group.holder is None
            if free:
                group.take(run.id, at, actor)
            else:
                group.wait(run.id, at, actor)
            run.enter_job_group(waits=not free, at=at, actor=actor)
        return [*loaded.values(), *changed]

    def _hand_on(self, run: Run, group: ConcurrencyGroup, at: datetime, actor: str,
                 known: Mapping[UUID, Aggregate]) -> list[Aggregate]:
        """`run` leaves the group; the oldest waiting run that has not ended takes it. A run
        that ends the moment it takes the group (every job skipped by `when`) leaves it in the
        same save, and the next one takes it."""
        if not group.leave(run.id, at, actor):
            return []
        changed: list[Aggregate] = []
        while group.holder is None and group.waiting:
            next_id = group.waiting[0]
            waiting = self._run(next_id, known)
            if waiting is None or waiting.status.is_final:
                group.leave(next_id, at, actor)  # ended while waiting without leaving: cannot happen, but heal
                continue
            group.take(next_id, at, actor)
            waiting.take_group_turn(at, actor)
            changed.append(waiting)
            if waiting.status.is_final:
                group.leave(next_id, at, actor)
        return changed

    def _group(self, tenant_id: str, name: str,
               known: Mapping[UUID, Aggregate] | None = None) -> ConcurrencyGroup | None:
        group_id = concurrency_group_id(tenant_id, name)
        found = (known or {}).get(group_id)
        return found if isinstance(found, ConcurrencyGroup) else self.store.load(group_id, ConcurrencyGroup)

    def _run(self, run_id: str, known: Mapping[UUID, Aggregate] | None = None) -> Run | None:
        found = (known or {}).get(UUID(run_id))
        return found if isinstance(found, Run) else self.store.load(UUID(run_id), Run)
