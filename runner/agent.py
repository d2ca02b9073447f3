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
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.js.api import AckPolicy, ConsumerConfig

from domain.artifacts import UploadedArtifact
from domain.caches import CacheReport
from domain.messages import (
    FINISH_JOB_SUBJECT,
    HAND_BACK_SUBJECT,
    HEARTBEAT_SUBJECT,
    JOBS_STREAM,
    START_JOB_SUBJECT,
    CommandReply,
    EventMessage,
    FinishJob,
    HandBack,
    Heartbeat,
    JobDispatch,
    StartJob,
    control_subject,
    events_subject,
    jobs_subject,
)
from gitcache import GitError, GitMirrors
from runner.attempt_files import AttemptFiles, Kept
from runner.executor import Execution, Executor, Outcome
from runner.leftovers import kill_left_over_jobs, remove_left_over_workspaces
from runner.logs import MAX_LOG_BYTES, LogStream
from runner.presence import announce_presence
from runner.secrets import JobSecrets, open_secrets
from sealing import Recipient

log = logging.getLogger(__name__)

ACK_WAIT_SECONDS = 30.0
COMMAND_TIMEOUT_SECONDS = 10.0
# A claim whose reply was lost (NATS failing over, say) is asked again this many times before
# the dispatch goes back to the queue: asked again by this runner it is the same claim (the
# command is idempotent), while a redelivery to another runner would be refused and acked, and
# the attempt would sit claimed by nobody until its lease ran out.
CLAIM_TRIES = 3
LONG_POLL_SECONDS = 1.0


class Refused(Exception):
    """The command service refused the command: this attempt is not ours any more."""


