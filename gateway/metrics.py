"""GET /metrics: Prometheus text, the whole system's load and lag read at scrape time.

Gauges about the whole system come from the shared stores when scraped, so every gateway
replica answers the same: jobs queued and running per tenant (the read model), how far the
read model and the EVENTS stream are behind the event store. Metrics this process observed
itself (commands.metrics, in `ledgerci dev` every service's) follow them. Other services
serve theirs on LEDGERCI_METRICS_PORT.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from nats.js import JetStreamContext
from prometheus_client import REGISTRY, CollectorRegistry, Gauge, generate_latest

from domain.messages import EVENTS_STREAM
from projections.queries import LoadQueries

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class SystemMetrics:
    def __init__(self, load: LoadQueries, store_head: Callable[[], int], js: JetStreamContext) -> None:
        self.load = load
        self.store_head = store_head
        self.js = js

    async def render(self) -> bytes:
        registry = CollectorRegistry()
        jobs = Gauge("ledgerci_jobs", "Jobs queued or running now, per tenant", ["tenant", "status"],
                     registry=registry)
        projection_lag = Gauge("ledgerci_projection_lag_events",
                               "Events stored but not yet in the read models", registry=registry)
        relay_lag = Gauge("ledgerci_relay_lag_events",
                          "Events stored but not yet published to JetStream", registry=registry)
        active, projected, head = await asyncio.gather(
            asyncio.to_thread(self.load.active_jobs), asyncio.to_thread(self.load.projected_position),
            asyncio.to_thread(self.store_head),
        )
        for tenant, status, count in active:
            jobs.labels(tenant, status).set(count)
        projection_lag.set(max(head - projected, 0))
        published = await self._published_position()
        if published is not None:
            relay_lag.set(max(head - published, 0))
        return generate_latest(registry) + generate_latest(REGISTRY)

    async def _published_position(self) -> int | None:
        """The event-store position of the EVENTS stream's newest message (its Nats-Msg-Id)."""
        try:
            info = await self.js.stream_info(EVENTS_STREAM)
            if info.state.last_seq == 0:
                return 0
            message = await self.js.get_msg(EVENTS_STREAM, info.state.last_seq)
            return int((message.headers or {}).get("Nats-Msg-Id", 0))
        except Exception:  # NATS away: the gauge is left out rather than the scrape failing
            return None
