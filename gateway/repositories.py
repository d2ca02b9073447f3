"""Repositories: registered, listed, shown and deleted by the admin or their own tenant.

Another tenant's repository answers 404, as an absent one does (the check is in commands)."""

from __future__ import annotations

from pathlib import Path

from litestar import Controller, Request, delete, get, post
from litestar.di import NamedDependency
from litestar.status_codes import HTTP_201_CREATED

from commands.app import LedgerApp
from domain.clone_url import local_path
from domain.errors import InvalidCloneUrlError, TenantNotFoundError
from domain.registry import Repository
from gateway.blocking import blocking
from gateway.models import RepositoryList, RepositoryRequest, RepositoryResponse
from gateway.openapi import errors
from gateway.routes import principal_of
from gateway.schedules import ScheduleList, ScheduleView
from projections.registry import RegistryQueries
from projections.timestamps import rfc3339


def _response(repository: Repository) -> RepositoryResponse:
    return RepositoryResponse(id=repository.repository_id, tenant_id=repository.tenant_id,
                              clone_url=repository.clone_url, created_at=rfc3339(repository.created_on))


def _check_local(clone_url: str) -> None:
    """A file:// repository must be there now: the planner reads it on this machine, and a
    typo would otherwise show only at the first push, as a failed run."""
    path = local_path(clone_url)
    if path is not None and not Path(path).is_dir():
        raise InvalidCloneUrlError(f"clone_url {clone_url!r}: no directory {path} on the ledgerci machine")


class RepositoriesController(Controller):
    path = "/api/v1/repositories"
    tags = ["repositories"]

    @post(operation_id="registerRepository", status_code=HTTP_201_CREATED, responses=errors(404, 409, 413))
    async def register(self, request: Request, data: RepositoryRequest,
                       ledger: NamedDependency[LedgerApp]) -> RepositoryResponse:
        """Register a repository of a tenant (the admin, or that tenant). The clone URL must be
        absolute (`https://`, `ssh://`, `user@host:path`, `git://`, or `file:///path` that exists)."""
        if not principal_of(request).can_see(data.tenant_id):  # before the path check: it tells nothing
            raise TenantNotFoundError(f"tenant {data.tenant_id!r} not found")
        _check_local(data.clone_url)
        repository = await blocking(ledger.registry.register_repository, data.id, tenant_id=data.tenant_id,
                                    clone_url=data.clone_url, principal=principal_of(request))
        return _response(repository)

    @get(operation_id="listRepositories", responses=errors())
    async def list_repositories(self, request: Request, registry: NamedDependency[RegistryQueries]) -> RepositoryList:
        """The caller's repositories (the admin's: every tenant's), by id."""
        rows = await blocking(registry.repositories, principal_of(request).tenant_id)
        return RepositoryList(repositories=[
            RepositoryResponse(id=row.id, tenant_id=row.tenant_id, clone_url=row.clone_url, created_at=row.created_at)
            for row in rows])

    @get("/{repository_id:str}", operation_id="getRepository", responses=errors(404))
    async def get_repository(self, request: Request, repository_id: str,
                             ledger: NamedDependency[LedgerApp]) -> RepositoryResponse:
        """One repository, read from its own history (current the moment it is registered)."""
        return _response(await blocking(ledger.registry.get_repository, repository_id, principal_of(request)))

    @get("/{repository_id:str}/schedules", operation_id="listSchedules", responses=errors(404))
    async def list_schedules(self, request: Request, repository_id: str, ledger: NamedDependency[LedgerApp],
                             schedules: NamedDependency[ScheduleView]) -> ScheduleList:
        """The repository's schedules in force (declared by the newest planned push of each
        branch), each with its next time and its last firings."""
        await blocking(ledger.registry.get_repository, repository_id, principal_of(request))
        return await blocking(schedules.of_repository, repository_id)

    @delete("/{repository_id:str}", operation_id="deleteRepository", responses=errors(404))
    async def delete_repository(self, request: Request, repository_id: str, ledger: NamedDependency[LedgerApp]) -> None:
        """Stop taking pushes for the repository and drop its secrets; its runs stay readable.
        Its id is not registered again (run ids derive from it)."""
        await blocking(ledger.registry.delete_repository, repository_id, principal_of(request))
