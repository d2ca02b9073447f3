"""A job's secrets as its runner receives them: sealed to the key it sent with its claim."""

from __future__ import annotations

from typing import NamedTuple

from domain.messages import CommandReply
from domain.secrets import sealed_for
from sealing import Recipient, SealingError


class JobSecrets(NamedTuple):
    values: dict[str, str]
    error: str | None = None  # why the job cannot have them: it fails with this, before it runs


def open_secrets(claim: CommandReply, recipient: Recipient | None, job_id: str, attempt: int) -> JobSecrets:
    """`recipient`: the key pair the claim sent (None: it sent none, its job listing no secrets)."""
    if claim.secrets_error:
        return JobSecrets({}, claim.secrets_error)
    if claim.secrets is None:
        return JobSecrets({})
    if recipient is None:
        return JobSecrets({}, "secrets came for a claim that sent no key to seal them to")
    try:
        return JobSecrets(recipient.open(claim.secrets, sealed_for(job_id, attempt)))
    except SealingError as failed:
        return JobSecrets({}, f"the job's secrets could not be opened: {failed}")
