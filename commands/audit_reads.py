"""Reading the past from the event store itself, never from a read model: a run's history, the
run as it was at a version or a moment, the changes a live view missed, and the tamper-evident
chain recomputed (what an auditor asks for)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate

from commands.chain import Broken, StreamChecker
from commands.envelope import to_event_message
from commands.ledger_store import LedgerStore
from commands.principal import Principal
from commands.runs import RunCommands
from domain.errors import RunNotFoundError
from domain.messages import EventMessage
from domain.run import Run


class AuditReads:
    def __init__(self, store: LedgerStore, runs: RunCommands) -> None:
        self.store = store
        self.runs = runs

    def history(self, run_id: UUID) -> list[EventMessage]:
        """Every event of a run, in order (the audit trail)."""
        return [to_event_message(event, None) for event in self.store.stream(run_id)]

    def run_as_of(
        self, run_id: UUID | str, principal: Principal, *, version: int | None = None, at: datetime | None = None
    ) -> Run:
        """The run as it was at a version, or at a moment: replayed from its events, not read
        from a read model (what the system knew then, for an auditor)."""
        run = self.runs.get_run(run_id, principal)
        if at is not None:
            known = [e.originator_version for e in self.store.stream(run.id) if e.timestamp <= at]
            if not known:
                raise RunNotFoundError(f"run {run_id} did not exist at {at.isoformat()}")
            version = known[-1] if version is None else min(version, known[-1])
        if version is not None and not 1 <= version <= run.version:
            raise RunNotFoundError(f"run {run_id} has no version {version} (its versions are 1 to {run.version})")
        if version is None or version == run.version:
            return run
        past = self.store.load_at(run.id, version)
        assert isinstance(past, Run)
        return past

    def changes_after(self, run_id: UUID, version: int) -> Iterator[tuple[Any, Run]]:
        """(event, the run right after it) for each event after `version`, in order: what a
        live view that has seen `version` missed. The run object is the same one, advanced."""
        run = self.store.load_at(run_id, version) if version > 0 else None
        for event in self.store.stream(run_id, after=version):
            run = event.mutate(run)
            yield event, run

    def replay_events_only(self, aggregate_id: UUID, version: int | None = None) -> Aggregate | None:
        """The aggregate folded from its events alone, ignoring snapshots (to check them)."""
        aggregate = None
        for event in self.store.stream(aggregate_id, upto=version):
            aggregate = event.mutate(aggregate)
        return aggregate

    def verify_chain(self, aggregate_id: UUID | None = None, page_size: int = 5000) -> tuple[int, list[Broken]]:
        """Recompute the tamper-evident chain of one stream, or of every stream in the store.

        Returns how many events were checked and the first broken link of each broken stream.
        """
        checkers: dict[UUID, StreamChecker] = {}
        broken: list[Broken] = []
        checked = 0
        if aggregate_id is not None:
            pages: Iterator[list] = iter([self.store.stored_events(aggregate_id)])
        else:
            pages = self.store.notification_pages(page_size)
        for page in pages:
            for stored in page:
                checked += 1
                checker = checkers.get(stored.originator_id)
                if checker is None:
                    checker = checkers[stored.originator_id] = StreamChecker(self.store.audit_key, stored.originator_id)
                if found := checker.check(stored):
                    broken.append(found)
        return checked, broken
