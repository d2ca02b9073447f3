"""Commit statuses back to the git host: where a repository's go (`PUT/DELETE
/repositories/{id}/status-target`), and what was sent for a run (`GET /runs/{id}/statuses`)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, Request, delete, get, put
from litestar.di import NamedDependency
from msgspec import Meta

from commands.app import LedgerApp
from commands.secrets import SecretBook
from domain.secrets import MAX_VALUE_CHARS, MIN_VALUE_CHARS
from domain.statuses import API_URL_PATTERN, PROJECT_PATTERN, StatusKind
from gateway.blocking import blocking
from gateway.models import Body
from gateway.openapi import errors
from gateway.routes import principal_of, uuid_or_not_found
from projections.status_outbox import OutboxRow, StatusOutbox
from projections.timestamps import rfc3339


class StatusTargetRequest(Body):
    kind: StatusKind
    # https://api.github.com, https://gitea.example/api/v1, https://gitlab.example/api/v4
    api_url: Annotated[str, Meta(max_length=2048, pattern=API_URL_PATTERN)]
    project: Annotated[str, Meta(max_length=255, pattern=PROJECT_PATTERN)]  # the host's name of it: org/app
    token: Annotated[str, Meta(min_length=MIN_VALUE_CHARS, max_length=MAX_VALUE_CHARS, pattern=r"^[^\x00]*$")]


class StatusTargetResponse(msgspec.Struct, kw_only=True):
    repository_id: str
    kind: str
    api_url: str
    project: str
    set_at: str
    set_by: str


class StatusList(msgspec.Struct, kw_only=True):
    run_id: str
    statuses: list[OutboxRow]  # each state queued for the host, with its delivery attempts


class StatusTargetController(Controller):
    path = "/api/v1/repositories/{repository_id:str}/status-target"
    tags = ["statuses"]

    @put(operation_id="setStatusTarget", responses=errors(404, 503))
    async def set_target(self, request: Request, repository_id: str, data: StatusTargetRequest,
                         secret_book: NamedDependency[SecretBook]) -> StatusTargetResponse:
        """Send the repository's runs to its git host as commit statuses (context
        `ledgerci/<workflow name>`); the token is encrypted, never shown again."""
        target = await blocking(secret_book.set_status_target, repository_id, data.kind, data.api_url, data.project,
                                data.token, principal_of(request))
        return StatusTargetResponse(repository_id=repository_id, kind=target.kind, api_url=target.api_url,
                                    project=target.project, set_at=rfc3339(target.set_at), set_by=target.set_by)

    @delete(operation_id="deleteStatusTarget", responses=errors(404))
    async def delete_target(self, request: Request, repository_id: str,
                            secret_book: NamedDependency[SecretBook]) -> None:
        """Stop sending the repository's commit statuses."""
        await blocking(secret_book.remove_status_target, repository_id, principal_of(request))


class RunStatusesController(Controller):
    path = "/api/v1/runs/{run_id:str}/statuses"
    tags = ["statuses"]

    @get(operation_id="listRunStatuses", responses=errors(404))
    async def list_statuses(self, request: Request, run_id: str, ledger: NamedDependency[LedgerApp],
                            outbox: NamedDependency[StatusOutbox]) -> StatusList:
        """The commit statuses queued for the run's host, with their delivery attempts and the
        host's last answer (empty when its repository has no status target)."""
        run = await blocking(ledger.runs.get_run, uuid_or_not_found(run_id), principal_of(request))
        return StatusList(run_id=str(run.id), statuses=await blocking(outbox.of_run, str(run.id)))
