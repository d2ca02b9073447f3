"""The local executor: the script runs as a process on the runner's machine, under `sh -e`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal

from runner.executor import Execution, Outcome, OutputSink

READ_SIZE = 64 * 1024
# The job dies with its runner: a runner killed outright leaves no job behind to race the
# retry on another runner. `setpriv` (util-linux) sets PR_SET_PDEATHSIG before exec; a Python
# preexec_fn would do the same but forces a slow fork of the whole runner (~10 ms a job).
_SETPRIV = shutil.which("setpriv")
_DIE_WITH_RUNNER = (_SETPRIV, "--pdeathsig", "KILL", "--") if _SETPRIV else ()


class LocalExecutor:
    name = "local"

    async def run(self, execution: Execution, output: OutputSink) -> Outcome:
        try:
            process = await asyncio.create_subprocess_exec(
                *_DIE_WITH_RUNNER, "sh", "-e", "-c", execution.script,
                cwd=execution.workdir,
                env=execution.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                # Its own process group, so a timeout or cancel kills everything it started.
                start_new_session=True,
            )
        except OSError as failed:
            return Outcome(exit_code=None, error=f"could not start the job: {failed}")
        try:
            async with asyncio.timeout(execution.timeout_seconds):
                await _pump(process, output)
                return Outcome(exit_code=await process.wait())
        except TimeoutError:
            _kill_group(process)
            await process.wait()
            return Outcome(exit_code=None, error="timed out", timed_out=True)
        finally:
            if process.returncode is None:  # cancelled: leave nothing running
                _kill_group(process)
                with contextlib.suppress(ProcessLookupError):
                    await process.wait()


async def _pump(process: asyncio.subprocess.Process, output: OutputSink) -> None:
    assert process.stdout is not None
    while chunk := await process.stdout.read(READ_SIZE):
        await output(chunk)


def _kill_group(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
