"""The relay: publishes every stored event, in order, to the EVENTS stream, exactly once.

It tails the event store's notification log and publishes each event with `Nats-Msg-Id` set
to its position, so a re-publish after a crash is dropped by the stream. Each publish also
carries `Nats-Expected-Last-Sequence`: a publish that would follow a lost one is refused by
the server, so the stream never has a gap, and a batch can be pipelined safely. After a crash
(or such a refusal) the relay asks the stream where it stopped and goes on from there.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from commands.app import LedgerApp
from commands.envelope import to_event_message
from commands.metrics import EVENTS_PUBLISHED
from commands.streams import ensure_streams
from domain.messages import EVENTS_STREAM, events_subject

log = logging.getLogger(__name__)

BATCH_SIZE = 256


class Relay:
    def __init__(self, app: LedgerApp, js: JetStreamContext, replicas: int = 1) -> None:
        self.app = app
        self.js = js
        self.replicas = replicas
        self.position = 0  # last event position known to be in the stream
        self.stream_seq = 0  # the stream's last sequence, for Nats-Expected-Last-Sequence
        self._resume_needed = True

    async def resume_point(self) -> None:
        """Read where the stream stopped: its last message's id is the last position published.

        A stream that lost messages (or all of them, or itself) is simply behind: publishing
        goes on from its last message, and the event store fills in the rest.
        """
        try:
            info = await self.js.stream_info(EVENTS_STREAM)
        except NotFoundError:
            await ensure_streams(self.js, self.replicas)
            info = await self.js.stream_info(EVENTS_STREAM)
        self.stream_seq = info.state.last_seq
        self.position = 0
        if self.stream_seq:
            try:
                last = await self.js.get_msg(EVENTS_STREAM, self.stream_seq)
            except NotFoundError:
                return
            self.position = int((last.headers or {}).get("Nats-Msg-Id", "0"))

    async def publish_pending(self) -> int:
        if self._resume_needed:
            await self.resume_point()
            log.info("relay resumes after position %d (stream seq %d)", self.position, self.stream_seq)
            self._resume_needed = False
        events = await asyncio.to_thread(self._read_batch)
        if not events:
            return 0
        try:
            await self._publish_batch(events)
        except Exception:
            # Ask the stream where it stopped before the next batch: what it lost (or what a
            # refused publish left out) is published again from the event store.
            self._resume_needed = True
            raise
        return len(events)

    def _read_batch(self) -> list[tuple[int, Any]]:
        return list(self.app.store.events_after(self.position, BATCH_SIZE))

    async def _publish_batch(self, events: list[tuple[int, Any]]) -> None:
        # Pipelined: every publish names the sequence it must follow, so if one fails all
        # later ones in the batch are refused too and no gap can reach the stream.
        publishes = []
        for offset, (position, event) in enumerate(events):
            message = to_event_message(event, position)
            headers = {
                "Nats-Msg-Id": str(position),
                "Nats-Expected-Last-Sequence": str(self.stream_seq + offset),
            }
            publishes.append(
                self.js.publish(
                    events_subject(message.aggregate_type, message.aggregate_id, message.type),
                    msgspec.json.encode(message),
                    headers=headers,
                )
            )
        acks = await asyncio.gather(*publishes, return_exceptions=True)
        for (position, _), ack in zip(events, acks, strict=True):
            if isinstance(ack, BaseException):
                raise ack
            self.position = position
            self.stream_seq = ack.seq
        EVENTS_PUBLISHED.inc(len(events))

