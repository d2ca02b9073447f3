"""Tenants, their tokens and their repositories: who may push what, and to which limits."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from datetime import datetime
from uuid import UUID

from commands.ledger_store import LedgerStore
from commands.principal import Principal
from domain.clone_url import check_clone_url
from domain.errors import AlreadyExistsError, RepositoryNotFoundError, TenantNotFoundError, TokenNotFoundError
from domain.ids import repository_aggregate_id, tenant_aggregate_id, token_aggregate_id
from domain.registry import Repository, Tenant, Token


class Registry:
    def __init__(self, store: LedgerStore, clock: Callable[[], datetime]) -> None:
        self.store = store
        self.clock = clock

    # ----- tenants and tokens --------------------------------------------------------------------

    def create_tenant(
        self,
        tenant_id: str,
        *,
        name: str,
        weight: int,
        max_concurrent_jobs: int,
        max_queued_runs: int,
        pushes_per_minute: int,
        actor: str,
    ) -> Tenant:
        tenant = Tenant.create(
            tenant_id=tenant_id, name=name, weight=weight, max_concurrent_jobs=max_concurrent_jobs,
            max_queued_runs=max_queued_runs, pushes_per_minute=pushes_per_minute, actor=actor,
            at=self.clock(),
        )
        self.store.create(tenant, f"tenant {tenant_id!r}")
        return tenant

    def get_tenant(self, tenant_id: str) -> Tenant:
        tenant = self.store.load(tenant_aggregate_id(tenant_id), Tenant)
        if tenant is None:
            raise TenantNotFoundError(f"tenant {tenant_id!r} not found")
        return tenant

    def update_tenant(self, tenant_id: str, changes: Mapping[str, object], *, actor: str) -> Tenant:
        """Change a tenant's name, weight or quotas (recorded as TenantUpdated)."""
        return self.store.decide(lambda: self.get_tenant(tenant_id),
                                 lambda tenant: tenant.update(dict(changes), self.clock(), actor),
                                 f"tenant {tenant_id!r}")

    def issue_token(self, tenant_id: str, *, actor: str) -> str:
        """A new random token for the tenant; only its digest is stored."""
        self.get_tenant(tenant_id)
        token = f"lci_{secrets.token_urlsafe(32)}"
        self.store.save_together(Token.issue(token=token, tenant_id=tenant_id, actor=actor, at=self.clock()))
        return token

    def revoke_token(self, tenant_id: str, token_id: UUID, *, actor: str) -> None:
        """Revoke a tenant's token by its id (the token itself is never stored)."""

        def load() -> Token:
            token = self.store.load(token_id, Token)
            if token is None or token.tenant_id != tenant_id:
                raise TokenNotFoundError(f"tenant {tenant_id!r} has no token {token_id}")
            return token

        self.store.decide(load, lambda token: token.revoke(self.clock(), actor), f"token {token_id}")

    def tenant_of_token(self, token: str) -> str | None:
        issued = self.store.load(token_aggregate_id(token), Token)
        if issued is None or issued.revoked:
            return None
        return issued.tenant_id

    # ----- repositories --------------------------------------------------------------------------

    def register_repository(
        self, repository_id: str, *, tenant_id: str, clone_url: str, principal: Principal
    ) -> Repository:
        if not principal.can_see(tenant_id):
            raise TenantNotFoundError(f"tenant {tenant_id!r} not found")
        self.get_tenant(tenant_id)
        check_clone_url(clone_url)
        former = self.store.load(repository_aggregate_id(repository_id), Repository)
        if former is not None and former.deleted:
            raise AlreadyExistsError(f"repository {repository_id!r} was deleted and its id is not reused "
                                     "(its runs keep it); choose another id")
        repository = Repository.register(
            repository_id=repository_id, tenant_id=tenant_id, clone_url=clone_url,
            actor=principal.name, at=self.clock(),
        )
        self.store.create(repository, f"repository {repository_id!r}")
        return repository

    def get_repository(self, repository_id: str, principal: Principal, *, deleted: bool = False) -> Repository:
        """The repository, if the principal may see it; a deleted one only when `deleted` (its runs)."""
        repository = self.store.load(repository_aggregate_id(repository_id), Repository)
        if repository is None or (repository.deleted and not deleted) or not principal.can_see(repository.tenant_id):
            raise RepositoryNotFoundError(f"repository {repository_id!r} not found")
        return repository

    def delete_repository(self, repository_id: str, principal: Principal) -> Repository:
        """No more pushes, re-runs or secrets for the repository; its runs stay readable."""
        self.get_repository(repository_id, principal)  # a deleted one answers 404, as an absent one
        # Deleted by someone else meanwhile: deciding again finds it deleted, and the effect holds.
        return self.store.decide(lambda: self.get_repository(repository_id, principal, deleted=True),
                                 lambda repository: repository.delete(self.clock(), principal.name),
                                 f"repository {repository_id!r}")