def job_environment(dispatch: JobDispatch, workdir: Path, runner_id: str,
                    secrets: dict[str, str] | None = None) -> dict[str, str]:
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
        # With LEDGERCI_JOB_ID, how a restarted runner knows its jobs' left-over processes.
        "LEDGERCI_RUNNER_ID": runner_id,
    }
    # The file's env and the secrets may not override what ledgerci itself promises the job.
    return {**base, **dispatch.env, **(secrets or {}), **ledgerci}


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
        self.max_log_bytes = max_log_bytes
        # How long a claim, heartbeat or outcome report waits for its reply before asking again:
        # a third of the lease, so that one reply lost in a reconnect never costs the lease.
        self.patience = min(max(lease_seconds / 3, 0.05), COMMAND_TIMEOUT_SECONDS)
        self._hand_back_now = asyncio.Event()
        self.workspaces = data_dir / "workspaces"
        self.mirrors = GitMirrors(data_dir / "mirrors")
        self._background: set[asyncio.Task[None]] = set()
        self.files = files  # artifacts and caches (None: a job that has either fails saying so)

    async def run(self, stop: asyncio.Event) -> None:
        # A previous life of this runner may have died mid-job: what its jobs left goes first.
        killed = kill_left_over_jobs(self.runner_id)
        removed = remove_left_over_workspaces(self.workspaces)
        log.info("runner %s serves pool %s with %d slots (%d left-over job processes killed, %d workspaces "
                 "removed)", self.runner_id, self.pool, self.slots, len(killed), len(removed))
        grace = asyncio.create_task(self._grace_after(stop))
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(announce_presence(self.nc, self.runner_id, self.pool, self.slots, stop))
                for _ in range(self.slots):
                    group.create_task(self._slot(stop))
        finally:
            grace.cancel()
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
        # A key pair for this claim only: the job's secrets come back sealed to it.
        recipient = Recipient()
        start = StartJob(run_id=dispatch.run_id, job_id=dispatch.job_id, attempt=dispatch.attempt,
                         runner_id=self.runner_id, executor=self.executor.name, pool=self.pool,
                         seal_to=recipient.public_key)
        try:
            claim = await self._claim(start)
        except Refused as refused:
            log.info("attempt %s:%d is not ours: %s", dispatch.job_id, dispatch.attempt, refused)
            await message.ack_sync()  # nobody should run this attempt any more
            return
        except (TimeoutError, NoRespondersError, CommandFailed):
            await message.nak(delay=1.0)  # the command service is away: try again soon
            return
        workdir = self.workspaces / f"{dispatch.job_id}-{dispatch.attempt}"
        keep_alive = asyncio.create_task(_keep_in_progress(message))
        try:
            secrets = open_secrets(claim, recipient, dispatch.job_id, dispatch.attempt)
            ended = await self._run_fenced(dispatch, claim, workdir, secrets)
            if ended is not None:
                await self._report(dispatch, *ended)
        finally:
            keep_alive.cancel()
        # The double ack, only once the outcome is recorded, and the clean-up: neither holds
        # up this slot's next job. A lost ack only means a redelivery, which the command
        # service refuses (the attempt has ended), and the message is acked then.
        self._in_background(self._finish_message(message, workdir))

    async def _claim(self, start: StartJob) -> CommandReply:
        for _ in range(CLAIM_TRIES - 1):
            try:
                return await self._command(START_JOB_SUBJECT, start, timeout=self.patience)
            except TimeoutError:
                log.info("claim of %s:%d not answered in %.1fs; asking again", start.job_id, start.attempt,
                         self.patience)
        return await self._command(START_JOB_SUBJECT, start, timeout=self.patience)

    async def _run_fenced(self, dispatch: JobDispatch, claim: CommandReply, workdir: Path,
                          secrets: JobSecrets) -> Kept | None:
        """Run the attempt while it is ours. None: it stopped being ours, and was killed."""
        stopped = asyncio.Event()
        reason: list[str] = []

        async def on_control(_: Msg) -> None:
            reason.append("cancelled")
            stopped.set()

        async def on_cancelled(message: Msg) -> None:
            # Whoever cancelled it (a user through a gateway, a newer run of its concurrency
            # group through the planner), the relay publishes the stored JobCancelled.
            event = msgspec.json.decode(message.data, type=EventMessage)
            if (event.data.get("job_id"), event.data.get("attempt")) == (dispatch.job_id, dispatch.attempt):
                await on_control(message)

        control = await self.nc.subscribe(control_subject(dispatch.job_id, dispatch.attempt), cb=on_control)
        cancelled = await self.nc.subscribe(events_subject("Run", dispatch.run_id, "JobCancelled"), cb=on_cancelled)
        execution = asyncio.create_task(self._execute(dispatch, workdir, claim, secrets))
        guard = asyncio.create_task(self._guard(dispatch, claim.lease_expires_at, stopped, reason))
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
                await self._hand_back(dispatch)
            log.warning("attempt %s:%d stopped (%s); its process was killed",
                        dispatch.job_id, dispatch.attempt, reason[0] if reason else "stopped")
            return None
        finally:
            for task in (guard, stop_wait, grace_over):
                task.cancel()
            for subscription in (control, cancelled):
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()

    async def _guard(self, dispatch: JobDispatch, lease_expires_at: datetime | None,
                     stopped: asyncio.Event, reason: list[str]) -> None:
        """Heartbeat at a third of the lease; stop the attempt when it is no longer ours."""
        lease = (lease_expires_at - _now()) if lease_expires_at else timedelta(seconds=30)
        period = max(lease.total_seconds() / 3, 0.05)
        beat = Heartbeat(run_id=dispatch.run_id, job_id=dispatch.job_id, attempt=dispatch.attempt,
                         runner_id=self.runner_id)
        wait = period
        while True:
            await asyncio.sleep(wait)  # the heartbeat period itself: a timer by design
            wait = period
            try:
                reply = await self._command(HEARTBEAT_SUBJECT, beat, timeout=min(period, self.patience))
                lease_expires_at = reply.lease_expires_at or lease_expires_at
            except Refused as refused:
                reason.append(f"heartbeat refused: {refused}")
                stopped.set()
                return
            except (TimeoutError, NoRespondersError, CommandFailed):
                # Not refused, just not heard: keep the job while the lease we hold lasts.
                if lease_expires_at is not None and _now() >= lease_expires_at:
                    reason.append("lease expired before a heartbeat got through")
                    stopped.set()
                    return
                wait = period / 4  # ask again soon: the next period may be past the lease

    async def _execute(self, dispatch: JobDispatch, workdir: Path, claim: CommandReply,
                       secrets: JobSecrets) -> Kept:
        """The attempt from checkout to its stored artifacts (all of it killed if it stops
        being ours: nothing it stored is then recorded)."""
        logs = LogStream(self.js, dispatch.job_id, dispatch.attempt, secrets=tuple(secrets.values.values()),
                         max_bytes=self.max_log_bytes)
        try:
            if secrets.error:  # e.g. a secret the job lists is set nowhere: fail it before it runs
                await logs.write(f"ledgerci: {secrets.error}\n".encode())
                return Kept(Outcome(exit_code=None, error=secrets.error), [], None)
            shutil.rmtree(workdir, ignore_errors=True)
            workdir.parent.mkdir(parents=True, exist_ok=True)
            try:
                await asyncio.to_thread(self._checkout, dispatch, workdir)
            except GitError as failed:
                await logs.write(f"ledgerci: checkout failed: {failed}\n".encode())
                return Kept(Outcome(exit_code=None, error=f"checkout failed: {failed}"), [], None)

            async def say(line: str) -> None:
                await logs.write(line.encode())

            cache = None
            if claim.inputs or dispatch.artifacts or dispatch.cache:
                if self.files is None:
                    return Kept(Outcome(exit_code=None, error="this runner keeps no artifacts or caches"), [], None)
                unready, cache = await self.files.before(dispatch, claim.inputs, workdir, say)
                if unready:
                    await say(f"ledgerci: {unready}\n")
                    return Kept(Outcome(exit_code=None, error=unready), [], None)
            timeout_at = claim.timeout_at
            # The timeout is an absolute deadline from the claim: time spent waiting for a
            # checkout or a slot counts.
            remaining = (timeout_at - _now()).total_seconds() if timeout_at else dispatch.timeout_seconds
            execution = Execution(
                script=dispatch.script, env=job_environment(dispatch, workdir, self.runner_id, secrets.values),
                workdir=workdir,
                image=dispatch.image, timeout_seconds=max(remaining, 0.0), resources=dispatch.resources,
                labels={"run": dispatch.run_id, "job": dispatch.job_id, "attempt": str(dispatch.attempt),
                        "tenant": dispatch.tenant_id},
            )
            outcome = await self.executor.run(execution, logs.write)
            kept = Kept(outcome, [], cache)
            if self.files is not None and (dispatch.artifacts or cache):
                kept = await self.files.after(dispatch, workdir, outcome, cache, say)
            if kept.outcome.error:
                await logs.write(f"\nledgerci: {kept.outcome.error}\n".encode())
            return kept
        finally:
            await logs.close()

    def _checkout(self, dispatch: JobDispatch, workdir: Path) -> None:
        self.mirrors.checkout(dispatch.repository_id, dispatch.clone_url, dispatch.commit, workdir)

    async def _report(self, dispatch: JobDispatch, outcome: Outcome, artifacts: list[UploadedArtifact],
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
                await self._command(FINISH_JOB_SUBJECT, finish, timeout=self.patience)
                return
            except Refused as refused:
                log.warning("outcome of %s:%d refused: %s", dispatch.job_id, dispatch.attempt, refused)
                return
            except (TimeoutError, NoRespondersError, CommandFailed) as failed:
                log.warning("reporting %s:%d failed (%s); retrying", dispatch.job_id, dispatch.attempt, failed)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _hand_back(self, dispatch: JobDispatch) -> None:
        """Give the attempt back so it runs again at once elsewhere. If this fails the lease
        runs out instead and the reaper records the runner lost: slower, never wrong."""
        command = HandBack(run_id=dispatch.run_id, job_id=dispatch.job_id, attempt=dispatch.attempt,
                           runner_id=self.runner_id)
        try:
            await self._command(HAND_BACK_SUBJECT, command)
        except Exception as failed:
            log.warning("handing back %s:%d failed (%s); its lease will run out", dispatch.job_id,
                        dispatch.attempt, failed)

    async def _command(self, subject: str, command: msgspec.Struct,
                       timeout: float = COMMAND_TIMEOUT_SECONDS) -> CommandReply:
        response = await self.nc.request(subject, msgspec.json.encode(command), timeout=timeout)
        reply = msgspec.json.decode(response.data, type=CommandReply)
        if reply.refused:
            raise Refused(reply.error)
        if not reply.ok:
            raise CommandFailed(reply.error)
        return reply


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


class CommandFailed(Exception):
    """The command service could not record the command (not a refusal): retry it."""


def _now() -> datetime:
    return datetime.now(UTC)


async def _keep_in_progress(message: Msg) -> None:
    """Tell JetStream the attempt is still being worked on, so it is not redelivered."""
    while True:
        await asyncio.sleep(ACK_WAIT_SECONDS / 3)
        with contextlib.suppress(Exception):
            await message.in_progress()
