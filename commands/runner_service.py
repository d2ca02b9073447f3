"""Answers runner commands (claim and report an attempt) over NATS request/reply.

Runners hold no database credentials: their commands reach the event store only through
here. Every command carries (job, attempt); the run aggregate refuses a stale attempt, and
the reply says so, so the runner stops working on it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from commands.app import LedgerApp
from commands.metrics import observe_claimed, observe_finished
from commands.runs import CommandResult
from commands.secrets import SecretBook
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
from domain.run import Job

log = logging.getLogger(__name__)


async def serve_runner_commands(app: LedgerApp, nc: NATS, stop: asyncio.Event,
                                secrets: SecretBook | None = None) -> None:
    js = nc.jetstream()
    # Without a book of its own (no LEDGERCI_SECRET_KEY), a job that lists secrets fails saying so.
    book = secrets or SecretBook(app, None)

    # nats-py runs one callback at a time per subscription; commands of different runs are
    # independent, so each gets its own task and they overlap in worker threads.
    in_flight: set[asyncio.Task[None]] = set()

    def spawn(message: Msg, command) -> None:
        task = asyncio.create_task(_answer(message, command, js))
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

    subscriptions = [
        await nc.subscribe(HAND_BACK_SUBJECT, queue=COMMAND_QUEUE_GROUP, cb=on_hand_back),
        await nc.subscribe(START_JOB_SUBJECT, queue=COMMAND_QUEUE_GROUP, cb=on_start),
        await nc.subscribe(HEARTBEAT_SUBJECT, queue=COMMAND_QUEUE_GROUP, cb=on_heartbeat),
        await nc.subscribe(FINISH_JOB_SUBJECT, queue=COMMAND_QUEUE_GROUP, cb=on_finish),
    ]
    try:
        await stop.wait()
    finally:
        for subscription in subscriptions:
            await subscription.unsubscribe()
        if in_flight:
            await asyncio.wait(in_flight)


def _observed(result: CommandResult, observe: Callable[[Job], None]) -> CommandResult:
    if result.changed is not None:
        observe(result.changed)
    return result


async def _answer(message: Msg, command: Callable[[], CommandResult], js: JetStreamContext) -> None:
    try:
        result = await asyncio.to_thread(command)
    except Exception as failed:
        # Not a refusal: the runner keeps its attempt and retries the command.
        log.exception("runner command on %s failed", message.subject)
        result = CommandResult(CommandReply(ok=False, refused=False, error=f"command failed: {failed}"))
    await message.respond(msgspec.json.encode(result.reply))
