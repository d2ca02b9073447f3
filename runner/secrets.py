"""A job's secrets as its runner receives them: sealed to the key it sent with its claim."""

from __future__ import annotations

from typing import NamedTuple

from domain.messages import CommandReply
from domain.secrets import sealed_for
from sealing import Recipient, SealingError


class JobSecrets(NamedTuple):
    values: dict[str, str]
    error: str | None = None  # why the job cannot have them: it fails with this, before it runs


def open_secrets(claim: CommandReply, recipient: Recipient, job_id: str, attempt: int) -> JobSecrets:
    if claim.secrets_error:
        return JobSecrets({}, claim.secrets_error)
    if claim.secrets is None:
        return JobSecrets({})
    try:
        return JobSecrets(recipient.open(claim.secrets, sealed_for(job_id, attempt)))
    except SealingError as failed:
        return JobSecrets({}, f"the job's secrets could not be opened: {failed}")
