"""The event store as the rest of `commands/` uses it: eventsourcing's application, with the
tamper-evident chain and snapshots, one decide-and-retry path for every command, and the
global feed that followers (relay, projector, rebuilds, audit) read.

Nothing outside `commands/` touches eventsourcing's repository, recorder or save: the
registry, the run commands and the audit reads (`commands/registry.py`, `commands/runs.py`,
`commands/audit_reads.py`) go through this class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    Mapper,
    Notification,
    OperationalError,
    StoredEvent,
)

from commands.chain import ChainedMapper
from commands.recent_events import RecentEvents
from commands.snapshots import SNAPSHOT_INTERVALS, SnapshottingRepository, SnapshotTranscoder
from commands.store import APP_NAME
from domain.errors import AlreadyExistsError, DomainError

A = TypeVar("A", bound=Aggregate)

# Conflicts only happen between a handful of writers of one aggregate; more than this means a bug.
MAX_DECISION_ATTEMPTS = 20


class ConcurrencyError(DomainError):
    """A command kept losing the race for its aggregate."""


class LedgerStore(Application):
    name = APP_NAME
    # A snapshot every so many events of a long run, so loading it stays fast (commands.snapshots).
    snapshotting_intervals = SNAPSHOT_INTERVALS

    def __init__(self, env: Mapping[str, str] | None = None, audit_key: bytes = b""):
        self.audit_key = audit_key  # read by construct_mapper, during Application.__init__
        super().__init__(env=dict(env) if env else None)
        self._save_listeners: list[Callable[[], None]] = []
        self._recent = RecentEvents(self._read_events_after)

    # ----- eventsourcing's hooks -------------------------------------------------------------

    def construct_mapper(self) -> Mapper:
        """Events are stored with a tamper-evident chain link (commands.chain)."""
        return ChainedMapper(self.construct_transcoder(), self.audit_key, self.stored_event)

    def construct_repository(self) -> SnapshottingRepository:
        assert isinstance(self.mapper, ChainedMapper)
        return SnapshottingRepository(event_store=self.events, snapshot_store=self.snapshots,
                                      known_version=self.mapper.known_version)

    def construct_snapshot_store(self):  # type: ignore[no-untyped-def]
        # Snapshots are derived, not evidence: they are stored without a chain link.
        store = super().construct_snapshot_store()
        store.mapper = Mapper(SnapshotTranscoder())
        return store

    def _record(self, processing_event):  # type: ignore[no-untyped-def]
        assert isinstance(self.mapper, ChainedMapper)
        self.mapper.begin_save()
        committed = False
        try:
            recordings = super()._record(processing_event)
            committed = True
            return recordings
        finally:
            self.mapper.end_save(committed)

    def _notify(self, recordings: list) -> None:  # type: ignore[override]
        super()._notify(recordings)
        for listener in self._save_listeners:
            listener()

    def on_saved(self, listener: Callable[[], None]) -> None:
        """Call `listener` after every save in this process (wakes the relay on SQLite)."""
        self._save_listeners.append(listener)

    # ----- loading and deciding --------------------------------------------------------------

    def load(self, aggregate_id: UUID, kind: type[A]) -> A | None:
        try:
            aggregate = self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None
        return aggregate if isinstance(aggregate, kind) else None

    def load_at(self, aggregate_id: UUID, version: int) -> Aggregate:
        """The aggregate as it was at `version` (from the nearest snapshot, then its events)."""
        return self.repository.get(aggregate_id, version=version)

    def create(self, aggregate: Aggregate, what: str) -> None:
        try:
            self.save(aggregate)
        except IntegrityError:
            raise AlreadyExistsError(f"{what} already exists") from None

    def decide(self, load: Callable[[], A], decide: Callable[[A], bool], what: str) -> A:
        """Load, let `decide` trigger events, save at the expected version; on a conflict
        reload and decide again.

        `load` raises when the aggregate is not there (or not the caller's)."""
        loaded: list[A] = []

        def decision() -> list[Aggregate]:
            loaded[:] = [load()]
            return loaded if decide(loaded[0]) else []

        self.decide_together(decision, what)
        return loaded[0]

    def decide_together(self, decision: Callable[[], Sequence[Aggregate]], what: str) -> None:
        """The one optimistic-retry path of every command: `decision` loads what it needs,
        triggers events and returns the aggregates it changed (none: nothing to do), which
        are saved in one transaction, each at its expected version. On a conflict with any
        of them, everything is loaded and decided again.

        The same reload covers a write whose outcome is unknown (the connection dropped
        around COMMIT): if it did apply, deciding again finds the effect already there and
        appends nothing, so our own write is never reported as a conflict.
        """
        for _ in range(MAX_DECISION_ATTEMPTS):
            changed = decision()
            if not changed:
                return
            try:
                self.save(*changed)
            except IntegrityError:
                continue  # another writer appended first (or we did): decide again
            except (OperationalError, InterfaceError):
                self.wait_for_store()
                continue
            return
        raise ConcurrencyError(f"{what}: too many concurrent writers")

    def save_together(self, *aggregates: Aggregate) -> None:
        """Save aggregates in one transaction, each at its expected version (a new one at 1):
        IntegrityError, and nothing saved, if any of them lost a race or already exists."""
        self.save(*aggregates)

    def wait_for_store(self) -> None:
        """After an unknown outcome, reloading needs the store back; the caller retries."""
        for _ in range(50):
            try:
                self.recorder.max_notification_id()
                return
            except (OperationalError, InterfaceError):
                self.closing.wait(0.2)

    # ----- one stream's events -----------------------------------------------------------------

    def stream(self, aggregate_id: UUID, *, after: int | None = None, upto: int | None = None) -> Iterator[object]:
        """The domain events of one aggregate, in order (after version `after`, up to `upto`)."""
        return iter(self.events.get(aggregate_id, gt=after, lte=upto))

    def stored_event(self, aggregate_id: UUID, version: int) -> StoredEvent | None:
        """One stored event, as it is in the store (chain link included)."""
        found = self.recorder.select_events(aggregate_id, gt=version - 1, lte=version)
        return found[0] if found else None

    def stored_events(self, aggregate_id: UUID) -> list[StoredEvent]:
        return list(self.recorder.select_events(aggregate_id))

    # ----- the global feed ---------------------------------------------------------------------

    def max_position(self) -> int:
        """The position of the last event stored (0: none)."""
        return self.recorder.max_notification_id() or 0

    def notifications_after(self, position: int, limit: int) -> list[Notification]:
        return list(self.recorder.select_notifications(start=position + 1, limit=limit))

    def notification_pages(self, page_size: int) -> Iterator[list[Notification]]:
        position = 0
        while page := self.notifications_after(position, page_size):
            yield page
            position = page[-1].id

    def history_pages(self, page_size: int = 1000) -> Iterator[list[tuple[int, object]]]:
        """The whole history, page by page, in the store's global order (for rebuilds)."""
        for page in self.notification_pages(page_size):
            yield [(notification.id, self.mapper.to_domain_event(notification)) for notification in page]

    def events_after(self, position: int, limit: int) -> list[tuple[int, object]]:
        """(position, domain event) pairs after `position`, in the store's global order: up to
        `limit` of them, maybe fewer while there are more (read until an answer is empty).

        The followers of one process share what was read and decoded (commands.recent_events)."""
        return self._recent.events_after(position, limit)

    def _read_events_after(self, position: int, limit: int) -> list[tuple[int, object]]:
        return [(notification.id, self.mapper.to_domain_event(notification))
                for notification in self.notifications_after(position, limit)]
