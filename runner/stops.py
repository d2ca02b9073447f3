"""Cancels for the attempts this runner is running: a user's through a gateway
(`ledgerci.control.<job>.<attempt>`, gateway/control.py), and any stored `JobCancelled` the
relay publishes (a newer run of a concurrency group cancels the older one through the planner).

One subscription of each per runner, made before its first job, rather than two per attempt:
subscribing and unsubscribing twice per job cost the runner and nats-server four protocol
messages and a subscription's task for every job, where cancels are rare. A cancel that
arrives before its attempt is watched (between the claim and the start) is remembered for a
while, so it still stops the attempt when the watch begins.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from domain.messages import CONTROL_SUBJECT_PREFIX, EventMessage, events_subject

# Cancels remembered for attempts not watched yet; any older is long past its claim.
REMEMBERED_CANCELS = 1024

Attempt = tuple[str, int]  # (job id, attempt)


class AttemptStops:
    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self._watched: dict[Attempt, Callable[[], None]] = {}
        self._cancelled: OrderedDict[Attempt, None] = OrderedDict()
        self._subscriptions: list[Subscription] = []

    async def start(self) -> None:
        self._subscriptions = [
            await self.nc.subscribe(f"{CONTROL_SUBJECT_PREFIX}.*.*", cb=self._on_control),
            await self.nc.subscribe(events_subject("Run", "*", "JobCancelled"), cb=self._on_cancelled),
        ]

    async def close(self) -> None:
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    def watch(self, job_id: str, attempt: int, stop: Callable[[], None]) -> None:
        """Call `stop` when the attempt is cancelled (at once if it already was)."""
        self._watched[(job_id, attempt)] = stop
        if (job_id, attempt) in self._cancelled:
            stop()

    def forget(self, job_id: str, attempt: int) -> None:
        self._watched.pop((job_id, attempt), None)

    async def _on_control(self, message: Msg) -> None:
        job_id, _, attempt = message.subject[len(CONTROL_SUBJECT_PREFIX) + 1:].partition(".")
        if attempt.isdigit():
            self._cancel((job_id, int(attempt)))

    async def _on_cancelled(self, message: Msg) -> None:
        try:
            event = msgspec.json.decode(message.data, type=EventMessage)
            self._cancel((str(event.data["job_id"]), int(event.data["attempt"])))
        except (msgspec.DecodeError, KeyError, TypeError, ValueError):
            return  # not a cancel this runner can act on

    def _cancel(self, attempt: Attempt) -> None:
        self._cancelled[attempt] = None
        while len(self._cancelled) > REMEMBERED_CANCELS:
            self._cancelled.popitem(last=False)
        if (stop := self._watched.get(attempt)) is not None:
            stop()
