"""The executor contract: run one attempt's script somewhere, streaming its output.

Lifecycle, as woodpecker's backends have it, kept short: the agent prepares a workspace,
calls `run` (start, tail output, wait), and cleans up. Job failures (a non-zero exit, a
timeout) are told apart from infrastructure failures (`error` set, exit code None).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

import msgspec

from domain.workflow import Resources

OutputSink = Callable[[bytes], Awaitable[None]]


class Execution(msgspec.Struct, frozen=True, kw_only=True):
    script: str
    env: dict[str, str]
    workdir: Path
    image: str | None
    timeout_seconds: float
    resources: Resources | None = None  # what the job asks for; a container executor caps it
    # Who the attempt belongs to (run, job, attempt, tenant): a container executor labels its
    # containers with them, so they can be found, and removed, by what they ran.
    labels: dict[str, str] = {}


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    exit_code: int | None
    error: str | None = None  # set when the job did not end by itself (timed out, could not start)
    timed_out: bool = False


class Executor(Protocol):
    name: str  # recorded in the job's history: `local`, `docker`…

    async def run(self, execution: Execution, output: OutputSink) -> Outcome: ...
