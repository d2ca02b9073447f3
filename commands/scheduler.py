"""The scheduler: plans pushed runs and dispatches ready jobs. It keeps no state of its own.

Two durable consumers of the EVENTS stream, each acking only after its command committed:
- the planner reacts to `RunRequested`: it reads `.ledgerci.yml` at the commit (off the push
  request's path) and records the plan, or why there is none;
- the dispatcher reacts to `JobQueued`: it publishes the attempt to the runners' work queue
  with `Nats-Msg-Id` = job:attempt, so a redelivered event never dispatches twice.
"""

from __future__ import annotations

import asyncio
import logging
from uuid import UUID

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from commands.app import LedgerApp
from commands.consume import consume
from domain.messages import (
    EVENTS_STREAM,
    EventMessage,
    dispatch_msg_id,
    events_subject,
    jobs_subject,
)
from gitcache import CommitNotFoundError, GitError, GitMirrors

log = logging.getLogger(__name__)

WORKFLOW_PATH = ".ledgerci.yml"
DEFAULT_POOL = "default"


class Planner:
    def __init__(self, app: LedgerApp, mirrors: GitMirrors) -> None:
        self.app = app
        self.mirrors = mirrors

    async def handle(self, message: Msg) -> None:
        event = msgspec.json.decode(message.data, type=EventMessage)
        await asyncio.to_thread(self.plan, UUID(event.aggregate_id), event.data)

    def plan(self, run_id: UUID, requested: dict) -> None:
        try:
            mirror = self.mirrors.ensure_commit(
                requested["repository_id"], requested["clone_url"], requested["commit"]
            )
            workflow_file = self.mirrors.read_file(mirror, requested["commit"], WORKFLOW_PATH)
        except CommitNotFoundError as missing:
            self.app.fail_run_before_start(run_id, str(missing))
            return
        except GitError as failed:
            # Unreachable repository: the run fails and says why; a later push retries.
            self.app.fail_run_before_start(run_id, f"could not read the repository: {failed}")
            return
        self.app.plan_run(run_id, workflow_file)


class Dispatcher:
    def __init__(self, app: LedgerApp, js: JetStreamContext) -> None:
        self.app = app
        self.js = js

    async def handle(self, message: Msg) -> None:
        event = msgspec.json.decode(message.data, type=EventMessage)
        job_id, attempt = event.data["job_id"], event.data["attempt"]
        dispatch = await asyncio.to_thread(
            self.app.dispatch_for, UUID(event.aggregate_id), job_id, attempt
        )
        if dispatch is None:
            return  # no longer queued (started, cancelled): nothing to send
        await self.js.publish(
            jobs_subject(DEFAULT_POOL),
            msgspec.json.encode(dispatch),
            headers={"Nats-Msg-Id": dispatch_msg_id(job_id, attempt)},
        )


async def run_scheduler(
    app: LedgerApp, js: JetStreamContext, mirrors: GitMirrors, stop: asyncio.Event
) -> None:
    planner = Planner(app, mirrors)
    dispatcher = Dispatcher(app, js)
    async with asyncio.TaskGroup() as group:
        group.create_task(
            consume(js, stream=EVENTS_STREAM, durable="planner", filter_subject=events_subject("RunRequested"),
                    handle=planner.handle, stop=stop, batch=4, ack_wait_seconds=600.0)
        )
        group.create_task(
            consume(js, stream=EVENTS_STREAM, durable="dispatcher", filter_subject=events_subject("JobQueued"),
                    handle=dispatcher.handle, stop=stop)
        )
