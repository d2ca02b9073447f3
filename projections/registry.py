"""The registry read model: which tenants and repositories exist, for the API's lists.

One tenant or repository is read from its own event stream (a keyed read, always current);
only a list needs a table. The runs projector applies these events in its own transaction,
so the lists follow the store exactly as the runs do. A deployment that predates these tables
fills them with `ledgerci projections rebuild`."""

from __future__ import annotations

from functools import singledispatch
from typing import Any

import msgspec

from domain.registry import Repository, Tenant
from domain.subscriptions import WebhookSubscription
from projections.sql import Cursor, Database
from projections.timestamps import rfc3339

REGISTRY_TABLES = ("lci_tenants", "lci_repositories", "lci_webhook_subscriptions")

TABLES = [
    # aggregate_id: the later events of a tenant or repository name only their stream.
    """CREATE TABLE IF NOT EXISTS lci_tenants (
        id TEXT PRIMARY KEY,
        aggregate_id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        created_at TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS lci_repositories (
        id TEXT PRIMARY KEY,
        aggregate_id TEXT NOT NULL UNIQUE,
        tenant_id TEXT NOT NULL,
        clone_url TEXT NOT NULL,
        created_at TEXT NOT NULL,
        deleted_at TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS lci_repositories_by_tenant ON lci_repositories (tenant_id, id)",
    # Outgoing-webhook subscriptions (domain/subscriptions.py). events: the names it takes, each
    # between commas (",run.failed,job.failed,"), so the projector matches one with LIKE.
    """CREATE TABLE IF NOT EXISTS lci_webhook_subscriptions (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL,
        url TEXT NOT NULL,
        events TEXT NOT NULL,
        repository_id TEXT,
        branch TEXT,
        created_at TEXT NOT NULL,
        created_by TEXT NOT NULL,
        deleted_at TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS lci_webhook_subscriptions_by_tenant ON lci_webhook_subscriptions (tenant_id)",
]

COMPARED = {
    "lci_tenants": "id, aggregate_id, name, created_at",
    "lci_repositories": "id, aggregate_id, tenant_id, clone_url, created_at, deleted_at, statuses",
    "lci_webhook_subscriptions": "id, tenant_id, url, events, repository_id, branch, created_at, created_by, "
                                 "deleted_at",
}


@singledispatch
def apply_registry_event(event: Any, cursor: Cursor) -> None:
    """Events that change no list (tokens, secrets, runs)."""


@apply_registry_event.register
def _(event: Tenant.TenantCreated, cursor: Cursor) -> None:
    cursor.execute("INSERT INTO lci_tenants (id, aggregate_id, name, created_at) VALUES (?, ?, ?, ?) "
                   "ON CONFLICT (id) DO NOTHING",
                   (event.tenant_id, str(event.originator_id), event.name, rfc3339(event.timestamp)))


@apply_registry_event.register
def _(event: Tenant.TenantUpdated, cursor: Cursor) -> None:
    if "name" in event.changes:
        cursor.execute("UPDATE lci_tenants SET name = ? WHERE aggregate_id = ?",
                       (event.changes["name"], str(event.originator_id)))


@apply_registry_event.register
def _(event: Repository.RepositoryRegistered, cursor: Cursor) -> None:
    cursor.execute("INSERT INTO lci_repositories (id, aggregate_id, tenant_id, clone_url, created_at) "
                   "VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                   (event.repository_id, str(event.originator_id), event.tenant_id, event.clone_url,
                    rfc3339(event.timestamp)))


@apply_registry_event.register
def _(event: Repository.RepositoryDeleted, cursor: Cursor) -> None:
    cursor.execute("UPDATE lci_repositories SET deleted_at = ?, statuses = 0 WHERE aggregate_id = ?",
                   (rfc3339(event.timestamp), str(event.originator_id)))


@apply_registry_event.register
def _(event: Repository.StatusTargetSet, cursor: Cursor) -> None:
    # Whether the repository's runs go to the status outbox (projections/status_outbox.py).
    cursor.execute("UPDATE lci_repositories SET statuses = 1 WHERE aggregate_id = ?", (str(event.originator_id),))


@apply_registry_event.register
def _(event: Repository.StatusTargetRemoved, cursor: Cursor) -> None:
    cursor.execute("UPDATE lci_repositories SET statuses = 0 WHERE aggregate_id = ?", (str(event.originator_id),))


@apply_registry_event.register
def _(event: WebhookSubscription.Subscribed, cursor: Cursor) -> None:
    cursor.execute("INSERT INTO lci_webhook_subscriptions (id, tenant_id, url, events, repository_id, branch, "
                   "created_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                   (str(event.originator_id), event.tenant_id, event.url, f",{','.join(event.events)},",
                    event.repository_id, event.branch, rfc3339(event.timestamp), event.actor))


@apply_registry_event.register
def _(event: WebhookSubscription.Unsubscribed, cursor: Cursor) -> None:
    cursor.execute("UPDATE lci_webhook_subscriptions SET deleted_at = ? WHERE id = ?",
                   (rfc3339(event.timestamp), str(event.originator_id)))


class RepositoryRow(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    tenant_id: str
    clone_url: str
    created_at: str


class TenantRow(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    created_at: str


class SubscriptionRow(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    tenant_id: str
    url: str
    events: list[str]
    repository_id: str | None
    branch: str | None
    created_at: str
    created_by: str


class RegistryQueries:
    def __init__(self, db: Database) -> None:
        self.db = db

    def repositories(self, tenant_id: str | None) -> list[RepositoryRow]:
        """The repositories that take pushes, by id: a tenant's, or (None: the admin) everyone's."""
        where, args = ("AND tenant_id = ?", (tenant_id,)) if tenant_id is not None else ("", ())
        rows = self.db.query("SELECT id, tenant_id, clone_url, created_at FROM lci_repositories "
                             f"WHERE deleted_at IS NULL {where} ORDER BY id", args)
        return [RepositoryRow(id=r[0], tenant_id=r[1], clone_url=r[2], created_at=r[3]) for r in rows]

    def tenants(self) -> list[TenantRow]:
        rows = self.db.query("SELECT id, name, created_at FROM lci_tenants ORDER BY id")
        return [TenantRow(id=r[0], name=r[1], created_at=r[2]) for r in rows]

    def subscriptions(self, tenant_id: str) -> list[SubscriptionRow]:
        """A tenant's outgoing-webhook subscriptions, oldest first (the deleted ones not)."""
        rows = self.db.query("SELECT id, tenant_id, url, events, repository_id, branch, created_at, created_by "
                             "FROM lci_webhook_subscriptions WHERE tenant_id = ? AND deleted_at IS NULL "
                             "ORDER BY created_at, id", (tenant_id,))
        return [SubscriptionRow(id=r[0], tenant_id=r[1], url=r[2], events=r[3].strip(",").split(","),
                                repository_id=r[4], branch=r[5], created_at=r[6], created_by=r[7]) for r in rows]
