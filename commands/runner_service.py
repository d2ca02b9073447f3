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
from commands.runner_decisions import CommandResult, RunnerCommand
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

# Commands decided together at most: a group's transaction stays short.
MAX_GROUP = 64
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

    membership = QueueMembership(stalled_after)

    def answered(command: RunnerCommand, result: CommandResult) -> CommandResult:
        """What a command's reply carries beyond the decision: a claim's sealed secrets."""
        if isinstance(command, StartJob):
            return book.seal_for_claim(command, _observed(result, observe_claimed))
        if isinstance(command, FinishJob):
            return _observed(result, observe_finished)
        return result

    def decide(commands: list[RunnerCommand]) -> list[CommandResult | Exception]:
        results = []
        for command, result in zip(commands, app.runs.runner_commands(commands), strict=True):
            try:
                results.append(result if isinstance(result, Exception) else answered(command, result))
            except Exception as failed:
                results.append(failed)
        return results

    groups = CommandGroups(decide)
    # nats-py runs one callback at a time per subscription: each command gets its own task.
    in_flight: set[asyncio.Task[None]] = set()

    def on(kind: type[RunnerCommand]) -> Callable[[Msg], Awaitable[None]]:
        async def handle(message: Msg) -> None:
            command = msgspec.json.decode(message.data, type=kind)
            task = asyncio.create_task(_answer(message, groups.submit(command), membership))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        return handle

    handlers = {HAND_BACK_SUBJECT: on(HandBack), START_JOB_SUBJECT: on(StartJob), HEARTBEAT_SUBJECT: on(Heartbeat),
                FINISH_JOB_SUBJECT: on(FinishJob)}
    await membership.join(nc, handlers)
    try:
        await stop.wait()
    finally:
        await membership.close()
        if in_flight:
            await asyncio.wait(in_flight)


class CommandGroups:
    """Runner commands decided in groups: those that arrive while a group is being decided
    wait for it and go together next (`RunCommands.runner_commands`: one worker-thread hop
    and one transaction for the lot). Nothing waits for company: a command arriving when
    none is being decided goes at once, alone."""

    def __init__(self, decide: Callable[[list[RunnerCommand]], list[CommandResult | Exception]]) -> None:
        self._decide = decide
        self._waiting: list[tuple[RunnerCommand, asyncio.Future[CommandResult]]] = []
        self._deciding: asyncio.Task[None] | None = None

    def submit(self, command: RunnerCommand) -> asyncio.Future[CommandResult]:
        future: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        self._waiting.append((command, future))
        if self._deciding is None:
            self._deciding = asyncio.create_task(self._decide_waiting())
        return future

    async def _decide_waiting(self) -> None:
        try:
            while self._waiting:
                group, self._waiting = self._waiting[:MAX_GROUP], self._waiting[MAX_GROUP:]
                try:
                    results = await asyncio.to_thread(self._decide, [command for command, _ in group])
                except Exception as failed:  # each waiting command gets it as its own answer
                    results = [failed] * len(group)
                for (_, future), result in zip(group, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._deciding = None


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


async def _answer(message: Msg, result: asyncio.Future[CommandResult], membership: QueueMembership) -> None:
    try:
        answer = await membership.track(result, message.subject)
    except Exception as failed:
        # Not a refusal: the runner keeps its attempt and retries the command.
        log.error("runner command on %s failed", message.subject, exc_info=failed)
        answer = CommandResult(CommandReply(ok=False, refused=False, error=f"command failed: {failed}"))
    await message.respond(msgspec.json.encode(answer.reply))
