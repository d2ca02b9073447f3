"""HTTP handlers: each translates a request into a command or a query, and back."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

import msgspec
from litestar import Controller, MediaType, Request, Response, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_202_ACCEPTED

from commands.app import LedgerApp
from commands.principal import Principal
from domain.errors import InvalidFilterError, RunNotFoundError, TokenNotFoundError
from domain.ids import token_aggregate_id
from domain.registry import Tenant
from domain.run import RUN_EVENT_TYPES
from domain.status import RunStatus
from gateway.auth import require_admin
from gateway.blocking import blocking
from gateway.control import Control
from gateway.logs import LogReader, attempt_to_read
from gateway.models import (
    CancelResponse,
    EventList,
    PushRequest,
    PushResponse,
    RerunResponse,
    TenantList,
    TenantRequest,
    TenantResponse,
    TenantSummary,
    TenantUpdate,
    TokenResponse,
)
from gateway.openapi import AS_OF_SCHEMA, IDENTIFIER_PATTERN, errors
from gateway.presence import RunnerPresenceView, explain_quota
from gateway.views import RunAsOf, RunBody, RunPage, parse_as_of, run_as_of_view, run_body, run_page
from projections.admission import PushAdmission
from projections.queries import RunQueries
from projections.registry import RegistryQueries


def principal_of(request: Request) -> Principal:
    return request.state.principal


# A tenant's settings that its TenantCreated does not hold: recorded as a TenantUpdated at once.
LATER_SETTINGS = ("pools", "max_priority", "max_artifact_bytes", "max_cache_bytes", "max_artifact_days")


def tenant_response(tenant: Tenant) -> TenantResponse:
    return TenantResponse(
        id=tenant.tenant_id, name=tenant.name, weight=tenant.weight,
        max_concurrent_jobs=tenant.max_concurrent_jobs, max_queued_runs=tenant.max_queued_runs,
        pushes_per_minute=tenant.pushes_per_minute, pools=list(tenant.pools), max_priority=tenant.max_priority,
        max_artifact_bytes=tenant.max_artifact_bytes, max_cache_bytes=tenant.max_cache_bytes,
        max_artifact_days=tenant.max_artifact_days,
    )


class Defaults:
    """Tenant quota defaults from settings (enforced by a later issue; recorded now)."""

    def __init__(self, max_concurrent_jobs: int, max_queued_runs: int, pushes_per_minute: int) -> None:
        self.max_concurrent_jobs = max_concurrent_jobs
        self.max_queued_runs = max_queued_runs
        self.pushes_per_minute = pushes_per_minute


class PushController(Controller):
    path = "/api/v1/push"
    tags = ["push"]

    @post(operation_id="push", status_code=HTTP_202_ACCEPTED,
          responses={200: ResponseSpec(PushResponse, description="the same push again: its run"),
                     **errors(404, 413, 429)})
    async def push(
        self, request: Request, data: PushRequest, ledger: NamedDependency[LedgerApp],
        admission: NamedDependency[PushAdmission]
    ) -> Response[PushResponse]:
        """Record a push: 202 with a new run, or 200 with the existing run of the same commit
        (of the same commit and tag, for a tag's push: a run of its own).

        429 with Retry-After when the tenant is over its push rate or its queued-runs quota."""
        result = await blocking(
            ledger.runs.push, data.repository_id, data.commit, data.ref, principal_of(request),
            lambda tenant: admission.admit(tenant, ledger.clock()),
        )
        status = HTTP_200_OK if result.duplicate else HTTP_202_ACCEPTED
        return Response(PushResponse(run_id=str(result.run_id), duplicate=result.duplicate),
                        status_code=status)


class AdminController(Controller):
    path = "/api/v1"
    tags = ["administration"]

    @post("/tenants", operation_id="createTenant", guards=[require_admin], status_code=HTTP_201_CREATED,
          responses=errors(403, 409, 413))
    async def create_tenant(
        self, request: Request, data: TenantRequest, ledger: NamedDependency[LedgerApp],
        defaults: NamedDependency[Defaults]
    ) -> TenantResponse:
        """Create a tenant with its weight and quotas (admin only)."""
        tenant = await blocking(
            ledger.registry.create_tenant,
            data.id,
            name=data.name or data.id,
            weight=data.weight,
            max_concurrent_jobs=data.max_concurrent_jobs or defaults.max_concurrent_jobs,
            max_queued_runs=data.max_queued_runs or defaults.max_queued_runs,
            pushes_per_minute=data.pushes_per_minute or defaults.pushes_per_minute,
            actor=principal_of(request).name,
        )
        # Recorded as a change right after: the created event keeps its shape.
        later = {name: getattr(data, name) for name in LATER_SETTINGS if getattr(data, name) is not None}
        if later:
            tenant = await blocking(ledger.registry.update_tenant, data.id, later, actor=principal_of(request).name)
        return tenant_response(tenant)

    @get("/tenants", operation_id="listTenants", guards=[require_admin], responses=errors(403))
    async def list_tenants(self, registry: NamedDependency[RegistryQueries]) -> TenantList:
        """Every tenant, by id (admin only); `GET /tenants/{id}` has its weight and quotas."""
        rows = await blocking(registry.tenants)
        return TenantList(tenants=[TenantSummary(id=r.id, name=r.name, created_at=r.created_at) for r in rows])

    @get("/tenants/{tenant_id:str}", operation_id="getTenant", guards=[require_admin], responses=errors(403, 404))
    async def get_tenant(self, tenant_id: str, ledger: NamedDependency[LedgerApp]) -> TenantResponse:
        """A tenant's weight and quotas (admin only)."""
        return tenant_response(await blocking(ledger.registry.get_tenant, tenant_id))

    @patch("/tenants/{tenant_id:str}", operation_id="updateTenant", guards=[require_admin],
           responses=errors(403, 404, 413))
    async def update_tenant(
        self, request: Request, tenant_id: str, data: TenantUpdate, ledger: NamedDependency[LedgerApp]
    ) -> TenantResponse:
        """Change a tenant's name, weight or quotas (admin only); recorded as an event."""
        changes = {name: value for name, value in msgspec.structs.asdict(data).items() if value is not None}
        tenant = await blocking(ledger.registry.update_tenant, tenant_id, changes, actor=principal_of(request).name)
        return tenant_response(tenant)

    @delete("/tenants/{tenant_id:str}/tokens/{token_id:str}", operation_id="revokeTenantToken",
            guards=[require_admin], responses=errors(403, 404))
    async def revoke_token(self, request: Request, tenant_id: str, token_id: str,
                           ledger: NamedDependency[LedgerApp]) -> None:
        """Revoke a tenant's token (by the `token_id` given when it was issued); it stops working at once."""
        try:
            token_uuid = UUID(token_id)
        except ValueError:  # Litestar's own `uuid` path type would answer a bare "Not Found"
            raise TokenNotFoundError(f"tenant {tenant_id!r} has no token {token_id!r}: a token id is a UUID, "
                                     "as printed when the token was issued") from None
        await blocking(ledger.registry.revoke_token, tenant_id, token_uuid, actor=principal_of(request).name)

    @post("/tenants/{tenant_id:str}/tokens", operation_id="createTenantToken", guards=[require_admin],
          status_code=HTTP_201_CREATED, responses=errors(403, 404))
    async def create_token(self, request: Request, tenant_id: str, ledger: NamedDependency[LedgerApp]) -> TokenResponse:
        """Issue a tenant token. It is shown once; only its digest is stored."""
        token = await blocking(ledger.registry.issue_token, tenant_id, actor=principal_of(request).name)
        return TokenResponse(tenant_id=tenant_id, token=token, token_id=str(token_aggregate_id(token)))


class RunsController(Controller):
    path = "/api/v1"
    tags = ["runs"]

    @get("/runs", operation_id="listRuns", responses=errors(404))
    async def list_runs(
        self,
        request: Request,
        queries: NamedDependency[RunQueries],
        ledger: NamedDependency[LedgerApp],
        repository_id: Annotated[str | None, Parameter(pattern=IDENTIFIER_PATTERN)] = None,
        status: RunStatus | None = None,
        limit: Annotated[int, Parameter(ge=1, le=500)] = 50,
        cursor: str | None = None,
    ) -> RunPage:
        """The caller's runs, newest first. An unknown `repository_id` answers 404, not an empty page."""
        if repository_id is not None:
            await blocking(ledger.registry.get_repository, repository_id, principal_of(request), deleted=True)
        rows = await blocking(
            queries.list_runs, principal_of(request).tenant_id, repository_id=repository_id,
            status=status, limit=limit, cursor=cursor,
        )
        return run_page(rows)  # a list's runs carry no jobs: nothing to explain

    @get("/runs/{run_id:str}", operation_id="getRun", responses=errors(404))
    async def get_run(
        self, request: Request, run_id: str, queries: NamedDependency[RunQueries], ledger: NamedDependency[LedgerApp],
        presence: NamedDependency[RunnerPresenceView],
        as_of: Annotated[str | None, Parameter(schema_extra=AS_OF_SCHEMA)] = None,
    ) -> RunBody | RunAsOf:
        """A run and its jobs, in workflow order. `as_of` (a version number or an RFC 3339
        time) replays the run's events up to that point instead of reading the read model."""
        if as_of is not None:
            version, at = parse_as_of(as_of)
            run = await blocking(ledger.audit.run_as_of, uuid_or_not_found(run_id), principal_of(request),
                                 version=version, at=at)
            return run_as_of_view(run, await blocking(ledger.runs.get_run_version, run.id))
        row = await blocking(queries.get_run, uuid_or_not_found(run_id), principal_of(request).tenant_id)
        if row is None:
            raise RunNotFoundError(f"run {run_id} not found")
        view = run_body(row)
        presence.explain_waiting(view.jobs)
        await blocking(explain_quota, view, queries, ledger)
        return view

    @post("/runs/{run_id:str}/cancel", operation_id="cancelRun", status_code=HTTP_200_OK, responses=errors(404))
    async def cancel_run(self, request: Request, run_id: str, ledger: NamedDependency[LedgerApp],
                         control: NamedDependency[Control]) -> CancelResponse:
        """Cancel queued jobs and stop the running one (its runner is told at once). `cancelled`
        is false when the run had ended already (`status` says how): nothing was changed."""
        run, running, cancelled = await blocking(ledger.runs.cancel_run, uuid_or_not_found(run_id),
                                                 principal_of(request))
        if running is not None:
            await control.stop(str(running.id), running.attempt)
        return CancelResponse(run_id=str(run.id), status=run.status.value, cancelled=cancelled)

    @post("/runs/{run_id:str}/rerun", operation_id="rerunRun", status_code=HTTP_202_ACCEPTED,
          responses=errors(404, 409))
    async def rerun(self, request: Request, run_id: str, ledger: NamedDependency[LedgerApp]) -> RerunResponse:
        """A new run of the same commit."""
        new_run_id = await blocking(ledger.runs.rerun, uuid_or_not_found(run_id), principal_of(request))
        new_run = await blocking(ledger.runs.get_run, new_run_id, principal_of(request))
        return RerunResponse(run_id=str(new_run_id), rerun_of=uuid_or_not_found(run_id), rerun=new_run.rerun)

    @get("/runs/{run_id:str}/events", operation_id="getRunEvents", responses=errors(404))
    async def run_events(
        self, request: Request, run_id: str, ledger: NamedDependency[LedgerApp], job_id: str | None = None,
        type: Annotated[str | None, Parameter(schema_extra={"enum": sorted(RUN_EVENT_TYPES)})] = None,
    ) -> EventList:
        """The run's full event history, in order, read from the event store (the audit trail).
        `job_id` (a job's id, or its name in the workflow) and `type` keep only the events of one
        job, or of one type; a job the run lacks answers 404, a type that does not exist 422."""
        if type is not None and type not in RUN_EVENT_TYPES:
            known = ", ".join(sorted(RUN_EVENT_TYPES))
            raise InvalidFilterError(f"type {type!r} is not an event type; one of: {known}")
        run = await blocking(ledger.runs.get_run, uuid_or_not_found(run_id), principal_of(request))
        events = await blocking(ledger.audit.history, run.id)
        if job_id is not None:
            job = next((j for j in run.jobs if job_id in (str(j.id), j.name)), None)
            if job is None:
                names = ", ".join(j.name for j in run.jobs) or "none yet"
                raise RunNotFoundError(f"run {run.id} has no job {job_id!r} (its jobs: {names})")
            events = [e for e in events if e.data.get("job_id") == str(job.id)]
        if type is not None:
            events = [e for e in events if e.type == type]
        return EventList(run_id=str(run.id), events=events)

    @get("/jobs/{job_id:str}/log", operation_id="getJobLog", media_type=MediaType.TEXT, responses=errors(404))
    async def job_log(
        self,
        request: Request,
        job_id: str,
        queries: NamedDependency[RunQueries],
        logs: NamedDependency[LogReader],
        offset: Annotated[int, Parameter(ge=0)] = 0,
        attempt: int | None = None,
    ) -> Response[bytes]:
        """The job's log so far, as text; `offset` (bytes) returns only what follows it.
        `attempt` (1 to the job's current attempt) reads an earlier attempt's log instead of
        the current one's. `X-Log-Size` is the whole log's size in bytes, `X-Job-Attempt` the
        attempt read, `X-Job-Status` the job's status, `X-Attempt-Status` the attempt's (an
        earlier attempt's is `abandoned`: a result of its own would have ended the job),
        `X-Run-Id` the job's run."""
        job = await blocking(queries.locate_job, uuid_or_not_found(job_id), principal_of(request).tenant_id)
        if job is None:
            raise RunNotFoundError(f"job {job_id} not found")
        read = attempt_to_read(job, attempt)
        text = await logs.read(job.job_id, read)
        # Litestar adds "; charset=utf-8" to a text/ media type itself: naming it here said it twice.
        return Response(
            text[offset:],
            media_type=MediaType.TEXT,
            headers={"X-Log-Size": str(len(text)), "X-Job-Status": job.status, "X-Job-Attempt": str(read),
                     "X-Attempt-Status": job.status if read == job.attempt else "abandoned",
                     "X-Run-Id": job.run_id},
        )


def uuid_or_not_found(value: str) -> str:
    """Ids are UUIDs; anything else names nothing that exists (404, not a 500)."""
    try:
        return str(UUID(value))
    except ValueError:
        raise RunNotFoundError(f"{value} not found") from None
