"""The runner agent: pull an attempt, claim it, run it, stream its log, report its outcome.

It holds no database credentials: it speaks NATS only. Every command it sends carries
(job, attempt); a refusal means the attempt is no longer its own, and it stops at once.
The dispatch message is acked (double ack) only after the outcome was recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from pathlib import Path

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.js.api import AckPolicy, ConsumerConfig

from domain.messages import (
    FINISH_JOB_SUBJECT,
    JOBS_STREAM,
    START_JOB_SUBJECT,
    CommandReply,
    FinishJob,
    JobDispatch,
    StartJob,
    jobs_subject,
)
from gitcache import GitError, GitMirrors
from runner.executor import Execution, Executor, Outcome
from runner.logs import LogStream

log = logging.getLogger(__name__)

ACK_WAIT_SECONDS = 30.0
COMMAND_TIMEOUT_SECONDS = 10.0
LONG_POLL_SECONDS = 1.0


class Refused(Exception):
    """The command service refused the command: this attempt is not ours any more."""


def job_environment(dispatch: JobDispatch, workdir: Path) -> dict[str, str]:
    """The environment of API.md, on a clean base: the runner's own variables never leak in."""
    base = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(workdir),
        "LANG": "C.UTF-8",
    }
    ledgerci = {
        "CI": "true",
        "LEDGERCI": "true",
        "LEDGERCI_RUN_ID": dispatch.run_id,
        "LEDGERCI_JOB_ID": dispatch.job_id,
        "LEDGERCI_JOB_NAME": dispatch.job_name,
        "LEDGERCI_ATTEMPT": str(dispatch.attempt),
        "LEDGERCI_IDEMPOTENCY_KEY": dispatch.idempotency_key,
        "LEDGERCI_REPOSITORY_ID": dispatch.repository_id,
        "LEDGERCI_COMMIT": dispatch.commit,
        "LEDGERCI_REF": dispatch.ref or "",
    }
    # The file's env may not override what ledgerci itself promises the job.
    return {**base, **dispatch.env, **ledgerci}


