"""Tenants, their tokens and their repositories: small aggregates with derived ids.

Ids derive from the natural key (tenant id, repository id, token digest), so creating one
twice hits version 1 of the same stream and a lookup is one keyed read, with no read model
in between (an API call made right after a create sees it).
"""

from __future__ import annotations

from datetime import datetime

import msgspec
from eventsourcing.domain import Aggregate

from domain.ids import repository_aggregate_id, tenant_aggregate_id, token_aggregate_id
from domain.workflow import Priority


class StoredSecret(msgspec.Struct, frozen=True):
    """A secret as its owner holds it: ciphertext (sealing.at_rest), and who set it when."""

    ciphertext: str
    set_at: datetime
    set_by: str


class SecretHolder(Aggregate):
    """Secrets of a tenant or a repository, held as ciphertext in the owner's own stream.

    eventsourcing gives each subclass its own copy of these event classes (`Tenant.SecretSet`,
    `Repository.SecretSet`), so each owner's history names its own events. Setting a secret is
    recorded every time (a new ciphertext cannot be compared with the old one); deleting one
    that is not there records nothing.
    """

    # Each subclass's __init__ sets `self.secrets: dict[str, StoredSecret]`, name to secret (no
    # class annotation: eventsourcing would read one as a field of the aggregate's Created event).

    def set_secret(self, name: str, ciphertext: str, at: datetime, actor: str) -> bool:
        """Always recorded: a new ciphertext of the same value cannot be told from another value."""
        self.trigger_event(self.SecretSet, timestamp=at, name=name, ciphertext=ciphertext, actor=actor)
        return True

    def delete_secret(self, name: str, at: datetime, actor: str) -> bool:
        if name not in self.secrets:
            return False
        self.trigger_event(self.SecretDeleted, timestamp=at, name=name, actor=actor)
        return True

    class SecretSet(Aggregate.Event):
        name: str
        ciphertext: str  # never the value: encrypted before the aggregate sees it
        actor: str

        def apply(self, holder: SecretHolder) -> None:
            holder.secrets[self.name] = StoredSecret(self.ciphertext, self.timestamp, self.actor)

    class SecretDeleted(Aggregate.Event):
        name: str
        actor: str

        def apply(self, holder: SecretHolder) -> None:
            holder.secrets.pop(self.name, None)


ANY_POOL = ("*",)


def pool_allowed(pools: list[str] | tuple[str, ...], pool: str) -> bool:
    return "*" in pools or pool in pools


class Tenant(SecretHolder):
    # Set by TenantUpdated; class attributes (not annotations, which eventsourcing would take for
    # fields of TenantCreated) so a tenant replayed from before they existed reads None, which
    # means: the deployment's default (LEDGERCI_ARTIFACT_TENANT_MAX_BYTES, ...).
    max_artifact_bytes = None  # its stored artifacts at most
    max_cache_bytes = None  # its cache entries at most (least recently used go first)
    max_artifact_days = None  # the longest `expire_in` its files get (a longer one is cut to it)

    class TenantCreated(Aggregate.Created):
        tenant_id: str
        name: str
        weight: int
        max_concurrent_jobs: int
        max_queued_runs: int
        pushes_per_minute: int
        actor: str

    def __init__(
        self,
        tenant_id: str,
        name: str,
        weight: int,
        max_concurrent_jobs: int,
        max_queued_runs: int,
        pushes_per_minute: int,
        actor: str,
    ) -> None:
        self.tenant_id = tenant_id
        self.name = name
        self.weight = weight
        self.max_concurrent_jobs = max_concurrent_jobs
        self.max_queued_runs = max_queued_runs
        self.pushes_per_minute = pushes_per_minute
        self.pools: list[str] = list(ANY_POOL)  # the runner pools its jobs may use; "*" is any
        # The highest priority its workflow files may ask for (they get this, if they ask more).
        self.max_priority: Priority = "high"
        self.secrets: dict[str, StoredSecret] = {}

    @classmethod
    def create(
        cls,
        *,
        tenant_id: str,
        name: str,
        weight: int,
        max_concurrent_jobs: int,
        max_queued_runs: int,
        pushes_per_minute: int,
        actor: str,
        at: datetime,
    ) -> Tenant:
        return cls._create(
            cls.TenantCreated,
            id=tenant_aggregate_id(tenant_id),
            timestamp=at,
            tenant_id=tenant_id,
            name=name,
            weight=weight,
            max_concurrent_jobs=max_concurrent_jobs,
            max_queued_runs=max_queued_runs,
            pushes_per_minute=pushes_per_minute,
            actor=actor,
        )


    # ----- changes (recorded as events, so the audit trail says who changed a quota when) -----

    POLICY_FIELDS = ("name", "weight", "max_concurrent_jobs", "max_queued_runs", "pushes_per_minute", "pools",
                     "max_priority", "max_artifact_bytes", "max_cache_bytes", "max_artifact_days")

    def update(self, changes: dict[str, object], at: datetime, actor: str) -> bool:
        """Change the name, weight or quotas; only what differs is recorded. Idempotent."""
        unknown = set(changes) - set(self.POLICY_FIELDS)
        if unknown:
            raise ValueError(f"not a tenant setting: {sorted(unknown)}")
        changed = {name: value for name, value in changes.items() if getattr(self, name) != value}
        if not changed:
            return False
        self.trigger_event(self.TenantUpdated, timestamp=at, changes=changed, actor=actor)
        return True

    class TenantUpdated(Aggregate.Event):
        changes: dict[str, object]
        actor: str

        def apply(self, tenant: Tenant) -> None:
            for name, value in self.changes.items():
                setattr(tenant, name, value)


