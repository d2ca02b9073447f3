"""The runner agent: pull an attempt, claim it, run it while it is ours, report its outcome.

It holds no database credentials: it speaks NATS only. Every command it sends carries
(job, attempt) (runner/commands.py); a refusal means the attempt is no longer its own, and it
stops at once. The dispatch message is acked (double ack) only after the outcome was recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from pathlib import Path

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig

from domain.messages import (
    JOBS_STREAM,
    CommandReply,
    JobDispatch,
    StartJob,
    jobs_subject,
)
from gitcache import GitMirrors
from runner.attempt import AttemptRunner
from runner.attempt_files import AttemptFiles, Kept
from runner.commands import COMMAND_TIMEOUT_SECONDS, RETRYABLE, CommandClient, Refused
from runner.executor import Executor, Outcome
from runner.leftovers import kill_left_over_jobs, remove_left_over_workspaces
from runner.logs import MAX_LOG_BYTES
from runner.presence import announce_presence
from runner.secrets import JobSecrets, open_secrets
from runner.stops import AttemptStops
from sealing import Recipient

log = logging.getLogger(__name__)

ACK_WAIT_SECONDS = 30.0
LONG_POLL_SECONDS = 1.0


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
        max_deliver: int = 20,
        stop_grace: float = 20.0,
        max_log_bytes: int = MAX_LOG_BYTES,
        lease_seconds: float = 30.0,
        files: AttemptFiles | None = None,
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.executor = executor
        self.runner_id = runner_id
        self.pool = pool
        self.slots = slots
        self.max_deliver = max_deliver
        # Told to stop, the runner takes no new job and lets running ones finish for this
        # long; then it kills them and hands their attempts back (they run again elsewhere).
        self.stop_grace = stop_grace
        # How long a claim, heartbeat or outcome report waits for its reply before asking again:
        # a third of the lease, so that one reply lost in a reconnect never costs the lease.
        self.commands = CommandClient(nc, runner_id, min(max(lease_seconds / 3, 0.05), COMMAND_TIMEOUT_SECONDS))
        self._hand_back_now = asyncio.Event()
        self.stops = AttemptStops(nc)
        self.workspaces = data_dir / "workspaces"
        self.attempts = AttemptRunner(self.js, executor, GitMirrors(data_dir / "mirrors"), runner_id=runner_id,
                                      max_log_bytes=max_log_bytes, files=files)
        self._background: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        # A previous life of this runner may have died mid-job: what its jobs left goes first.
        killed = kill_left_over_jobs(self.runner_id)
        removed = remove_left_over_workspaces(self.workspaces)
        log.info("runner %s serves pool %s with %d slots (%d left-over job processes killed, %d workspaces "
                 "removed)", self.runner_id, self.pool, self.slots, len(killed), len(removed))
        grace = asyncio.create_task(self._grace_after(stop))
        await self.stops.start()  # before the first job: no cancel of ours goes unheard
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(announce_presence(self.nc, self.runner_id, self.pool, self.slots, stop))
                for _ in range(self.slots):
                    group.create_task(self._slot(stop))
        finally:
            grace.cancel()
            await self.stops.close()
            if self._background:
                await asyncio.wait(self._background)

    async def _grace_after(self, stop: asyncio.Event) -> None:
        await stop.wait()
        log.info("runner %s stopping: no new jobs; running ones have %.0fs to finish", self.runner_id,
                 self.stop_grace)
        await asyncio.sleep(self.stop_grace)  # the grace period itself, not a poll
        self._hand_back_now.set()

    async def _subscribe(self):
        subject = jobs_subject(self.pool)
        config = ConsumerConfig(
            durable_name=f"runners-{self.pool}",
            ack_policy=AckPolicy.EXPLICIT,
            filter_subject=subject,
            ack_wait=ACK_WAIT_SECONDS,
            # Past this many deliveries a dispatch goes to the dead-letter stream.
            max_deliver=self.max_deliver,
        )
        return await self.js.pull_subscribe(subject, durable=config.durable_name, stream=JOBS_STREAM, config=config)

    async def _slot(self, stop: asyncio.Event) -> None:
        """One job at a time. The subscription is made anew whenever fetching fails: NATS
        restarting, or the queue (or its consumer) lost and made again by the scheduler."""
        subscription = None
        while not stop.is_set():
            try:
                subscription = subscription or await self._subscribe()
                messages = await subscription.fetch(1, timeout=LONG_POLL_SECONDS)
            except TimeoutError:
                continue  # nothing arrived during the long poll
            except Exception:
                log.warning("fetching a job failed; subscribing again", exc_info=True)
                if subscription is not None:
                    with contextlib.suppress(Exception):
                        await subscription.unsubscribe()
                subscription = None
                await asyncio.sleep(1.0)  # do not spin while NATS is away
                continue
            for message in messages:
                try:
                    await self.handle(message)
                except Exception:  # one job's surprise must not stop this slot, or the runner
                    log.exception("handling a dispatch failed; its message is redelivered")
        if subscription is not None:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def handle(self, message: Msg) -> None:
        dispatch = msgspec.json.decode(message.data, type=JobDispatch)
        # A key pair for this claim only, if the job lists secrets: they come back sealed to it.
        recipient = Recipient() if dispatch.lists_secrets else None
        start = StartJob(run_id=dispatch.run_id, job_id=dispatch.job_id, attempt=dispatch.attempt,
                         runner_id=self.runner_id, executor=self.executor.name, pool=self.pool,
                         seal_to=recipient.public_key if recipient is not None else None)
        try:
            claim = await self.commands.claim(start)
        except Refused as refused:
            log.info("attempt %s:%d is not ours: %s", dispatch.job_id, dispatch.attempt, refused)
            await message.ack_sync()  # nobody should run this attempt any more
            return
        except RETRYABLE:
            await message.nak(delay=1.0)  # the command service is away: try again soon
            return
        workdir = self.workspaces / f"{dispatch.job_id}-{dispatch.attempt}"
        keep_alive = asyncio.create_task(_keep_in_progress(message))
        try:
            secrets = open_secrets(claim, recipient, dispatch.job_id, dispatch.attempt)
            ended = await self._run_fenced(dispatch, claim, workdir, secrets)
            if ended is not None:
                await self.commands.report(dispatch, *ended)
        finally:
            keep_alive.cancel()
        # The double ack, only once the outcome is recorded, and the clean-up: neither holds
        # up this slot's next job. A lost ack only means a redelivery, which the command
        # service refuses (the attempt has ended), and the message is acked then.
        self._in_background(self._finish_message(message, workdir))


    async def _run_fenced(self, dispatch: JobDispatch, claim: CommandReply, workdir: Path,
                          secrets: JobSecrets) -> Kept | None:
        """Run the attempt while it is ours. None: it stopped being ours, and was killed."""
        stopped = asyncio.Event()
        reason: list[str] = []

        def on_cancelled() -> None:
            reason.append("cancelled")
            stopped.set()

        self.stops.watch(dispatch.job_id, dispatch.attempt, on_cancelled)
        execution = asyncio.create_task(self.attempts.run(dispatch, workdir, claim, secrets))
        guard = asyncio.create_task(self.commands.keep_lease(dispatch, claim.lease_expires_at, stopped, reason))
        stop_wait = asyncio.create_task(stopped.wait())
        grace_over = asyncio.create_task(self._hand_back_now.wait())
        try:
            await asyncio.wait({execution, stop_wait, grace_over}, return_when=asyncio.FIRST_COMPLETED)
            if execution.done():
                try:
                    return execution.result()
                except Exception as failed:  # ours, not the job's: the attempt fails saying so
                    log.exception("attempt %s:%d failed in the runner", dispatch.job_id, dispatch.attempt)
                    return Kept(Outcome(exit_code=None, error=f"the runner failed: {type(failed).__name__}: {failed}"),
                                [], None)
            # Refused, cancelled, the lease ran out, or this runner is stopping: kill the job
            # now and report no outcome.
            execution.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await execution
            if grace_over.done() and not stop_wait.done():
                reason.append("runner stopping: handed back")
                await self.commands.hand_back(dispatch)
            log.warning("attempt %s:%d stopped (%s); its process was killed",
                        dispatch.job_id, dispatch.attempt, reason[0] if reason else "stopped")
            return None
        finally:
            for task in (guard, stop_wait, grace_over):
                task.cancel()
            self.stops.forget(dispatch.job_id, dispatch.attempt)


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




async def _keep_in_progress(message: Msg) -> None:
    """Tell JetStream the attempt is still being worked on, so it is not redelivered."""
    while True:
        await asyncio.sleep(ACK_WAIT_SECONDS / 3)
        with contextlib.suppress(Exception):
            await message.in_progress()