class RunnerAgent:
    def __init__(
        self,
        nc: NATS,
        executor: Executor,
        *,
        runner_id: str,
        pool: str,
        slots: int,
        data_dir: Path,
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.executor = executor
        self.runner_id = runner_id
        self.pool = pool
        self.slots = slots
        self.workspaces = data_dir / "workspaces"
        self.mirrors = GitMirrors(data_dir / "mirrors")
        self._background: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        subject = jobs_subject(self.pool)
        config = ConsumerConfig(
            durable_name=f"runners-{self.pool}",
            ack_policy=AckPolicy.EXPLICIT,
            filter_subject=subject,
            ack_wait=ACK_WAIT_SECONDS,
        )
        subscription = await self.js.pull_subscribe(
            subject, durable=config.durable_name, stream=JOBS_STREAM, config=config
        )
        log.info("runner %s serves pool %s with %d slots", self.runner_id, self.pool, self.slots)
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(self.slots):
                    group.create_task(self._slot(subscription, stop))
        finally:
            if self._background:
                await asyncio.wait(self._background)
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def _slot(self, subscription, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                messages = await subscription.fetch(1, timeout=LONG_POLL_SECONDS)
            except TimeoutError:
                continue  # nothing arrived during the long poll
            except Exception:
                log.warning("fetching a job failed; retrying", exc_info=True)
                await asyncio.sleep(1.0)  # NATS is reconnecting: do not spin
                continue
            for message in messages:
                await self.handle(message)

    async def handle(self, message: Msg) -> None:
        dispatch = msgspec.json.decode(message.data, type=JobDispatch)
        start = StartJob(run_id=dispatch.run_id, job_id=dispatch.job_id, attempt=dispatch.attempt,
                         runner_id=self.runner_id)
        try:
            await self._command(START_JOB_SUBJECT, start)
        except Refused as refused:
            log.info("attempt %s:%d is not ours: %s", dispatch.job_id, dispatch.attempt, refused)
            await message.ack_sync()  # nobody should run this attempt any more
            return
        except (TimeoutError, NoRespondersError, CommandFailed):
            await message.nak(delay=1.0)  # the command service is away: try again soon
            return
        keep_alive = asyncio.create_task(_keep_in_progress(message))
        workdir = self.workspaces / f"{dispatch.job_id}-{dispatch.attempt}"
        try:
            outcome = await self._execute(dispatch, workdir)
            await self._report(dispatch, outcome)
        finally:
            keep_alive.cancel()
        # The double ack, only once the outcome is recorded, and the clean-up: neither holds
        # up this slot's next job. A lost ack only means a redelivery, which the command
        # service refuses (the attempt has ended), and the message is acked then.
        self._in_background(self._finish_message(message, workdir))

    async def _finish_message(self, message: Msg, workdir: Path) -> None:
        try:
            await message.ack_sync()
        except Exception:
            log.warning("acking a finished job failed; its redelivery will be refused", exc_info=True)
        await asyncio.to_thread(shutil.rmtree, workdir, True)

    def _in_background(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _execute(self, dispatch: JobDispatch, workdir: Path) -> Outcome:
        logs = LogStream(self.js, dispatch.job_id, dispatch.attempt)
        try:
            shutil.rmtree(workdir, ignore_errors=True)
            workdir.parent.mkdir(parents=True, exist_ok=True)
            try:
                await asyncio.to_thread(self._checkout, dispatch, workdir)
            except GitError as failed:
                await logs.write(f"ledgerci: checkout failed: {failed}\n".encode())
                return Outcome(exit_code=None, error=f"checkout failed: {failed}")
            execution = Execution(
                script=dispatch.script, env=job_environment(dispatch, workdir), workdir=workdir,
                image=dispatch.image, timeout_seconds=dispatch.timeout_seconds,
            )
            outcome = await self.executor.run(execution, logs.write)
            if outcome.error:
                await logs.write(f"\nledgerci: {outcome.error}\n".encode())
            return outcome
        finally:
            await logs.close()

    def _checkout(self, dispatch: JobDispatch, workdir: Path) -> None:
        self.mirrors.checkout(dispatch.repository_id, dispatch.clone_url, dispatch.commit, workdir)

    async def _report(self, dispatch: JobDispatch, outcome: Outcome) -> None:
        """Report until the command service has it: the outcome must not be lost."""
        finish = FinishJob(
            run_id=dispatch.run_id, job_id=dispatch.job_id, attempt=dispatch.attempt,
            runner_id=self.runner_id, exit_code=outcome.exit_code, error=outcome.error,
        )
        delay = 0.1
        while True:
            try:
                await self._command(FINISH_JOB_SUBJECT, finish)
                return
            except Refused as refused:
                log.warning("outcome of %s:%d refused: %s", dispatch.job_id, dispatch.attempt, refused)
                return
            except (TimeoutError, NoRespondersError, CommandFailed) as failed:
                log.warning("reporting %s:%d failed (%s); retrying", dispatch.job_id, dispatch.attempt, failed)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _command(self, subject: str, command: msgspec.Struct) -> None:
        response = await self.nc.request(subject, msgspec.json.encode(command), timeout=COMMAND_TIMEOUT_SECONDS)
        reply = msgspec.json.decode(response.data, type=CommandReply)
        if reply.refused:
            raise Refused(reply.error)
        if not reply.ok:
            raise CommandFailed(reply.error)


class CommandFailed(Exception):
    """The command service could not record the command (not a refusal): retry it."""


async def _keep_in_progress(message: Msg) -> None:
    """Tell JetStream the attempt is still being worked on, so it is not redelivered."""
    while True:
        await asyncio.sleep(ACK_WAIT_SECONDS / 3)
        with contextlib.suppress(Exception):
            await message.in_progress()
