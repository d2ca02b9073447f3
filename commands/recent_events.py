"""The tail of the store's global order, read and decoded once per process.

Every follower of the store (relay, projector, log archiver, admission) asks for "the events
after my position". In one process (`ledgerci dev` runs them all; the projector's process
runs the projector and the archiver) they ask for the same events within milliseconds of each
other, and each used to read them from the database and decode them (JSON, upcasting, the
chain link) on its own. This keeps the newest events it has read, already decoded: a follower
whose position falls inside them is answered from memory; one that reaches past them reads
the store, and what it read is kept for the others.

It answers what the store would: what it keeps is only ever what one read returned, so
between two kept positions there is nothing the store did not return (the store assigns
positions in commit order, which every follower relies on already). An answer from memory that
reaches the newest kept event and is short of `limit` goes on with a read of the store after
it, so an answer short of `limit` always means the store had nothing more when asked: a
follower that got one has caught up, and sleeps until the next commit wakes it
(commands.wake.run_woken's `batch`). So a follower costs one query per wake-up, as before, but
decodes nothing another one has decoded. The events are shared: domain events are immutable.
"""

from __future__ import annotations

import threading
from bisect import bisect_right
from collections.abc import Callable

Positioned = tuple[int, object]

KEEP_EVENTS = 4096  # a few seconds of the busiest load measured; a slower follower reads the store


class RecentEvents:
    def __init__(self, read: Callable[[int, int], list[Positioned]], keep: int = KEEP_EVENTS) -> None:
        self._read = read
        self._keep = keep
        self._lock = threading.Lock()  # followers call from worker threads
        # Every event after `_complete_after` up to the last kept one, in order.
        self._complete_after = 0
        self._positions: list[int] = []
        self._events: list[Positioned] = []

    def events_after(self, position: int, limit: int) -> list[Positioned]:
        """Up to `limit` events after `position`; fewer only if the store had no more."""
        with self._lock:
            if self._positions and self._complete_after <= position < self._positions[-1]:
                start = bisect_right(self._positions, position)
                kept = self._events[start:start + limit]
                if len(kept) == limit:
                    return kept
                return kept + self._read_and_keep(self._positions[-1], limit - len(kept))
            return self._read_and_keep(position, limit)

    def _read_and_keep(self, position: int, limit: int) -> list[Positioned]:
        page = self._read(position, limit)
        if page:
            self._keep_page(position, page)
        return page

    def _keep_page(self, position: int, page: list[Positioned]) -> None:
        if self._positions and position == self._positions[-1]:
            self._positions.extend(item[0] for item in page)  # it continues what is kept
            self._events.extend(page)
        elif self._positions and position < self._positions[-1]:
            return  # a follower far behind (a rebuild, a restart): the live ones need the tail
        else:  # the first read, or one past what is kept: keep the newest
            self._complete_after = position
            self._positions = [item[0] for item in page]
            self._events = list(page)
        surplus = len(self._events) - self._keep
        if surplus > self._keep // 4:  # trim in chunks, not on every read
            self._complete_after = self._positions[surplus - 1]
            del self._positions[:surplus]
            del self._events[:surplus]
