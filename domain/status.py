"""The names of run and job states, as API.md spells them."""

from enum import StrEnum


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # A push that starts no run: no workflow file at the commit, or the ref is filtered out.
    SKIPPED = "skipped"

    @property
    def is_final(self) -> bool:
        return self not in (RunStatus.QUEUED, RunStatus.RUNNING)


class Abandonment(StrEnum):
    """Why an attempt ended without a result of its own. Replay acts on this (a stopping
    runner's hand-back uses no retry), never on the reason's wording, which is for people."""

    RUNNER_LOST = "runner_lost"
    TIMED_OUT = "timed_out"
    RUNNER_STOPPED = "runner_stopped"

    @property
    def reason(self) -> str:
        """What users read: `runner lost`, `timed out`, `runner stopped`."""
        return self.value.replace("_", " ")


class JobStatus(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"

    @property
    def is_final(self) -> bool:
        return self in FINAL_JOB_STATUSES


FINAL_JOB_STATUSES = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.SKIPPED}
)
