"""The shared tail of the global order answers what the store would."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from commands.recent_events import RecentEvents


class Store:
    """A global order with gaps (positions a rolled-back transaction took), growing as asked."""

    def __init__(self) -> None:
        self.events: list[tuple[int, object]] = []
        self.reads = 0
        self.returned = 0  # events read out of the store (each one decoded, in the real one)

    def append(self, count: int, rng: random.Random) -> None:
        position = self.events[-1][0] if self.events else 0
        for _ in range(count):
            position += rng.choice((1, 1, 1, 2, 5))
            self.events.append((position, f"event {position}"))

    def read(self, position: int, limit: int) -> list[tuple[int, object]]:
        self.reads += 1
        page = [item for item in self.events if item[0] > position][:limit]
        self.returned += len(page)
        return page


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 12), st.integers(1, 20)), min_size=1, max_size=60),
       st.integers(0, 2**32))
def test_every_answer_is_what_the_store_would_answer(steps, seed):
    rng = random.Random(seed)
    store = Store()
    recent = RecentEvents(store.read, keep=16)
    followers = [0, 0, 0, 0]
    for follower, appended, limit in steps:
        store.append(appended, rng)
        if rng.random() < 0.1:
            followers[follower] = rng.choice([0, followers[follower] // 2])  # one restarts, far behind
        answer = recent.events_after(followers[follower], limit)
        # Exactly the store's answer: one short of `limit` means caught up (commands.wake).
        assert answer == store.read(followers[follower], limit)
        if answer:
            followers[follower] = answer[-1][0]


def test_followers_at_the_same_place_decode_each_event_once_and_ask_the_store_only_what_is_newer():
    rng = random.Random(1)
    store = Store()
    store.append(50, rng)
    recent = RecentEvents(store.read)
    first = recent.events_after(0, 100)
    assert (store.reads, store.returned) == (1, 50)
    # Each answer from memory is short of its limit, so it asks the store what is newer: nothing.
    assert [recent.events_after(0, 100) for _ in range(3)] == [first] * 3
    assert (store.reads, store.returned) == (4, 50)
    assert recent.events_after(0, 20) == first[:20]  # a full answer from memory alone
    assert store.reads == 4
    store.append(5, rng)
    assert recent.events_after(first[10][0], 100) == first[11:] + store.events[50:]  # memory, then the store
    assert (store.reads, store.returned) == (5, 55)
