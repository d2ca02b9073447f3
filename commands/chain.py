"""Tamper evidence: every stored event carries a keyed hash chaining it to its stream's previous event.

    link(n) = HMAC-SHA256(key, link(n-1) || originator id || version || topic || state(n))

with link(0) = 32 zero bytes. The link is written into the stored JSON itself, as its first
key (`{"_chain":"<hex>",…}`), so the events table keeps its eventsourcing shape and a row
read on its own is still plain JSON. Changing an event's data, type or version, deleting one,
or moving one to another stream breaks the link of that event and of every later one, and
`verify_stream` names the first that does not match.

Why a keyed chain per stream rather than one global chain: a run's stream is what an auditor
asks about, appends to different runs never wait on each other, and with the key held only by
the services (LEDGERCI_AUDIT_KEY), someone who can write to the database but does not hold the
key cannot forge a consistent chain after editing. Without a key the chain still catches edits
made without recomputing it. Dropping a stream's newest events leaves a valid shorter chain:
the database refuses UPDATE, DELETE and TRUNCATE on the events table (commands.schema) so that
needs the table owner, and the relay's copy in JetStream keeps every event's position as well.

Events stored before chaining existed (the v1 reference histories) have no link; they read as
before, `verify_stream` reports them as unchained, and an event appended after one chains from
the SHA-256 of its stored bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple
from uuid import UUID

from eventsourcing.persistence import Mapper, StoredEvent

GENESIS = bytes(32)
_PREFIX = b'{"_chain":"'
_LINK_END = len(_PREFIX) + 64  # 32 bytes as hex
# Heads remembered per process: enough for every run in flight; a miss costs one keyed read.
_MAX_REMEMBERED = 100_000


def split(state: bytes) -> tuple[bytes | None, bytes]:
    """(link, the event's own JSON) of a stored state; link None for an unchained event."""
    if not state.startswith(_PREFIX) or state[_LINK_END:_LINK_END + 2] not in (b'",', b'"}'):
        return None, state
    try:
        link = bytes.fromhex(state[len(_PREFIX):_LINK_END].decode())
    except ValueError:
        return None, state
    rest = state[_LINK_END + 2:] if state[_LINK_END + 1:_LINK_END + 2] == b"," else b"}"
    return link, b"{" + rest


def join(link: bytes, body: bytes) -> bytes:
    rest = body[1:]
    separator = b"" if rest == b"}" else b","
    return _PREFIX + link.hex().encode() + b'"' + separator + rest


def compute_link(key: bytes, previous: bytes, originator_id: UUID, version: int, topic: str, body: bytes) -> bytes:
    message = b"".join((previous, originator_id.bytes, version.to_bytes(8, "big"), topic.encode(), b"\0", body))
    return hmac.new(key, message, hashlib.sha256).digest()


def head_of(stored: StoredEvent) -> bytes:
    """What the next event of the stream chains from."""
    link, _ = split(stored.state)
    return link if link is not None else hashlib.sha256(stored.state).digest()


class ChainedMapper(Mapper):
    """eventsourcing's Mapper, adding the link on write and removing it on read.

    Writing version n needs the link of version n-1. Loading an aggregate reads its events,
    so the head of every stream this process loaded is remembered; links computed for a save
    are kept aside until the save commits (a save that loses a race must not leave a link
    for a version that someone else wrote). Anything else is read from the store: `previous`.
    """

    def __init__(self, transcoder: Any, key: bytes, previous: Callable[[UUID, int], StoredEvent | None]) -> None:
        super().__init__(transcoder)
        self.key = key
        self.previous = previous
        self._heads: dict[UUID, tuple[int, bytes]] = {}
        self._saving = threading.local()

    # ----- a save (called by the application around each insert) -----------------------------

    def begin_save(self) -> None:
        self._saving.links = {}

    def end_save(self, committed: bool) -> None:
        links: dict[UUID, tuple[int, bytes]] = getattr(self._saving, "links", {})
        if committed:
            for originator_id, head in links.items():
                self._remember(originator_id, *head)
        self._saving.links = {}

    # ----- the mapping ---------------------------------------------------------------------

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        stored = super().to_stored_event(domain_event)
        originator_id, version = stored.originator_id, stored.originator_version
        assert isinstance(originator_id, UUID)
        link = compute_link(self.key, self._link_before(originator_id, version), originator_id, version,
                            stored.topic, stored.state)
        links = getattr(self._saving, "links", None)
        if links is not None:
            links[originator_id] = (version, link)
        return StoredEvent(originator_id=originator_id, originator_version=version, topic=stored.topic,
                           state=join(link, stored.state))

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        link, body = split(stored_event.state)
        if link is not None:
            self._remember(stored_event.originator_id, stored_event.originator_version, link)
            stored_event = StoredEvent(originator_id=stored_event.originator_id,
                                       originator_version=stored_event.originator_version,
                                       topic=stored_event.topic, state=body)
        return super().to_domain_event(stored_event)

    def known_version(self, originator_id: UUID) -> int | None:
        """The newest version of the stream this process has read or written, if any."""
        head = self._heads.get(originator_id)
        return head[0] if head is not None else None

    def _link_before(self, originator_id: UUID, version: int) -> bytes:
        if version <= 1:
            return GENESIS
        pending = getattr(self._saving, "links", {}).get(originator_id)
        if pending is not None and pending[0] == version - 1:
            return pending[1]
        remembered = self._heads.get(originator_id)
        if remembered is not None and remembered[0] == version - 1:
            return remembered[1]
        stored = self.previous(originator_id, version - 1)
        if stored is None:  # the store lost a version: nothing to chain to, and audit says so
            return GENESIS
        return head_of(stored)

    def _remember(self, originator_id: Any, version: int, link: bytes) -> None:
        if len(self._heads) >= _MAX_REMEMBERED:
            self._heads.clear()
        known = self._heads.get(originator_id)
        if known is None or known[0] <= version:
            self._heads[originator_id] = (version, link)


# ----- verification ------------------------------------------------------------------------

class Broken(NamedTuple):
    """The first event of a stream whose link does not match, and why."""

    originator_id: str
    version: int
    topic: str
    reason: str

    def __str__(self) -> str:
        event_type = self.topic.rsplit(":", 1)[-1].rsplit(".", 1)[-1]  # domain.run:Run.JobStarted
        return f"{self.originator_id} version {self.version} ({event_type}): {self.reason}"


class StreamChecker:
    """Follows one stream's events in version order and finds the first broken link."""

    def __init__(self, key: bytes, originator_id: UUID) -> None:
        self.key = key
        self.originator_id = originator_id
        self.head = GENESIS
        self.version = 0
        self.broken: Broken | None = None

    def check(self, stored: StoredEvent) -> Broken | None:
        if self.broken is not None:
            return None  # only the first break of a stream is named
        expected_version = self.version + 1
        self.version = stored.originator_version
        link, body = split(stored.state)
        reason = None
        if stored.originator_version != expected_version:
            reason = f"expected version {expected_version} next: {stored.originator_version - expected_version} missing"
        elif link is None:
            reason = "has no chain link (written without tamper evidence, or its link was removed)"
        elif not hmac.compare_digest(link, compute_link(self.key, self.head, self.originator_id,
                                                        stored.originator_version, stored.topic, body)):
            reason = "its link does not match its content and the events before it"
        self.head = link if link is not None else hashlib.sha256(stored.state).digest()
        if reason is not None:
            self.broken = Broken(str(self.originator_id), stored.originator_version, stored.topic, reason)
        return self.broken


def verify_stream(key: bytes, originator_id: UUID, events: Iterable[StoredEvent]) -> Broken | None:
    """The first event of one stream that breaks the chain, or None if it is intact."""
    checker = StreamChecker(key, originator_id)
    for stored in events:
        if broken := checker.check(stored):
            return broken
    return None
