"""The runners' work queue (`LEDGERCI_JOBS`) as the admission leader writes it: fenced.

Only the admission leader publishes to this stream, and every publish carries
`Nats-Expected-Last-Sequence`: the stream's last sequence as this leader knows it. A leader
begins by publishing a fence (an empty message on a subject no pool can have, deleted at once),
which moves the last sequence past anything a former leader knew. From then on a former
leader's publish is refused by NATS itself ("wrong last sequence"), however long it was paused
between checking its lock and publishing; and the new leader's own publishes succeed only while
nothing else was published since it last looked, so its view of what is released stays whole.

Each offer of an attempt has its own `Nats-Msg-Id` (job:attempt, then job:attempt:offer), so
the stream's deduplication drops a retried publish but never a deliberate second offer of a
message that vanished (dead-lettered, or lost with a nats-server's data).
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from commands.leadership import LeadershipLostError
from commands.streams import ensure_streams
from domain.messages import JOBS_STREAM, JOBS_SUBJECT_PREFIX, JobDispatch, dispatch_msg_id, jobs_subject

# Pool names start with a letter or digit (domain/workflow.py), so no runner listens here.
FENCE_SUBJECT = f"{JOBS_SUBJECT_PREFIX}._fence"
OFFER_HEADER = "Ledgerci-Offer"
WRONG_LAST_SEQUENCE = 10071  # JetStream's error code for a failed Nats-Expected-Last-Sequence
FENCE_ATTEMPTS = 5


class FencedOutError(LeadershipLostError):
    """Something else published to the work queue since this leader last looked."""


@dataclass(frozen=True)
class Offered:
    """One message in the work queue: an attempt offered to its pool's runners."""

    job_id: str
    attempt: int
    seq: int
    offer: int  # 1 for the first offer of the attempt, 2 for the next, ...

    @property
    def msg_id(self) -> str:
        return dispatch_msg_id(self.job_id, self.attempt, self.offer)


class WorkQueue:
    def __init__(self, js: JetStreamContext, *, replicas: int = 1) -> None:
        self.js = js
        self.replicas = replicas
        self.last_seq: int | None = None  # None until fenced: nothing may be published

    async def fence(self) -> None:
        """Move the stream's last sequence past what any former leader knew."""
        for _ in range(FENCE_ATTEMPTS):
            try:
                last = (await self.js.stream_info(JOBS_STREAM)).state.last_seq
            except NotFoundError:
                # The stream is gone (a nats-server lost its data): nobody else would bring it
                # back until a restart. Its former messages are re-offered from the store.
                await ensure_streams(self.js, self.replicas)
                continue
            try:
                ack = await self.js.publish(FENCE_SUBJECT, b"", headers={"Nats-Expected-Last-Sequence": str(last)})
            except APIError as error:
                if error.err_code == WRONG_LAST_SEQUENCE:
                    continue  # a former leader's publish landed just now: look again
                raise
            await self.js.delete_msg(JOBS_STREAM, ack.seq)  # the sequence stays where it is
            self.last_seq = ack.seq
            return
        raise FencedOutError("the work queue kept changing while fencing it")

    async def offered(self) -> list[Offered]:
        """Every message the work queue holds: released attempts not yet acked by a runner."""
        found: list[Offered] = []
        seq = 1
        while True:
            try:
                message = await self.js.get_msg(JOBS_STREAM, seq=seq, subject=f"{JOBS_SUBJECT_PREFIX}.>", next=True)
            except NotFoundError:
                return found
            seq = message.seq or seq
            try:
                dispatch = msgspec.json.decode(message.data or b"", type=JobDispatch)
            except msgspec.DecodeError:
                dispatch = None
            if dispatch is not None:
                headers = message.headers or {}
                offer = headers.get(OFFER_HEADER, "1")
                found.append(Offered(dispatch.job_id, dispatch.attempt, seq, int(offer) if offer.isdigit() else 1))
            seq += 1

    async def offer(self, dispatch: JobDispatch, offer: int) -> Offered:
        """Publish an offer of an attempt; raises FencedOutError if the queue moved under us.

        The stream answers "duplicate" for an id it saw in the last 10 minutes. If that earlier
        message has left the queue unstarted (a former leader's offer, dead-lettered since), the
        attempt is offered again under the next id, so it is not silently left without one."""
        while True:
            offered, duplicate = await self._publish(dispatch, offer)
            if not duplicate or await self.holds(offered.seq, offered.msg_id):
                return offered
            offer += 1

    async def _publish(self, dispatch: JobDispatch, offer: int) -> tuple[Offered, bool]:
        if self.last_seq is None:
            raise FencedOutError("the work queue was not fenced")
        msg_id = dispatch_msg_id(dispatch.job_id, dispatch.attempt, offer)  # as Offered.msg_id
        try:
            ack = await self.js.publish(
                jobs_subject(dispatch.pool),
                msgspec.json.encode(dispatch),
                headers={"Nats-Msg-Id": msg_id, OFFER_HEADER: str(offer),
                         "Nats-Expected-Last-Sequence": str(self.last_seq)},
            )
        except APIError as error:
            if error.err_code == WRONG_LAST_SEQUENCE:
                raise FencedOutError(f"the work queue moved past {self.last_seq}: {error.description}") from None
            raise
        if not ack.duplicate:
            self.last_seq = ack.seq
        return Offered(dispatch.job_id, dispatch.attempt, ack.seq, offer), bool(ack.duplicate)

    async def holds(self, seq: int, msg_id: str) -> bool:
        """Does the message of this offer still wait in the queue (not acked, deleted or lost)?"""
        try:
            message = await self.js.get_msg(JOBS_STREAM, seq=seq)
        except NotFoundError:
            return False
        # After a nats-server lost its data, the same sequence may hold another message.
        return (message.headers or {}).get("Nats-Msg-Id") == msg_id
