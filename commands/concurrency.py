"""Concurrency groups, decided in the store (domain/concurrency.py says what a group is).

Every decision here returns the aggregates it changed, and the caller saves them together
with the run that asked, in one transaction at their expected versions: a run takes a group
and queues its first job in one save; a run that ends leaves its group, and the next waiting
run takes it and queues its first job, in the save that ends it. A conflict on any of them
(another planner, a runner's finish, a cancel) retries the whole decision.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple
from uuid import UUID

from eventsourcing.domain import Aggregate

from commands.ledger_store import LedgerStore
from domain.concurrency import MAX_WAITING, Concurrency
from domain.concurrency_group import ConcurrencyGroup
from domain.ids import concurrency_group_id
from domain.run import Run


class Joined(NamedTuple):
    """What joining a group decided: whether the run waits, what else changed, or why the
    run cannot join (it fails before starting)."""

    waits: bool
    changed: list[Aggregate]
    refusal: str | None = None


class ConcurrencyGroups:
    def __init__(self, store: LedgerStore) -> None:
        self.store = store

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
        if len(group.waiting) >= MAX_WAITING:
            return Joined(waits=False, changed=[], refusal=(
                f'concurrency group "{group_name}" already has {MAX_WAITING} runs waiting (queue: max)'))
        group.wait(run.id, at, actor)
        return Joined(waits=True, changed=changed)

    def settle(self, run: Run, at: datetime, actor: str) -> list[Aggregate]:
        """After a decision on `run`: if it ended, it leaves its group, and the oldest waiting
        run that has not ended takes the group and queues its first job. Runs outside any
        group (the common case) load nothing."""
        if run.concurrency_group is None or not run.status.is_final:
            return []
        group = self._group(run.tenant_id, run.concurrency_group)
        if group is None or not group.leave(run.id, at, actor):
            return []
        changed: list[Aggregate] = [group]
        while group.holder is None and group.waiting:
            next_id = group.waiting[0]
            waiting = self._run(next_id)
            if waiting is None or waiting.status.is_final:
                group.leave(next_id, at, actor)  # ended while waiting without leaving: cannot happen, but heal
                continue
            group.take(next_id, at, actor)
            waiting.take_group_turn(at, actor)
            changed.append(waiting)
        return changed

    def _group(self, tenant_id: str, name: str) -> ConcurrencyGroup | None:
        return self.store.load(concurrency_group_id(tenant_id, name), ConcurrencyGroup)

    def _run(self, run_id: str) -> Run | None:
        return self.store.load(UUID(run_id), Run)
