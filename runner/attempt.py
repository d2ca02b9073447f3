"""One attempt of a job on this runner, from checkout to its stored artifacts: the workspace, the
job's environment, its log, the executor, and the files kept before and after.

Fencing is not here: the agent (runner/agent.py) runs this while the attempt is its own and
cancels it, process and all, the moment it is not; nothing it stored is then recorded.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

from nats.js import JetStreamContext

from domain.messages import CommandReply, JobDispatch
from gitcache import GitError, GitMirrors
from runner.attempt_files import AttemptFiles, Kept
from runner.executor import Execution, Executor, Outcome
from runner.logs import LogStream
from runner.secrets import JobSecrets


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


class AttemptRunner:
    def __init__(self, js: JetStreamContext, executor: Executor, mirrors: GitMirrors, *, runner_id: str,
                 max_log_bytes: int, files: AttemptFiles | None) -> None:
        self.js = js
        self.executor = executor
        self.mirrors = mirrors
        self.runner_id = runner_id
        self.max_log_bytes = max_log_bytes
        self.files = files  # artifacts and caches (None: a job that has either fails saying so)

    async def run(self, dispatch: JobDispatch, workdir: Path, claim: CommandReply,
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
            remaining = (timeout_at - datetime.now(UTC)).total_seconds() if timeout_at else dispatch.timeout_seconds
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
