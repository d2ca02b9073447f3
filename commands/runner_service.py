"""Answers runner commands (claim and report an attempt) over NATS request/reply.

Runners hold no database credentials: their commands reach the event store only through
here. Every command carries (job, attempt); the run aggregate refuses a stale attempt, and
the reply says so, so the runner stops working on it.

A replica whose store stops answering (a partition: its queries hang, they do not fail) steps
aside: it leaves the queue group until its stalled commands complete, so NATS sends the
runners' commands to the replicas that can answer them. Without that, every other command of
a runner would wait on it until the runner's lease ran out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from commands.app import LedgerApp
from commands.metrics import observe_claimed, observe_finished
from commands.runs import CommandResult
from commands.secrets import SecretBook
from domain.job import Job
from domain.messages import (
    COMMAND_QUEUE_GROUP,
    FINISH_JOB_SUBJECT,
    HAND_BACK_SUBJECT,
    HEARTBEAT_SUBJECT,
    START_JOB_SUBJECT,
    CommandReply,
    FinishJob,
    HandBack,
    Heartbeat,
    StartJob,
)

log = logging.getLogger(__name__)

# A command that has not had the store's answer in this long counts as stalled: the replica
# steps aside. Store commands take milliseconds; a slow one under load well under a second.
STALLED_AFTER_SECONDS = 5.0


async def serve_runner_commands(app: LedgerApp, nc: NATS, stop: asyncio.Event,
                                secrets: SecretBook | None = None,
                                stalled_after: float | None = STALLED_AFTER_SECONDS) -> None:
    """`stalled_after` None: never step aside (the embedded default's one replica, whose store
    is a local file: stepping aside would leave the runners with no one to answer)."""
    # Without a book of its own (no LEDGERCI_SECRET_KEY), a job that lists secrets fails saying so.
    book = secrets or SecretBook(app, None)

    # nats-py runs one callback at a time per subscription; commands of different runs are
    # independent, so each gets its own task and they overlap in worker threads.
    in_flight: set[asyncio.Task[None]] = set()

    membership = QueueMembership(stalled_after)

    def spawn(message: Msg, command) -> None:
        task = asyncio.create_task(_answer(message, command, membership))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)

    async def on_start(message: Msg) -> None:
        command = msgspec.json.decode(message.data, type=StartJob)
        spawn(message, lambda: book.seal_for_claim(command, _observed(app.runs.start_job(command), observe_claimed)))

    async def on_heartbeat(message: Msg) -> None:
        command = msgspec.json.decode(message.data, type=Heartbeat)
        spawn(message, lambda: app.runs.heartbeat(command))

    async def on_finish(message: Msg) -> None:
        command = msgspec.json.decode(message.data, type=FinishJob)
        spawn(message, lambda: _observed(app.runs.finish_job(command), observe_finished))

    async def on_hand_back(message: Msg) -> None:
        command = msgspec.json.decode(message.data, type=HandBack)
        spawn(message, lambda: app.runs.hand_back(command))

    handlers = {HAND_BACK_SUBJECT: on_hand_back, START_JOB_SUBJECT: on_start, HEARTBEAT_SUBJECT: on_heartbeat,
                FINISH_JOB_SUBJECT: on_finish}
    await membership.join(nc, handlers)
    try:
        await stop.wait()
    finally:
        await membership.close()
        if in_flight:
            await asyncio.wait(in_flight)


class QueueMembership:
    """This replica's place in the runner-command queue group: left while any command is
    stalled on the store, joined again once none is."""

    def __init__(self, stalled_after: float | None) -> None:
        self.stalled_after = stalled_after
        self.subscriptions: list[Subscription] = []
        self.stalled = 0
        self._nc: NATS | None = None
        self._handlers: dict[str, Callable[[Msg], Awaitable[None]]] = {}

    async def join(self, nc: NATS, handlers: dict[str, Callable[[Msg], Awaitable[None]]]) -> None:
        self._nc, self._handlers = nc, handlers
        self.subscriptions = [await nc.subscribe(subject, queue=COMMAND_QUEUE_GROUP, cb=handler)
                              for subject, handler in handlers.items()]

    async def close(self) -> None:
        self._nc = None  # stopping: a stalled command that completes now does not join again
        await self.leave()

    async def leave(self) -> None:
        subscriptions, self.subscriptions = self.subscriptions, []
        for subscription in subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def track(self, command: asyncio.Future[CommandResult], subject: str) -> CommandResult:
        """The command's result; if it stalls, out of the queue group until it (and every
        other stalled one) completes."""
        if self.stalled_after is None:
            return await command
        try:
            return await asyncio.wait_for(asyncio.shield(command), self.stalled_after)
        except TimeoutError:
            pass
        self.stalled += 1
        if self.stalled == 1 and self.subscriptions:
            log.warning("a runner command on %s got no answer from the store in %.0fs: leaving the queue group "
                        "until the store answers", subject, self.stalled_after)
            await self.leave()
        try:
            return await command
        finally:
            self.stalled -= 1
            if self.stalled == 0 and not self.subscriptions and self._nc is not None:
                log.info("the store answers again: back in the runner-command queue group")
                await self.join(self._nc, self._handlers)


def _observed(result: CommandResult, observe: Callable[[Job], None]) -> CommandResult:
    if result.changed is not None:
        observe(result.changed)
    return result


async def _answer(message: Msg, command: Callable[[], CommandResult], membership: QueueMembership) -> None:
    try:
        result = await membership.track(asyncio.ensure_future(asyncio.to_thread(command)), message.subject)
    except Exception as failed:
        # Not a refusal: the runner keeps its attempt and retries the command.
        log.exception("runner command on %s failed", message.subject)
        result = CommandResult(CommandReply(ok=False, refused=False, error=f"command failed: {failed}"))
    await message.respond(msgspec.json.encode(result.reply))
