"""The scheduler: plans pushed runs, and (one replica at a time) admits ready jobs to runners.

- The planner, a durable consumer of `RunRequested` acking only after its command committed,
  reads `.ledgerci.yml` at the commit (off the push request's path) and records the plan, or
  why there is none. Every replica takes a share of the pushes.
- Admission (commands.admission) decides which queued job goes to which free runner slot:
  weighted fair across tenants and within their quotas. Only the elected leader decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from uuid import UUID

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from commands.app import LedgerApp
from commands.consume import consume
from commands.streams import ensure_streams
from domain.messages import EVENTS_STREAM, EventMessage, events_of_type
from domain.run import Run
from gitcache import CommitNotFoundError, GitError, GitMirrors

log = logging.getLogger(__name__)

WORKFLOW_PATH = ".ledgerci.yml"


class Planner:
    def __init__(self, app: LedgerApp, mirrors: GitMirrors) -> None:
        self.app = app
        self.mirrors = mirrors

    async def handle(self, message: Msg) -> None:
        event = msgspec.json.decode(message.data, type=EventMessage)
        await asyncio.to_thread(self.plan, UUID(event.aggregate_id), event.data)

    def plan(self, run_id: UUID, requested: dict) -> Run:
        try:
            workflow_file = self.mirrors.read_file(
                requested["repository_id"], requested["clone_url"], requested["commit"], WORKFLOW_PATH
            )
        except CommitNotFoundError as missing:
            return self.app.runs.fail_run_before_start(run_id, str(missing))
        except GitError as failed:
            # Unreachable repository: the run fails and says why; a later push retries.
            return self.app.runs.fail_run_before_start(run_id, f"could not read the repository: {failed}")
        summary = self.mirrors.commit_summary(requested["repository_id"], requested["commit"])
        commit = (summary.subject, summary.author) if summary else None
        return self.app.runs.plan_run(run_id, workflow_file, commit=commit)


async def run_planner(
    app: LedgerApp, js: JetStreamContext, mirrors: GitMirrors, stop: asyncio.Event, replicas: int = 1
) -> None:
    planner = Planner(app, mirrors)

    async def ensure() -> None:
        await ensure_streams(js, replicas)

    # Releases before admission had a leader came from a "dispatcher" consumer; it is gone.
    with contextlib.suppress(NotFoundError):
        await js.delete_consumer(EVENTS_STREAM, "dispatcher")
    await consume(js, stream=EVENTS_STREAM, durable="planner", filter_subject=events_of_type("RunRequested"),
                  handle=planner.handle, stop=stop, ensure_streams=ensure)
