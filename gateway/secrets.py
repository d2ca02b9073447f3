"""Secrets of a tenant or a repository: set, listed (names only) and deleted by their owner.

A tenant's token reaches its own tenant's and repositories' secrets; another tenant's answer
404, exactly as absent ones (the principal check is in commands.secrets). Values go in, are
encrypted before anything is recorded, and never come out of any route.
"""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Request, delete, get, put
from litestar.di import NamedDependency
from litestar.params import Parameter

from commands.secrets import SecretBook, SecretInfo
from domain.secrets import NAME_PATTERN, Scope
from gateway.blocking import blocking
from gateway.models import SecretList, SecretRequest, SecretResponse
from gateway.openapi import errors
from gateway.routes import principal_of

Name = Annotated[str, Parameter(pattern=NAME_PATTERN, description="the secret's name (an environment variable)")]
REPOSITORY = "/repositories/{repository_id:str}/secrets"
TENANT = "/tenants/{tenant_id:str}/secrets"


def _response(info: SecretInfo) -> SecretResponse:
    return SecretResponse(name=info.name, scope=info.scope.value, owner_id=info.owner_id, set_at=info.set_at,
                          set_by=info.set_by)


async def _set(book: SecretBook, request: Request, scope: Scope, owner_id: str, name: str,
               data: SecretRequest) -> SecretResponse:
    return _response(await blocking(book.set, scope, owner_id, name, data.value, principal_of(request)))


async def _list(book: SecretBook, request: Request, scope: Scope, owner_id: str) -> SecretList:
    found = await blocking(book.list, scope, owner_id, principal_of(request))
    return SecretList(secrets=[_response(info) for info in found])


class SecretsController(Controller):
    path = "/api/v1"
    tags = ["secrets"]

    @put(f"{REPOSITORY}/{{name:str}}", operation_id="setRepositorySecret", responses=errors(404, 413))
    async def set_repository_secret(self, request: Request, repository_id: str, name: Name, data: SecretRequest,
                                    secret_book: NamedDependency[SecretBook]) -> SecretResponse:
        """Set (or replace) a secret of a repository, given to its jobs that list it. The value is
        encrypted at rest and never returned."""
        return await _set(secret_book, request, Scope.REPOSITORY, repository_id, name, data)

    @get(REPOSITORY, operation_id="listRepositorySecrets", responses=errors(404))
    async def list_repository_secrets(self, request: Request, repository_id: str,
                                      secret_book: NamedDependency[SecretBook]) -> SecretList:
        """The names of a repository's own secrets (not its tenant's), with who set each when."""
        return await _list(secret_book, request, Scope.REPOSITORY, repository_id)

    @delete(f"{REPOSITORY}/{{name:str}}", operation_id="deleteRepositorySecret", responses=errors(404))
    async def delete_repository_secret(self, request: Request, repository_id: str, name: Name,
                                       secret_book: NamedDependency[SecretBook]) -> None:
        """Delete a repository's secret; deleting one that is not set changes nothing."""
        await blocking(secret_book.delete, Scope.REPOSITORY, repository_id, name, principal_of(request))

    @put(f"{TENANT}/{{name:str}}", operation_id="setTenantSecret", responses=errors(404, 413))
    async def set_tenant_secret(self, request: Request, tenant_id: str, name: Name, data: SecretRequest,
                                secret_book: NamedDependency[SecretBook]) -> SecretResponse:
        """Set (or replace) a secret of every repository of the tenant; a repository's own secret
        of the same name wins over it."""
        return await _set(secret_book, request, Scope.TENANT, tenant_id, name, data)

    @get(TENANT, operation_id="listTenantSecrets", responses=errors(404))
    async def list_tenant_secrets(self, request: Request, tenant_id: str,
                                  secret_book: NamedDependency[SecretBook]) -> SecretList:
        """The names of the tenant's secrets, with who set each when."""
        return await _list(secret_book, request, Scope.TENANT, tenant_id)

    @delete(f"{TENANT}/{{name:str}}", operation_id="deleteTenantSecret", responses=errors(404))
    async def delete_tenant_secret(self, request: Request, tenant_id: str, name: Name,
                                   secret_book: NamedDependency[SecretBook]) -> None:
        """Delete a tenant's secret; deleting one that is not set changes nothing."""
        await blocking(secret_book.delete, Scope.TENANT, tenant_id, name, principal_of(request))
