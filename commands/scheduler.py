"""The scheduler: plans pushed runs and dispatches ready jobs. It keeps no state of its own.

Two durable consumers of the EVENTS stream, each acking only after its command committed:
- the planner reacts to `RunRequested`: it reads `.ledgerci.yml` at the commit (off the push
  request's path) and records the plan, or why there is none;
- the dispatcher reacts to `JobQueued`: it publishes the attempt to the runners' work queue
  with `Nats-Msg-Id` = job:attempt, so a redelivered event never dispatches twice.

The commands that make a job ready (planning, a job finishing) already know which attempt is
ready, so they publish it at once (the fast path); the dispatcher's copy of the same message
id is then dropped by the stream. It still matters when the fast path died before publishing.
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
from commands.streams import ensure_streams
from domain.messages import (
    EVENTS_STREAM,
    EventMessage,
    JobDispatch,
    dispatch_msg_id,
    events_of_type,
    jobs_subject,
)
from domain.run import Run
from gitcache import CommitNotFoundError, GitError, GitMirrors

log = logging.getLogger(__name__)

WORKFLOW_PATH = ".ledgerci.yml"
# How long after a job became ready the dispatcher checks that it was really dispatched.
BACKSTOP_DELAY_SECONDS = 1.0


async def publish_dispatch(js: JetStreamContext, dispatch: JobDispatch) -> None:
    """Offer an attempt to the runners. Safe to repeat: the stream drops a second copy."""
    await js.publish(
        jobs_subject(dispatch.pool),
        msgspec.json.encode(dispatch),
        headers={"Nats-Msg-Id": dispatch_msg_id(dispatch.job_id, dispatch.attempt)},
    )


class Planner:
    def __init__(self, app: LedgerApp, js: JetStreamContext, mirrors: GitMirrors) -> None:
        self.app = app
        self.js = js
        self.mirrors = mirrors

    async def handle(self, message: Msg) -> None:
        event = msgspec.json.decode(message.data, type=EventMessage)
        run = await asyncio.to_thread(self.plan, UUID(event.aggregate_id), event.data)
        # Fast path: the planner knows the first job is ready; the dispatcher's copy from the
        # JobQueued event is the backstop if we die right here.
        ready = self.app.ready_dispatch(run)
        if ready is not None:
            await publish_dispatch(self.js, ready)

    def plan(self, run_id: UUID, requested: dict) -> Run:
        try:
            workflow_file = self.mirrors.read_file(
                requested["repository_id"], requested["clone_url"], requested["commit"], WORKFLOW_PATH
            )
        except CommitNotFoundError as missing:
            return self.app.fail_run_before_start(run_id, str(missing))
        except GitError as failed:
            # Unreachable repository: the run fails and says why; a later push retries.
            return self.app.fail_run_before_start(run_id, f"could not read the repository: {failed}")
        return self.app.plan_run(run_id, workflow_file)


class Dispatcher:
    def __init__(self, app: LedgerApp, js: JetStreamContext, backstop_delay: float = BACKSTOP_DELAY_SECONDS) -> None:
        self.app = app
        self.js = js
        self.backstop_delay = backstop_delay

    async def handle(self, message: Msg) -> float | None:
        event = msgspec.json.decode(message.data, type=EventMessage)
        age = (self.app.clock() - event.at).total_seconds()
        if age < self.backstop_delay:
            # The fast path has almost surely dispatched it already; looking now would only
            # compete with the job's start for CPU and the store. Look again a little later.
            return self.backstop_delay - age
        job_id, attempt = event.data["job_id"], event.data["attempt"]
        dispatch = await asyncio.to_thread(
            self.app.dispatch_for, UUID(event.aggregate_id), job_id, attempt
        )
        if dispatch is None:
            return None  # no longer queued (started, cancelled): nothing to send
        log.debug("dispatcher re-offers queued attempt %s:%d (deduplicated if already sent)", job_id, attempt)
        await publish_dispatch(self.js, dispatch)
        return None


async def run_scheduler(
    app: LedgerApp, js: JetStreamContext, mirrors: GitMirrors, stop: asyncio.Event, replicas: int = 1
) -> None:
    planner = Planner(app, js, mirrors)
    dispatcher = Dispatcher(app, js)

    async def ensure() -> None:
        await ensure_streams(js, replicas)

    async with asyncio.TaskGroup() as group:
        group.create_task(
            consume(js, stream=EVENTS_STREAM, durable="planner", filter_subject=events_of_type("RunRequested"),
                    handle=planner.handle, stop=stop, ensure_streams=ensure)
        )
        group.create_task(
            consume(js, stream=EVENTS_STREAM, durable="dispatcher", filter_subject=events_of_type("JobQueued"),
                    handle=dispatcher.handle, stop=stop, ensure_streams=ensure)
        )
