"""Delivers the outgoing-webhook outbox (projections/webhook_outbox.py) to each subscription's
URL, at least once (commands.outbound.OutboxSender), signed with the subscription's secret
(domain.subscriptions.signature). Retried with backoff up to MAX_ATTEMPTS, then given up until
someone asks for a redelivery; each attempt is in the delivery log.

Every attempt carries the same `X-Ledgerci-Delivery` id: a receiver that sees one twice (a
sender killed after the receiver answered, a redelivery) can tell. The order of deliveries to
one subscription follows the events, but a retried one arrives after those that followed it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

import msgspec

from commands.outbound import Outbound, Outbox, OutboxSender, Outcome
from commands.subscriptions import Subscriptions
from domain.errors import DomainError
from domain.subscriptions import signature

MAX_ATTEMPTS = 12  # with the default 5 s doubling to a cap of 21 min: about 2 hours of trying


class DueDelivery(Protocol):
    id: str
    subscription_id: str
    event: str
    payload: str  # the stored body, without delivered_at
    attempts: int


class WebhookSender(OutboxSender):
    max_attempts = MAX_ATTEMPTS

    def __init__(self, outbox: Outbox, subscriptions: Subscriptions, outbound: Outbound,
                 clock: Callable[[], datetime], public_url: str, *, retry_seconds: float) -> None:
        super().__init__(outbox, outbound, clock, public_url, retry_seconds=retry_seconds)
        self.subscriptions = subscriptions

    def receiver(self, row: DueDelivery) -> str:
        return row.subscription_id

    async def deliver(self, row: DueDelivery) -> Outcome:
        try:
            found = await asyncio.to_thread(self.subscriptions.signing, row.subscription_id)
        except DomainError as unavailable:
            return Outcome(False, f"not sent: {unavailable}")
        if found is None:
            return Outcome(True, "not sent: the subscription was deleted")
        secret, subscription = found
        now = self.clock()
        body = self._body(row.payload, now)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "ledgerci-webhooks/1",
            "X-Ledgerci-Event": row.event,
            "X-Ledgerci-Delivery": row.id,
            "X-Ledgerci-Signature": signature(secret, int(now.timestamp()), body),
        }
        return await self.outbound.post(subscription.url, headers, content=body)

    def _body(self, payload: str, now: datetime) -> bytes:
        body = msgspec.json.decode(payload)
        body["run"]["url"] = f"{self.public_url}/#/runs/{body['run']['id']}"
        body["delivered_at"] = now
        return msgspec.json.encode(body)
