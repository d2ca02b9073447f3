"""A tenant's outgoing-webhook subscriptions: made, read and deleted by its principal; their
signing secrets read by the sender (commands/webhook_sender.py).

The signing secret is made here, shown once in the answer to the subscribe, and otherwise
held only as ciphertext bound to the subscription's id (commands.secrets.SecretBook)."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from uuid import UUID, uuid4

from commands.app import LedgerApp
from commands.principal import Principal
from commands.secrets import SecretBook
from domain.errors import RepositoryNotFoundError, SubscriptionNotFoundError, TenantNotFoundError
from domain.secrets import subscription_context
from domain.subscriptions import WebhookSubscription, check_branch, check_url, expand_events


class Subscriptions:
    def __init__(self, app: LedgerApp, book: SecretBook) -> None:
        self.app = app
        self.book = book

    def subscribe(self, tenant_id: str, url: str, events: Sequence[str], repository_id: str | None,
                  branch: str | None, principal: Principal) -> tuple[WebhookSubscription, str]:
        """The new subscription and its signing secret (the only time the secret is shown)."""
        if not principal.can_see(tenant_id):
            raise TenantNotFoundError(f"tenant {tenant_id!r} not found")
        self.app.registry.get_tenant(tenant_id)
        check_url(url)
        check_branch(branch)
        names = expand_events(events)
        if repository_id is not None:
            repository = self.app.registry.get_repository(repository_id, principal)
            if repository.tenant_id != tenant_id:  # the admin naming another tenant's repository
                raise RepositoryNotFoundError(f"repository {repository_id!r} not found in tenant {tenant_id!r}")
        subscription_id = uuid4()
        secret = f"whsec_{secrets.token_urlsafe(32)}"
        subscription = WebhookSubscription.subscribe(
            subscription_id=subscription_id, tenant_id=tenant_id, url=url, events=names,
            repository_id=repository_id, branch=branch,
            ciphertext=self.book.encrypt(secret, subscription_context(str(subscription_id))),
            actor=principal.name, at=self.app.clock())
        self.app.store.save_together(subscription)
        return subscription, secret

    def get(self, tenant_id: str, subscription_id: UUID, principal: Principal) -> WebhookSubscription:
        """The tenant's subscription, if the principal may see it (else 404, as if absent)."""
        subscription = self.app.store.load(subscription_id, WebhookSubscription)
        if (subscription is None or subscription.deleted or subscription.tenant_id != tenant_id
                or not principal.can_see(tenant_id)):
            raise SubscriptionNotFoundError(f"tenant {tenant_id!r} has no webhook subscription {subscription_id}")
        return subscription

    def delete(self, tenant_id: str, subscription_id: UUID, principal: Principal) -> None:
        self.get(tenant_id, subscription_id, principal)
        self.app.store.decide(lambda: self._stored(subscription_id),
                              lambda subscription: subscription.delete(self.app.clock(), principal.name),
                              f"webhook subscription {subscription_id}")

    def signing(self, subscription_id: str) -> tuple[str, WebhookSubscription] | None:
        """(the signing secret, the subscription) a delivery is sent with; None once deleted."""
        subscription = self.app.store.load(UUID(subscription_id), WebhookSubscription)
        if subscription is None or subscription.deleted:
            return None
        secret = self.book.decrypt(subscription.ciphertext, subscription_context(subscription_id),
                                   "the webhook subscription's secret")
        return secret, subscription

    def _stored(self, subscription_id: UUID) -> WebhookSubscription:
        subscription = self.app.store.load(subscription_id, WebhookSubscription)
        assert subscription is not None  # seen a moment ago, and never removed from the store
        return subscription