class Token(Aggregate):
    """A tenant's API token, known only by its digest."""

    class TokenIssued(Aggregate.Created):
        tenant_id: str
        actor: str

    def __init__(self, tenant_id: str, actor: str) -> None:
        self.tenant_id = tenant_id
        self.revoked = False

    @classmethod
    def issue(cls, *, token: str, tenant_id: str, actor: str, at: datetime) -> Token:
        return cls._create(
            cls.TokenIssued, id=token_aggregate_id(token), timestamp=at, tenant_id=tenant_id,
            actor=actor,
        )

    def revoke(self, at: datetime, actor: str) -> bool:
        """Idempotent: revoking a revoked token changes nothing."""
        if self.revoked:
            return False
        self.trigger_event(self.TokenRevoked, timestamp=at, actor=actor)
        return True

    class TokenRevoked(Aggregate.Event):
        actor: str

        def apply(self, token: Token) -> None:
            token.revoked = True


class Webhook(msgspec.Struct, frozen=True):
    """How the git host's deliveries for a repository are checked: its webhook secret (as
    ciphertext, never given to a job) and, optionally, the host's name of the repository."""

    ciphertext: str
    host_name: str | None
    set_at: datetime
    set_by: str


class StatusTarget(msgspec.Struct, frozen=True):
    """Where the repository's commit statuses go: the host's API, its name of the repository
    and a token (as ciphertext, never given to a job)."""

    kind: str  # domain.statuses.StatusKind
    api_url: str
    project: str
    ciphertext: str
    set_at: datetime
    set_by: str


class Repository(SecretHolder):
    # Set by WebhookConfigured and StatusTargetSet; class attributes so a repository replayed
    # before they existed reads None.
    webhook = None
    status_target = None

    class RepositoryRegistered(Aggregate.Created):
        repository_id: str
        tenant_id: str
        clone_url: str
        actor: str

    def __init__(self, repository_id: str, tenant_id: str, clone_url: str, actor: str) -> None:
        self.repository_id = repository_id
        self.tenant_id = tenant_id
        self.clone_url = clone_url
        self.secrets: dict[str, StoredSecret] = {}
        self.deleted = False

    @classmethod
    def register(
        cls, *, repository_id: str, tenant_id: str, clone_url: str, actor: str, at: datetime
    ) -> Repository:
        return cls._create(
            cls.RepositoryRegistered,
            id=repository_aggregate_id(repository_id),
            timestamp=at,
            repository_id=repository_id,
            tenant_id=tenant_id,
            clone_url=clone_url,
            actor=actor,
        )

    def delete(self, at: datetime, actor: str) -> bool:
        """Stop taking pushes for the repository; its runs stay, as history. Idempotent.

        The id is never registered again: run ids derive from (repository id, commit), so a
        new repository of the same id would be answered with the old one's runs."""
        if self.deleted:
            return False
        self.trigger_event(self.RepositoryDeleted, timestamp=at, actor=actor)
        return True

    def configure_webhook(self, ciphertext: str, host_name: str | None, at: datetime, actor: str) -> bool:
        """Always recorded: a new ciphertext of the same secret cannot be told from another."""
        self.trigger_event(self.WebhookConfigured, timestamp=at, ciphertext=ciphertext, host_name=host_name,
                           actor=actor)
        return True

    def set_status_target(self, kind: str, api_url: str, project: str, ciphertext: str, at: datetime,
                          actor: str) -> bool:
        self.trigger_event(self.StatusTargetSet, timestamp=at, kind=kind, api_url=api_url, project=project,
                           ciphertext=ciphertext, actor=actor)
        return True

    def remove_status_target(self, at: datetime, actor: str) -> bool:
        if self.status_target is None:
            return False
        self.trigger_event(self.StatusTargetRemoved, timestamp=at, actor=actor)
        return True

    def remove_webhook(self, at: datetime, actor: str) -> bool:
        if self.webhook is None:
            return False
        self.trigger_event(self.WebhookRemoved, timestamp=at, actor=actor)
        return True

    class RepositoryDeleted(Aggregate.Event):
        actor: str

        def apply(self, repository: Repository) -> None:
            repository.deleted = True
            repository.secrets.clear()  # nothing may read them any more
            repository.webhook = None
            repository.status_target = None

    class WebhookConfigured(Aggregate.Event):
        ciphertext: str  # the webhook secret, encrypted before the aggregate sees it
        host_name: str | None  # e.g. "org/app": a delivery for another repository is refused
        actor: str

        def apply(self, repository: Repository) -> None:
            repository.webhook = Webhook(self.ciphertext, self.host_name, self.timestamp, self.actor)

    class WebhookRemoved(Aggregate.Event):
        actor: str

        def apply(self, repository: Repository) -> None:
            repository.webhook = None

    class StatusTargetSet(Aggregate.Event):
        kind: str
        api_url: str
        project: str
        ciphertext: str  # the host's API token, encrypted before the aggregate sees it
        actor: str

        def apply(self, repository: Repository) -> None:
            repository.status_target = StatusTarget(self.kind, self.api_url, self.project, self.ciphertext,
                                                    self.timestamp, self.actor)

    class StatusTargetRemoved(Aggregate.Event):
        actor: str

        def apply(self, repository: Repository) -> None:
            repository.status_target = None
