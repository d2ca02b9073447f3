"""Outgoing webhooks: a tenant's subscriptions (`/tenants/{id}/webhooks`), the deliveries made
for each with every attempt's answer, and a redelivery on request. Another tenant's
subscription, and its deliveries, answer 404 exactly as absent ones."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.di import NamedDependency
from litestar.params import Parameter
from msgspec import Meta

from commands.app import LedgerApp
from commands.subscriptions import Subscriptions
from domain.errors import SubscriptionNotFoundError
from domain.subscriptions import BRANCH_PATTERN, PATTERNS, URL_PATTERN, WebhookSubscription
from gateway.blocking import blocking
from gateway.models import Body, Identifier
from gateway.openapi import errors
from gateway.routes import principal_of
from projections.registry import RegistryQueries, SubscriptionRow
from projections.timestamps import rfc3339
from projections.webhook_outbox import AttemptRow, DeliveryRow, Payload, WebhookOutbox

# An event, all of a kind, one outcome of both, or everything (domain.subscriptions.PATTERNS).
EventName = Literal[PATTERNS]  # type: ignore[valid-type]


class SubscriptionRequest(Body):
    url: Annotated[str, Meta(max_length=2048, pattern=URL_PATTERN)]
    events: Annotated[list[EventName], Meta(min_length=1, max_length=16)]
    repository_id: Identifier | None = None  # only this repository's runs
    branch: Annotated[str, Meta(max_length=250, pattern=BRANCH_PATTERN)] | None = None  # only pushes to it


class SubscriptionCreated(msgspec.Struct, kw_only=True):
    subscription: SubscriptionRow
    secret: str  # the signing secret: shown this once, never again


class SubscriptionList(msgspec.Struct, kw_only=True):
    subscriptions: list[SubscriptionRow]


class DeliveryList(msgspec.Struct, kw_only=True):
    deliveries: list[DeliveryRow]  # the newest first


class DeliveryDetail(msgspec.Struct, kw_only=True):
    delivery: DeliveryRow
    body: Payload  # what is sent, less `delivered_at` and `run.url`, which each attempt adds
    attempts: list[AttemptRow]


def _row(subscription: WebhookSubscription) -> SubscriptionRow:
    created_at: datetime = subscription.created_on
    return SubscriptionRow(id=str(subscription.id), tenant_id=subscription.tenant_id, url=subscription.url,
                           events=list(subscription.events), repository_id=subscription.repository_id,
                           branch=subscription.branch, created_at=rfc3339(created_at),
                           created_by=subscription.created_by)


def _uuid(value: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise SubscriptionNotFoundError(f"no webhook subscription {value!r}: its id is a UUID") from None


class SubscriptionsController(Controller):
    path = "/api/v1/tenants/{tenant_id:str}/webhooks"
    tags = ["webhooks"]

    @post(operation_id="createWebhookSubscription", responses=errors(404, 503))
    async def subscribe(self, request: Request, tenant_id: str, data: SubscriptionRequest,
                        subscriptions: NamedDependency[Subscriptions]) -> SubscriptionCreated:
        """Send the tenant's run and job events that match to `url`, signed (docs/api.md
        "Outgoing webhooks"). The answer carries the signing secret, shown only this once."""
        subscription, secret = await blocking(subscriptions.subscribe, tenant_id, data.url, data.events,
                                              data.repository_id, data.branch, principal_of(request))
        return SubscriptionCreated(subscription=_row(subscription), secret=secret)

    @get(operation_id="listWebhookSubscriptions", responses=errors(404))
    async def list_subscriptions(self, request: Request, tenant_id: str, ledger: NamedDependency[LedgerApp],
                                 registry: NamedDependency[RegistryQueries]) -> SubscriptionList:
        """The tenant's subscriptions (never their secrets)."""
        if not principal_of(request).can_see(tenant_id):
            raise SubscriptionNotFoundError(f"tenant {tenant_id!r} not found")
        await blocking(ledger.registry.get_tenant, tenant_id)
        return SubscriptionList(subscriptions=await blocking(registry.subscriptions, tenant_id))

    @get("/{subscription_id:str}", operation_id="getWebhookSubscription", responses=errors(404))
    async def get_subscription(self, request: Request, tenant_id: str, subscription_id: str,
                               subscriptions: NamedDependency[Subscriptions]) -> SubscriptionRow:
        return _row(await blocking(subscriptions.get, tenant_id, _uuid(subscription_id), principal_of(request)))

    @delete("/{subscription_id:str}", operation_id="deleteWebhookSubscription", responses=errors(404))
    async def unsubscribe(self, request: Request, tenant_id: str, subscription_id: str,
                          subscriptions: NamedDependency[Subscriptions]) -> None:
        """Stop sending; deliveries not yet made are not made."""
        await blocking(subscriptions.delete, tenant_id, _uuid(subscription_id), principal_of(request))

    @get("/{subscription_id:str}/deliveries", operation_id="listWebhookDeliveries", responses=errors(404))
    async def deliveries(self, request: Request, tenant_id: str, subscription_id: str,
                         subscriptions: NamedDependency[Subscriptions],
                         webhook_outbox: NamedDependency[WebhookOutbox],
                         limit: Annotated[int, Parameter(ge=1, le=500)] = 50) -> DeliveryList:
        """The delivery log: each event sent (or to be sent), newest first, with its attempts and
        the receiver's last answer."""
        subscription = await blocking(subscriptions.get, tenant_id, _uuid(subscription_id), principal_of(request))
        return DeliveryList(deliveries=await blocking(webhook_outbox.of_subscription, str(subscription.id), limit))

    @get("/{subscription_id:str}/deliveries/{delivery_id:str}", operation_id="getWebhookDelivery",
         responses=errors(404))
    async def delivery(self, request: Request, tenant_id: str, subscription_id: str, delivery_id: str,
                       subscriptions: NamedDependency[Subscriptions],
                       webhook_outbox: NamedDependency[WebhookOutbox]) -> DeliveryDetail:
        """One delivery: its body and every attempt, with what the receiver answered."""
        subscription = await blocking(subscriptions.get, tenant_id, _uuid(subscription_id), principal_of(request))
        found = await blocking(webhook_outbox.get, str(subscription.id), delivery_id)
        if found is None:
            raise SubscriptionNotFoundError(f"webhook subscription {subscription_id} has no delivery {delivery_id!r}")
        row, payload, attempts = found
        return DeliveryDetail(delivery=row, body=msgspec.json.decode(payload, type=Payload), attempts=attempts)

    @post("/{subscription_id:str}/deliveries/{delivery_id:str}/redeliver", operation_id="redeliverWebhook",
          status_code=202, responses=errors(404))
    async def redeliver(self, request: Request, tenant_id: str, subscription_id: str, delivery_id: str,
                        subscriptions: NamedDependency[Subscriptions], webhook_outbox: NamedDependency[WebhookOutbox],
                        ledger: NamedDependency[LedgerApp]) -> DeliveryRow:
        """Send the delivery again, with the same id, whether it was delivered or given up."""
        subscription = await blocking(subscriptions.get, tenant_id, _uuid(subscription_id), principal_of(request))
        if not await blocking(webhook_outbox.redeliver, str(subscription.id), delivery_id, ledger.clock()):
            raise SubscriptionNotFoundError(f"webhook subscription {subscription_id} has no delivery {delivery_id!r}")
        found = await blocking(webhook_outbox.get, str(subscription.id), delivery_id)
        assert found is not None
        return found[0]
