"""Shapes that cross process borders over NATS: subjects, job dispatches, runner commands.

They live in the domain because the runner may import only the domain: these are the
contract between the runner and the rest of the system.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from domain.artifacts import ArtifactSpec, UploadedArtifact
from domain.caches import CacheReport, CacheSpec
from domain.workflow import Resources

# JetStream streams and their subjects.
EVENTS_STREAM = "LEDGERCI_EVENTS"
# ledgerci.events.<AggregateType>.<aggregate id>.<EventType>: a live view of one run subscribes
# to `ledgerci.events.Run.<run id>.*`, a reactor to one kind with `ledgerci.events.*.*.<Type>`.
EVENTS_SUBJECT_PREFIX = "ledgerci.events"
JOBS_STREAM = "LEDGERCI_JOBS"
JOBS_SUBJECT_PREFIX = "ledgerci.jobs"  # ledgerci.jobs.<pool>
LOGS_STREAM = "LEDGERCI_LOGS"
LOGS_SUBJECT_PREFIX = "ledgerci.logs"  # ledgerci.logs.<job_id>.<attempt>
DEAD_STREAM = "LEDGERCI_DEAD"
DEAD_SUBJECT_PREFIX = "ledgerci.dead"  # messages that reached max_deliver

# Runner commands are NATS requests answered by the command service (queue group).
START_JOB_SUBJECT = "ledgerci.cmd.start_job"
HEARTBEAT_SUBJECT = "ledgerci.cmd.heartbeat"
FINISH_JOB_SUBJECT = "ledgerci.cmd.finish_job"
HAND_BACK_SUBJECT = "ledgerci.cmd.hand_back"
# "Stop this attempt now" (cancel), published after the cancel committed. A runner that
# misses it learns the same at its next heartbeat, which is refused.
CONTROL_SUBJECT_PREFIX = "ledgerci.control"
COMMAND_QUEUE_GROUP = "ledgerci-commands"
# Runners say they are alive (core NATS, not stored): ledgerci.runners.<pool>.<runner id>, every
# PRESENCE_SECONDS, when they stop (slots 0), and at once when someone asks on RUNNERS_PING.
RUNNERS_SUBJECT_PREFIX = "ledgerci.runners"
RUNNERS_PING_SUBJECT = "ledgerci.ping.runners"
PRESENCE_SECONDS = 5.0


def events_subject(aggregate_type: str, aggregate_id: str, event_type: str) -> str:
    return f"{EVENTS_SUBJECT_PREFIX}.{aggregate_type}.{aggregate_id}.{event_type}"


def events_of_type(event_type: str) -> str:
    """The subject filter for every event of one type, whichever aggregate it belongs to."""
    return f"{EVENTS_SUBJECT_PREFIX}.*.*.{event_type}"


def jobs_subject(pool: str) -> str:
    return f"{JOBS_SUBJECT_PREFIX}.{pool}"


def logs_subject(job_id: str, attempt: int) -> str:
    return f"{LOGS_SUBJECT_PREFIX}.{job_id}.{attempt}"


def log_chunk_msg_id(job_id: str, attempt: int, number: int) -> str:
    """A log chunk's Nats-Msg-Id: the runner numbers an attempt's chunks from 1."""
    return f"{job_id}:{attempt}:{number}"


def log_chunk_number(headers: dict[str, str] | None) -> int | None:
    """The number of a log chunk, from its headers (None: not one the runner numbered)."""
    _, _, number = (headers or {}).get("Nats-Msg-Id", "").rpartition(":")
    return int(number) if number.isdigit() else None


def presence_subject(pool: str, runner_id: str) -> str:
    return f"{RUNNERS_SUBJECT_PREFIX}.{pool}.{runner_id}"


def control_subject(job_id: str, attempt: int) -> str:
    return f"{CONTROL_SUBJECT_PREFIX}.{job_id}.{attempt}"


def dispatch_msg_id(job_id: str, attempt: int, offer: int = 1) -> str:
    """JetStream drops a retried publish of the same offer (exactly-once publish); a later offer
    of the attempt, made because the first left the queue unstarted, has an id of its own."""
    return f"{job_id}:{attempt}" if offer == 1 else f"{job_id}:{attempt}:{offer}"


class Message(msgspec.Struct, forbid_unknown_fields=False, kw_only=True):
    """Base of every NATS payload. Unknown fields are ignored so older readers survive."""


class EventMessage(Message, frozen=True):
    """One stored event as the relay publishes it (and as the audit API shows it)."""

    position: int  # the notification id: global order in the event store
    aggregate_id: str
    aggregate_type: str
    version: int
    type: str  # past tense, e.g. JobSucceeded
    at: datetime
    actor: str | None
    data: dict[str, Any]


class JobDispatch(Message, frozen=True):
    """What a runner needs to run one attempt of a job."""

    run_id: str
    job_id: str
    attempt: int
    job_name: str
    tenant_id: str
    repository_id: str
    clone_url: str
    commit: str
    ref: str | None
    script: str
    env: dict[str, str]
    image: str | None
    timeout_seconds: int
    # Stable across attempts of one job, so a script can make its own side effects idempotent.
    idempotency_key: str
    resources: Resources | None = None  # limits the Docker executor applies, within the runner's caps
    pool: str = "default"  # the runners it is offered to (ledgerci.jobs.<pool>)
    artifacts: ArtifactSpec | None = None  # what the runner stores of the workspace once the command ends
    cache: CacheSpec | None = None  # what it restores before the command and saves after it
    # Whether the job lists secrets: only then does the runner make a key pair for its claim
    # (most jobs list none, and making one is a third of a millisecond). A dispatch offered
    # before this field existed reads as True: its runner sends a key, as it always did.
    lists_secrets: bool = True


class StartJob(Message, frozen=True):
    run_id: str
    job_id: str
    attempt: int
    runner_id: str
    executor: str = "local"
    pool: str = "default"
    # The runner's X25519 public key for this claim (base64url): the job's secrets come back
    # sealed to it (sealing.to_runner), so the NATS traffic never carries them in the clear.
    seal_to: str | None = None


class Heartbeat(Message, frozen=True):
    run_id: str
    job_id: str
    attempt: int
    runner_id: str


class FinishJob(Message, frozen=True):
    run_id: str
    job_id: str
    attempt: int
    runner_id: str
    exit_code: int | None
    error: str | None = None
    timed_out: bool = False  # the runner killed the job at its deadline
    artifacts: list[UploadedArtifact] = []  # the files it stored for this attempt (domain/artifacts.py)
    cache: CacheReport | None = None  # what it restored and saved (domain/caches.py)


class HandBack(Message, frozen=True):
    """A stopping runner gives its attempt back (it killed the job): run it again elsewhere."""

    run_id: str
    job_id: str
    attempt: int
    runner_id: str


class CommandReply(Message, frozen=True):
    """The answer to a runner command. `refused` means: stop, this attempt is not yours."""

    ok: bool
    refused: bool = False
    error: str | None = None
    # After a start or a heartbeat: the deadlines the runner must respect.
    lease_expires_at: datetime | None = None
    timeout_at: datetime | None = None
    # After a start, for a job that lists `secrets`: their values sealed to the claim's
    # `seal_to`, or why they cannot be given (then the runner fails the job with it).
    secrets: str | None = None
    secrets_error: str | None = None
    # After a start: the files earlier jobs of the run left, to be put in the workspace first.
    inputs: list[ArtifactInput] = []


class ArtifactInput(Message, frozen=True):
    """A file an earlier job of the run stored: where in the workspace, and which object."""

    path: str
    object: str
    size: int
    sha256: str


class RunnerPresence(Message, frozen=True):
    """A runner is alive and serves `pool` with `slots` (0: it is stopping)."""

    runner_id: str
    pool: str
    slots: int
