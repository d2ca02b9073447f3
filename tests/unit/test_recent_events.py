"""The shared tail of the global order answers what the store would, or the start of it."""

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

    def append(self, count: int, rng: random.Random) -> None:
        position = self.events[-1][0] if self.events else 0
        for _ in range(count):
            position += rng.choice((1, 1, 1, 2, 5))
            self.events.append((position, f"event {position}"))

    def read(self, position: int, limit: int) -> list[tuple[int, object]]:
        self.reads += 1
        return [item for item in self.events if item[0] > position][:limit]


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
        truth = store.read(followers[follower], limit)
        assert answer == truth[:len(answer)]
        assert bool(answer) == bool(truth)  # empty only when the store has nothing after it
        if answer:
            followers[follower] = answer[-1][0]


def test_followers_at_the_same_place_read_the_store_once():
    rng = random.Random(1)
    store = Store()
    store.append(50, rng)
    recent = RecentEvents(store.read)
    first = recent.events_after(0, 100)
    reads = store.reads
    assert [recent.events_after(0, 100) for _ in range(3)] == [first] * 3
    assert store.reads == reads
    assert recent.events_after(first[-1][0], 100) == []  # past the kept tail: the store is asked
    assert store.reads == reads + 1
