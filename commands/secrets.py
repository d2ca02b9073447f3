"""Secrets: set, listed and deleted by their owner's principal; resolved for a job's claim.

Values are encrypted here, before any event is made, and decrypted only to be sealed to the
runner that holds the job's current attempt (sealing.to_runner). Plain text never reaches an
event, a read model, a log line or a NATS message; this module never logs a value.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import NamedTuple
from uuid import UUID

import msgspec

from commands.app import LedgerApp
from commands.principal import Principal
from commands.runner_decisions import CommandResult
from domain.errors import RepositoryNotFoundError, SecretsUnavailableError, TenantNotFoundError
from domain.job import Job
from domain.messages import StartJob
from domain.registry import Repository, SecretHolder, StatusTarget, StoredSecret, Webhook
from domain.run import Run
from domain.secrets import (
    Scope,
    check_name,
    check_value,
    context,
    for_job,
    sealed_for,
    status_token_context,
    webhook_context,
)
from domain.status import JobStatus
from domain.statuses import StatusKind, check_target
from domain.webhooks import check_secret
from sealing import Keyring, KeyringError, SealingError, seal

# The command service reads runs and owners on the runner's behalf, for every tenant.
_SERVICE = Principal("command-service", None)
# The claim's reply must fit in one NATS message (1 MiB by default, with room for the rest):
# past this the job fails saying so, instead of its claim never being answered.
MAX_SEALED_BYTES = 512 * 1024


class SecretInfo(NamedTuple):
    """What may be shown of a secret: never its value."""

    name: str
    scope: Scope
    owner_id: str
    set_at: datetime
    set_by: str


class SecretBook:
    def __init__(self, app: LedgerApp, keyring: Keyring | None) -> None:
        self.app = app
        self.keyring = keyring

    # ----- the owner's commands ----------------------------------------------------------------

    def set(self, scope: Scope, owner_id: str, name: str, value: str, principal: Principal) -> SecretInfo:
        check_name(name)
        check_value(value)
        keyring = self._keyring()
        ciphertext = keyring.encrypt(value, context(scope, owner_id, name))
        holder = self._change(scope, owner_id, principal,
                              lambda h: h.set_secret(name, ciphertext, self.app.clock(), principal.name))
        return _info(scope, owner_id, name, holder.secrets[name])

    def delete(self, scope: Scope, owner_id: str, name: str, principal: Principal) -> None:
        """Idempotent: deleting a secret that is not there changes nothing."""
        check_name(name)
        self._change(scope, owner_id, principal, lambda h: h.delete_secret(name, self.app.clock(), principal.name))

    def list(self, scope: Scope, owner_id: str, principal: Principal) -> list[SecretInfo]:
        holder = self._owner(scope, owner_id, principal)
        return [_info(scope, owner_id, name, stored) for name, stored in sorted(holder.secrets.items())]

    # ----- a repository's webhook secret (never a job's) ----------------------------------------

    def set_webhook(self, repository_id: str, secret: str, host_name: str | None, principal: Principal) -> Webhook:
        check_secret(secret)
        ciphertext = self.encrypt(secret, webhook_context(repository_id))
        repository = self._change_repository(
            repository_id, principal, lambda r: r.configure_webhook(ciphertext, host_name, self.app.clock(),
                                                                    principal.name))
        assert repository.webhook is not None
        return repository.webhook

    def remove_webhook(self, repository_id: str, principal: Principal) -> None:
        """Idempotent: removing a webhook that is not there changes nothing."""
        self._change_repository(repository_id, principal, lambda r: r.remove_webhook(self.app.clock(), principal.name))

    def webhook(self, repository_id: str) -> tuple[str, Webhook, str]:
        """(the secret, the webhook, the tenant) a delivery for the repository is checked with.
        An unknown or deleted repository and one without a webhook are the same 404: the
        caller is not authenticated yet, and learns nothing of which repositories exist."""
        missing = RepositoryNotFoundError(f"no webhook is configured for repository {repository_id!r}")
        try:
            repository = self.app.registry.get_repository(repository_id, _SERVICE)
        except RepositoryNotFoundError:
            raise missing from None
        if repository.webhook is None:
            raise missing
        secret = self.decrypt(repository.webhook.ciphertext, webhook_context(repository_id), "the webhook secret")
        return secret, repository.webhook, repository.tenant_id

    # ----- where a repository's commit statuses go (the token, never a job's) -------------------

    def set_status_target(self, repository_id: str, kind: StatusKind, api_url: str, project: str, token: str,
                          principal: Principal) -> StatusTarget:
        check_target(kind, api_url, project)
        check_value(token)
        ciphertext = self.encrypt(token, status_token_context(repository_id))
        repository = self._change_repository(
            repository_id, principal, lambda r: r.set_status_target(kind.value, api_url, project, ciphertext,
                                                                    self.app.clock(), principal.name))
        assert repository.status_target is not None
        return repository.status_target

    def remove_status_target(self, repository_id: str, principal: Principal) -> None:
        self._change_repository(repository_id, principal,
                                lambda r: r.remove_status_target(self.app.clock(), principal.name))

    def _change_repository(self, repository_id: str, principal: Principal,
                           decide: Callable[[Repository], bool]) -> Repository:
        return self.app.store.decide(lambda: self.app.registry.get_repository(repository_id, principal), decide,
                                     f"repository {repository_id!r}")

    def status_target(self, repository_id: str) -> tuple[str, StatusTarget] | None:
        """(the token, the target) the repository's statuses are sent with; None without one."""
        try:
            repository = self.app.registry.get_repository(repository_id, _SERVICE)
        except RepositoryNotFoundError:
            return None
        if repository.status_target is None:
            return None
        token = self.decrypt(repository.status_target.ciphertext, status_token_context(repository_id),
                              "the status token")
        return token, repository.status_target

    # ----- for the other holders of an encrypted credential (commands/subscriptions.py) ---------

    def encrypt(self, value: str, bound_to: str) -> str:
        return self._keyring().encrypt(value, bound_to)

    def decrypt(self, ciphertext: str, bound_to: str, what: str) -> str:
        try:
            return self._keyring().decrypt(ciphertext, bound_to)
        except KeyringError as failed:
            raise SecretsUnavailableError(f"{what} cannot be decrypted: {failed}") from None

    def _owner(self, scope: Scope, owner_id: str, principal: Principal) -> SecretHolder:
        """The tenant or repository, if the principal may see it (else 404, as if absent)."""
        if scope is Scope.REPOSITORY:
            return self.app.registry.get_repository(owner_id, principal)
        if not principal.can_see(owner_id):
            raise TenantNotFoundError(f"tenant {owner_id!r} not found")
        return self.app.registry.get_tenant(owner_id)

    def _change(self, scope: Scope, owner_id: str, principal: Principal,
                decide: Callable[[SecretHolder], bool]) -> SecretHolder:
        # Changed meanwhile (a quota, another secret): the store decides again on what is there.
        return self.app.store.decide(lambda: self._owner(scope, owner_id, principal), decide,
                                     f"{scope.value} {owner_id!r}")

    def _keyring(self) -> Keyring:
        if self.keyring is None:
            raise SecretsUnavailableError("secrets are not configured here: LEDGERCI_SECRET_KEY is not set")
        return self.keyring

    # ----- a runner's claim ----------------------------------------------------------------------

    def seal_for_claim(self, command: StartJob, result: CommandResult) -> CommandResult:
        """The claim's reply with the job's secrets sealed to the claiming runner's key.

        Only a granted claim gets them (the reply is ok only when this runner now holds the
        current attempt), and only the names the job lists. A job asking for a secret that
        is set nowhere gets `secrets_error` instead, and its runner fails it with that
        message: running it without would fail later and less clearly, or worse, succeed.
        """
        if not result.reply.ok:
            return result
        # Most jobs list no secrets: a fresh claim's changed job says so without reading the run.
        if result.changed is not None and not result.changed.spec.secrets:
            return result
        run = self.app.runs.get_run(UUID(command.run_id), _SERVICE)
        job = run.job(command.job_id)
        if not job.spec.secrets:
            return result
        if job.status is not JobStatus.RUNNING or job.attempt != command.attempt or job.runner_id != command.runner_id:
            return result  # the attempt moved on since the claim (cancelled at once): give nothing
        try:
            sealed = self._seal(command, run, job)
        except SecretsUnavailableError as unavailable:
            return result._replace(reply=msgspec.structs.replace(result.reply, secrets_error=str(unavailable)))
        return result._replace(reply=msgspec.structs.replace(result.reply, secrets=sealed))

    def _seal(self, command: StartJob, run: Run, job: Job) -> str:
        if command.seal_to is None:
            raise SecretsUnavailableError("this runner sent no key to seal secrets to; it predates secrets")
        keyring = self._keyring()
        tenant = self.app.registry.get_tenant(run.tenant_id)
        try:
            repository = self.app.registry.get_repository(run.repository_id, _SERVICE)
        except RepositoryNotFoundError:  # deleted while the run went on: its secrets went with it
            raise SecretsUnavailableError(f"repository {run.repository_id} was deleted, its secrets too") from None
        chosen, missing = for_job(
            job.spec.secrets,
            tenant={name: (Scope.TENANT, run.tenant_id, s) for name, s in tenant.secrets.items()},
            repository={name: (Scope.REPOSITORY, run.repository_id, s) for name, s in repository.secrets.items()},
        )
        if missing:
            raise SecretsUnavailableError(
                f"secret{'s' if len(missing) > 1 else ''} {', '.join(missing)} not set for repository "
                f"{run.repository_id} or tenant {run.tenant_id}"
            )
        try:
            values = {name: keyring.decrypt(stored.ciphertext, context(scope, owner, name))
                      for name, (scope, owner, stored) in chosen.items()}
            sealed = seal(values, command.seal_to, sealed_for(command.job_id, command.attempt))
        except KeyringError as failed:
            raise SecretsUnavailableError(f"a secret of this job cannot be decrypted: {failed}") from None
        except SealingError as failed:
            raise SecretsUnavailableError(f"cannot seal secrets to this runner's key: {failed}") from None
        if len(sealed) > MAX_SEALED_BYTES:
            raise SecretsUnavailableError(
                f"the job's secrets come to {len(sealed)} bytes sealed, over the {MAX_SEALED_BYTES} a claim carries"
            )
        return sealed


def _info(scope: Scope, owner_id: str, name: str, stored: StoredSecret) -> SecretInfo:
    return SecretInfo(name=name, scope=scope, owner_id=owner_id, set_at=stored.set_at, set_by=stored.set_by)
