"""A concurrency group: at most one run of it at a time, per tenant.

A group is an aggregate of its own (one stream per tenant and group name). Which run holds
it and which wait are decided in that stream at an expected version, in the same save as the
runs that the decision changes (commands/concurrency.py): the run that takes the group
queues its first job in that save, and a run that ends leaves the group, and hands it to the
next waiting run, in the save that ends it. So no two runs of a group ever run at once, and
a group is never held by a run that has ended, whoever crashes between two decisions.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from eventsourcing.domain import Aggregate

from domain.ids import concurrency_group_id


class ConcurrencyGroup(Aggregate):
    """One tenant's group: the run that holds it, and the runs waiting, oldest first."""

    class GroupOpened(Aggregate.Created):
        tenant_id: str
        name: str

    def __init__(self, tenant_id: str, name: str) -> None:
        self.tenant_id = tenant_id
        self.name = name
        self.holder: str | None = None
        self.waiting: list[str] = []

    @classmethod
    def open(cls, tenant_id: str, name: str, at: datetime) -> ConcurrencyGroup:
        return cls._create(cls.GroupOpened, id=concurrency_group_id(tenant_id, name), timestamp=at,
                           tenant_id=tenant_id, name=name)

    def holds_or_waits(self, run_id: UUID | str) -> bool:
        return str(run_id) == self.holder or str(run_id) in self.waiting

    def take(self, run_id: UUID | str, at: datetime, actor: str) -> None:
        if self.holder is not None:
            raise ValueError(f"group {self.name} is held by run {self.holder}")
        self.trigger_event(self.GroupTaken, timestamp=at, run_id=str(run_id), actor=actor)

    def wait(self, run_id: UUID | str, at: datetime, actor: str) -> None:
        self.trigger_event(self.RunWaiting, timestamp=at, run_id=str(run_id), actor=actor)

    def leave(self, run_id: UUID | str, at: datetime, actor: str) -> bool:
        """The run has ended (or was dropped): it holds the group, or waits in it, no longer."""
        if not self.holds_or_waits(run_id):
            return False
        self.trigger_event(self.RunLeft, timestamp=at, run_id=str(run_id), actor=actor)
        return True

    class GroupTaken(Aggregate.Event):
        run_id: str
        actor: str

        def apply(self, group: ConcurrencyGroup) -> None:
            group.holder = self.run_id
            if self.run_id in group.waiting:
                group.waiting.remove(self.run_id)

    class RunWaiting(Aggregate.Event):
        run_id: str
        actor: str

        def apply(self, group: ConcurrencyGroup) -> None:
            group.waiting.append(self.run_id)

    class RunLeft(Aggregate.Event):
        run_id: str
        actor: str

        def apply(self, group: ConcurrencyGroup) -> None:
            if group.holder == self.run_id:
                group.holder = None
            elif self.run_id in group.waiting:
                group.waiting.remove(self.run_id)
