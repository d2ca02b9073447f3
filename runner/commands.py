"""The runner's side of the command service (commands/runner_service.py), over NATS request and
reply: claim an attempt, keep its lease, report its outcome, give it back.

Every command carries (job, attempt); a refusal means the attempt is no longer this runner's,
and it stops at once. A command not answered is asked again (each is idempotent).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError

from domain.artifacts import UploadedArtifact
from domain.caches import CacheReport
from domain.messages import (
    FINISH_JOB_SUBJECT,
    HAND_BACK_SUBJECT,
    HEARTBEAT_SUBJECT,
    START_JOB_SUBJECT,
    CommandReply,
    FinishJob,
    HandBack,
    Heartbeat,
    JobDispatch,
    StartJob,
)
from runner.executor import Outcome

log = logging.getLogger(__name__)

COMMAND_TIMEOUT_SECONDS = 10.0
# A claim whose reply was lost (NATS failing over, say) is asked again this many times before
# the dispatch goes back to the queue: asked again by this runner it is the same claim (the
# command is idempotent), while a redelivery to another runner would be refused and acked, and
# the attempt would sit claimed by nobody until its lease ran out.
CLAIM_TRIES = 3


class Refused(Exception):
    """The command service refused the command: this attempt is not ours any more."""


class CommandFailed(Exception):
    """The command service could not record the command (not a refusal): retry it."""


# Not answered, or not recorded: the command service is away, slow or without its store; the
# command is worth asking again (each is idempotent). A refusal is not among them.
RETRYABLE = (TimeoutError, NoRespondersError, CommandFailed)


class CommandClient:
    def __init__(self, nc: NATS, runner_id: str, patience: float) -> None:
        self.nc = nc
        self.runner_id = runner_id
        # How long a claim, heartbeat or outcome report waits for its reply before asking again.
        self.patience = patience

    async def command(self, subject: str, command: msgspec.Struct,
                      timeout: float = COMMAND_TIMEOUT_SECONDS) -> CommandReply:
        response = await self.nc.request(subject, msgspec.json.encode(command), timeout=timeout)
        reply = msgspec.json.decode(response.data, type=CommandReply)
        if reply.refused:
            raise Refused(reply.error)
        if not reply.ok:
            raise CommandFailed(reply.error)
        return reply

    async def claim(self, start: StartJob) -> CommandReply:
        for _ in range(CLAIM_TRIES - 1):
            try:
                return await self.command(START_JOB_SUBJECT, start, timeout=self.patience)
            except TimeoutError:
                log.info("claim of %s:%d not answered in %.1fs; asking again", start.job_id, start.attempt,
                         self.patience)
        return await self.command(START_JOB_SUBJECT, start, timeout=self.patience)

    async def report(self, dispatch: JobDispatch, outcome: Outcome, artifacts: list[UploadedArtifact],
                     cache: CacheReport | None) -> None:
        """Report until the command service has it: the outcome must not be lost."""
        finish = FinishJob(
            run_id=dispatch.run_id, job_id=dispatch.job_id, attempt=dispatch.attempt,
            runner_id=self.runner_id, exit_code=outcome.exit_code, error=outcome.error,
            timed_out=outcome.timed_out, artifacts=artifacts, cache=cache,
        )
        delay = 0.1
        while True:
            try:
                # A repeated report of the same outcome changes nothing, so a lost reply is
                # asked again within the lease rather than after the default timeout.
                await self.command(FINISH_JOB_SUBJECT, finish, timeout=self.patience)
                return
            except Refused as refused:
                log.warning("outcome of %s:%d refused: %s", dispatch.job_id, dispatch.attempt, refused)
                return
            except RETRYABLE as failed:
                log.warning("reporting %s:%d failed (%s); retrying", dispatch.job_id, dispatch.attempt, failed)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def hand_back(self, dispatch: JobDispatch) -> None:
        """Give the attempt back so it runs again at once elsewhere. If this fails the lease
        runs out instead and the reaper records the runner lost: slower, never wrong."""
        command = HandBack(run_id=dispatch.run_id, job_id=dispatch.job_id, attempt=dispatch.attempt,
                           runner_id=self.runner_id)
        try:
            await self.command(HAND_BACK_SUBJECT, command)
        except Exception as failed:
            log.warning("handing back %s:%d failed (%s); its lease will run out", dispatch.job_id,
                        dispatch.attempt, failed)

    async def keep_lease(self, dispatch: JobDispatch, lease_expires_at: datetime | None,
                     stopped: asyncio.Event, reason: list[str]) -> None:
        """Heartbeat at a third of the lease; stop the attempt when it is no longer ours."""
        lease = (lease_expires_at - datetime.now(UTC)) if lease_expires_at else timedelta(seconds=30)
        period = max(lease.total_seconds() / 3, 0.05)
        beat = Heartbeat(run_id=dispatch.run_id, job_id=dispatch.job_id, attempt=dispatch.attempt,
                         runner_id=self.runner_id)
        wait = period
        while True:
            await asyncio.sleep(wait)  # the heartbeat period itself: a timer by design
            wait = period
            try:
                reply = await self.command(HEARTBEAT_SUBJECT, beat, timeout=min(period, self.patience))
                lease_expires_at = reply.lease_expires_at or lease_expires_at
            except Refused as refused:
                reason.append(f"heartbeat refused: {refused}")
                stopped.set()
                return
            except RETRYABLE:
                # Not refused, just not heard: keep the job while the lease we hold lasts.
                if lease_expires_at is not None and datetime.now(UTC) >= lease_expires_at:
                    reason.append("lease expired before a heartbeat got through")
                    stopped.set()
                    return
                wait = period / 4  # ask again soon: the next period may be past the lease
