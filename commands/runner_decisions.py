"""What a runner's command (claim, heartbeat, report, hand-back) decides on its run, and what
its reply carries. `RunCommands` decides them, alone or in groups (commands/runs.py); this
module is only their vocabulary, so both ways use one mapping.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import datetime
from typing import NamedTuple
from uuid import UUID

from commands.dispatch import inputs_of
from domain.errors import InvalidTransitionError, RunNotFoundError, StaleAttemptError
from domain.job import Job
from domain.messages import CommandReply, FinishJob, HandBack, Heartbeat, StartJob
from domain.run import Run

RunnerCommand = StartJob | Heartbeat | FinishJob | HandBack
# What refuses a runner command: the runner stops working on that attempt.
RUNNER_REFUSALS = (StaleAttemptError, InvalidTransitionError, RunNotFoundError)


class CommandResult(NamedTuple):
    """A runner command's answer, and the job as the command left it when it changed
    something (for metrics)."""

    reply: CommandReply
    changed: Job | None = None


class RunnerDecision(NamedTuple):
    """A runner command as a decision on its run, and what its reply carries."""

    run_id: UUID
    job_id: str
    decide: Callable[[Run], bool]
    with_deadlines: bool = True
    with_inputs: bool = False


def runner_decision(command: RunnerCommand, clock: Callable[[], datetime]) -> RunnerDecision:
    """The command as a decision; the clock is read when deciding (a decision made again is
    made at its own time)."""
    job_id, attempt, runner_id = command.job_id, command.attempt, command.runner_id
    match command:
        case StartJob():
            return RunnerDecision(
                UUID(command.run_id), job_id,
                lambda run: run.start_job(job_id, attempt, runner_id, clock(), executor=command.executor,
                                          pool=command.pool),
                with_inputs=True)
        case Heartbeat():
            return RunnerDecision(UUID(command.run_id), job_id,
                                  lambda run: run.heartbeat(job_id, attempt, runner_id, clock()))
        case FinishJob():
            return RunnerDecision(
                UUID(command.run_id), job_id,
                lambda run: run.finish_job(job_id, attempt, runner_id, command.exit_code, clock(), command.error,
                                           timed_out=command.timed_out, artifacts=command.artifacts,
                                           cache=command.cache),
                with_deadlines=False)
        case HandBack():
            return RunnerDecision(UUID(command.run_id), job_id,
                                  lambda run: run.hand_back(job_id, attempt, runner_id, clock()),
                                  with_deadlines=False)
    raise TypeError(f"not a runner command: {command!r}")


def runner_reply(run: Run, decision: RunnerDecision, appended: bool, now: datetime) -> CommandResult:
    """The accepted command's reply, from the run as the decision left it."""
    job = run.job(decision.job_id)
    deadlines = ({"lease_expires_at": job.lease_expires_at, "timeout_at": job.timeout_at}
                 if decision.with_deadlines else {})
    inputs = inputs_of(run, decision.job_id, now) if decision.with_inputs else []
    # A copy: the run is kept for the next command, which may change its jobs.
    return CommandResult(CommandReply(ok=True, inputs=inputs, **deadlines), copy.copy(job) if appended else None)


def refused_result(refused: Exception) -> CommandResult:
    return CommandResult(CommandReply(ok=False, refused=True, error=str(refused)))
