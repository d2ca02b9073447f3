"""The local executor: the script runs as a process on the runner's machine, under `sh -e`."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal

from runner.executor import Execution, Outcome, OutputSink

READ_SIZE = 64 * 1024
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class LocalExecutor:
    async def run(self, execution: Execution, output: OutputSink) -> Outcome:
        try:
            process = await asyncio.create_subprocess_exec(
                "sh", "-e", "-c", execution.script,
                cwd=execution.workdir,
                env=execution.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                # Its own process group, so a timeout or cancel kills everything it started.
                start_new_session=True,
                # And it dies with the runner: a runner killed outright leaves no job behind
                # to race the retry on another runner.
                preexec_fn=_die_with_parent,
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


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _kill_group(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
