"""Request and response bodies of the HTTP API (msgspec Structs, as OpenAPI shows them)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from msgspec import Meta

from domain.messages import EventMessage
from domain.secrets import MAX_VALUE_CHARS, MIN_VALUE_CHARS, NAME_PATTERN
from domain.workflow import Priority

Identifier = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="1-64 of A-Z a-z 0-9 _ . -")]
CommitSha = Annotated[str, Meta(pattern=r"^[0-9a-fA-F]{40}$", description="40 hex digits")]
# No control characters in free text: PostgreSQL cannot store NUL, and a ref or URL holding one
# would be recorded, then stop the projector and the scheduler for every tenant at that event.
_TEXT = r"^[^\x00-\x1f\x7f]*$"
GitRef = Annotated[str, Meta(min_length=1, max_length=255, pattern=_TEXT)]


class Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Request bodies refuse unknown fields: a typo is an error, not silently ignored."""


class PushRequest(Body):
    repository_id: Identifier
    commit: CommitSha
    ref: GitRef | None = None


class PushResponse(msgspec.Struct, kw_only=True):
    run_id: str
    duplicate: bool


class CancelResponse(msgspec.Struct, kw_only=True):
    run_id: str
    status: str
    cancelled: bool  # false: the run had ended already, and nothing changed


class RerunResponse(msgspec.Struct, kw_only=True):
    run_id: str  # the new run
    rerun_of: str
    rerun: int


PoolName = Annotated[str, Meta(pattern=r"^(\*|[a-z0-9][a-z0-9_-]{0,62})$", description='a pool name, or "*" for any')]
Pools = Annotated[list[PoolName], Meta(min_length=1, max_length=64, description="runner pools a tenant's jobs may use")]
MaxPriority = Annotated[Priority, Meta(description="the highest priority its workflow files may ask for")]


class TenantRequest(Body):
    id: Identifier
    name: Annotated[str, Meta(pattern=_TEXT)] | None = None
    weight: Annotated[int, Meta(ge=1, le=1000)] = 1
    max_concurrent_jobs: Annotated[int, Meta(ge=1)] | None = None
    max_queued_runs: Annotated[int, Meta(ge=1)] | None = None
    pushes_per_minute: Annotated[int, Meta(ge=1)] | None = None
    pools: Pools | None = None
    max_priority: MaxPriority | None = None
    max_artifact_bytes: Annotated[int, Meta(ge=1)] | None = None
    max_cache_bytes: Annotated[int, Meta(ge=1)] | None = None
    max_artifact_days: Annotated[int, Meta(ge=1, le=90)] | None = None


class TenantUpdate(Body):
    """The settings to change; those left out stay as they are."""

    name: Annotated[str, Meta(min_length=1, max_length=200, pattern=_TEXT)] | None = None
    weight: Annotated[int, Meta(ge=1, le=1000)] | None = None
    max_concurrent_jobs: Annotated[int, Meta(ge=1)] | None = None
    max_queued_runs: Annotated[int, Meta(ge=1)] | None = None
    pushes_per_minute: Annotated[int, Meta(ge=1)] | None = None
    pools: Pools | None = None
    max_priority: MaxPriority | None = None
    max_artifact_bytes: Annotated[int, Meta(ge=1)] | None = None
    max_cache_bytes: Annotated[int, Meta(ge=1)] | None = None
    max_artifact_days: Annotated[int, Meta(ge=1, le=90)] | None = None


class TenantResponse(msgspec.Struct, kw_only=True):
    id: str
    name: str
    weight: int
    max_concurrent_jobs: int
    max_queued_runs: int
    pushes_per_minute: int
    pools: list[str]  # the runner pools its jobs may use; ["*"]: any
    max_priority: str  # the highest priority its workflow files may ask for
    # Its artifacts' and caches' limits; null: the deployment's default.
    max_artifact_bytes: int | None = None
    max_cache_bytes: int | None = None
    max_artifact_days: int | None = None


class TokenResponse(msgspec.Struct, kw_only=True):
    tenant_id: str
    token: str  # shown once; only its digest is stored
    token_id: str  # names the token in events' `actor` (`tenant:ID token:TOKEN_ID`), not a secret


class RepositoryRequest(Body):
    id: Identifier
    tenant_id: Identifier
    clone_url: Annotated[str, Meta(min_length=1, max_length=2048, pattern=_TEXT)]


class RepositoryResponse(msgspec.Struct, kw_only=True):
    id: str
    tenant_id: str
    clone_url: str
    created_at: str


class RepositoryList(msgspec.Struct, kw_only=True):
    repositories: list[RepositoryResponse]  # by id; deleted ones are not listed


class TenantSummary(msgspec.Struct, kw_only=True):
    id: str
    name: str
    created_at: str


class TenantList(msgspec.Struct, kw_only=True):
    tenants: list[TenantSummary]  # by id


SecretName = Annotated[str, Meta(pattern=NAME_PATTERN, description="an environment variable's name, 1-128 characters")]


class SecretRequest(Body):
    """A secret's value: write-only, encrypted before it is stored, never returned."""

    # At least 4 characters: the log masker replaces every occurrence, and a shorter value
    # would hide ordinary words. No NUL: an environment variable cannot hold one.
    value: Annotated[str, Meta(min_length=MIN_VALUE_CHARS, max_length=MAX_VALUE_CHARS, pattern=r"^[^\x00]*$")]


class SecretResponse(msgspec.Struct, kw_only=True):
    """A secret as it may be shown: its name and who set it when, never its value."""

    name: str
    scope: str  # "tenant" or "repository"
    owner_id: str  # the tenant's or the repository's id
    set_at: datetime
    set_by: str


class SecretList(msgspec.Struct, kw_only=True):
    secrets: list[SecretResponse]


class EventList(msgspec.Struct, kw_only=True):
    run_id: str
    events: list[EventMessage]


class Health(msgspec.Struct, kw_only=True):
    status: str
    checks: dict[str, str] = {}


class BrokenLink(msgspec.Struct, kw_only=True):
    """The first event of a stream whose chain link does not match what its content says."""

    aggregate_id: str
    version: int
    type: str
    reason: str


class AuditReport(msgspec.Struct, kw_only=True):
    checked: int  # events whose link was recomputed
    intact: bool  # no stream broken
    broken: list[BrokenLink]
    seconds: float
