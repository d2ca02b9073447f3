"""Builds the Litestar application from its dependencies (nothing is built at import time)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from importlib.metadata import version

from litestar import Litestar, Response, Router, get
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import JsonRenderPlugin, YamlRenderPlugin
from litestar.status_codes import HTTP_503_SERVICE_UNAVAILABLE
from nats.aio.client import Client as NATS

from commands.app import LedgerApp
from commands.secrets import SecretBook
from commands.subscriptions import Subscriptions
from domain.schedule import ScheduleClock
from gateway.artifacts import ArtifactReader, ArtifactsController
from gateway.audit import AuditController
from gateway.auth import Authenticator, make_guard
from gateway.control import Control
from gateway.dashboard import dashboard_routes
from gateway.errors import EXCEPTION_HANDLERS
from gateway.live import LiveController, live_socket
from gateway.logs import LogReader
from gateway.metrics import CONTENT_TYPE, SystemMetrics
from gateway.models import Health
from gateway.openapi import BEARER_REQUIRED, SECURITY_COMPONENTS, ClosedStructSchemaPlugin, allow_every_method
from gateway.presence import RunnerPresenceView
from gateway.repositories import RepositoriesController
from gateway.routes import AdminController, Defaults, PushController, RunsController
from gateway.schedules import ScheduleView
from gateway.secrets import SecretsController
from gateway.statuses import RunStatusesController, StatusTargetController
from gateway.streams import Streams
from gateway.subscriptions import SubscriptionsController
from gateway.webhooks import DeliveriesController, WebhookSettingsController
from projections.admission import PushAdmission
from projections.artifacts import ArtifactQueries
from projections.log_archive import LogArchive
from projections.queries import LoadQueries, RunQueries
from projections.registry import RegistryQueries
from projections.schedules import ScheduleQueries
from projections.status_outbox import StatusOutbox
from projections.webhook_outbox import WebhookOutbox

# How long NATS may take to answer a ping before the gateway says it is not ready.
NATS_READY_SECONDS = 1.0
# Larger bodies are refused with 413 before they are read; the largest real one is a few KiB.
MAX_REQUEST_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class GatewayDeps:
    ledger: LedgerApp
    queries: RunQueries
    nc: NATS
    admin_token: str
    defaults: Defaults
    admission: PushAdmission
    # Built with LEDGERCI_SECRET_KEY's keyring; without one, secret routes answer 503 saying so.
    secret_book: SecretBook | None = None
    # Set when the gateway is told to stop: open streams end at once with a retry hint.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    schedule_clock: ScheduleClock = field(default_factory=ScheduleClock)  # LEDGERCI_SCHEDULE_CLOCK_SPEED


def create_app(deps: GatewayDeps) -> Litestar:
    logs = LogReader(deps.nc.jetstream(), LogArchive(deps.queries.db))
    control = Control(deps.nc)
    secret_book = deps.secret_book or SecretBook(deps.ledger, None)
    authenticator = Authenticator(deps.ledger.registry, deps.admin_token)
    streams = Streams(deps.ledger, deps.nc, logs, deps.stopping)
    presence = RunnerPresenceView()
    registry = RegistryQueries(deps.queries.db)
    outbox = StatusOutbox(deps.queries.db)
    webhook_outbox = WebhookOutbox(deps.queries.db)
    subscriptions = Subscriptions(deps.ledger, secret_book)
    artifact_queries = ArtifactQueries(deps.queries.db)
    artifact_reader = ArtifactReader(deps.nc)
    schedules = ScheduleView(ScheduleQueries(deps.queries.db), deps.schedule_clock, deps.ledger.clock)

    async def watch_runners() -> None:
        await presence.watch(deps.nc)

    @get("/healthz", opt={"public": True}, operation_id="healthz", tags=["health"])
    async def healthz() -> Health:
        """Liveness: the process answers."""
        return Health(status="ok")

    @get("/readyz", opt={"public": True}, operation_id="readyz", tags=["health"],
         responses={503: ResponseSpec(Health, description="the store or NATS is unreachable")})
    async def readyz() -> Response[Health]:
        """Readiness: the event store and NATS are reachable."""
        # A round trip, not the client's own idea of its connection: a connection cut without a
        # word (a partition) still looks connected until its pings go unanswered, minutes later.
        try:
            await deps.nc.flush(timeout=NATS_READY_SECONDS)
            checks = {"nats": "ok"}
        except Exception as failed:  # readiness reports, it does not raise
            checks = {"nats": f"unreachable: {type(failed).__name__}"}
        try:
            await asyncio.wait_for(asyncio.to_thread(deps.queries.db.query, "SELECT 1"), timeout=2)
            checks["store"] = "ok"
        except Exception as failed:  # readiness reports, it does not raise
            checks["store"] = f"unavailable: {type(failed).__name__}"
        ready = all(value == "ok" for value in checks.values())
        return Response(
            Health(status="ok" if ready else "unavailable", checks=checks),
            status_code=200 if ready else HTTP_503_SERVICE_UNAVAILABLE,
        )

    metrics = SystemMetrics(LoadQueries(deps.queries.db), deps.ledger.store.max_position,
                            deps.nc.jetstream())

    @get("/metrics", opt={"public": True}, operation_id="metrics", tags=["health"], media_type=CONTENT_TYPE)
    async def prometheus_metrics() -> bytes:
        """Prometheus metrics: load per tenant, projection and relay lag, and this process's own."""
        return await metrics.render()

    return Litestar(
        route_handlers=[
            healthz, readyz, prometheus_metrics, live_socket(authenticator),
            *dashboard_routes(),  # the page and its assets: public, outside the schema
            # These need a token (the guard below checks every route not marked public); the schema says so.
            Router("/", route_handlers=[PushController, AdminController, RepositoriesController, RunsController,
                                        LiveController, SecretsController, AuditController, WebhookSettingsController,
                                        StatusTargetController, RunStatusesController, SubscriptionsController,
                                        ArtifactsController],
                   security=BEARER_REQUIRED),
            # A git host's deliveries: no token, their signature is checked instead (gateway/webhooks.py).
            DeliveriesController,
        ],
        guards=[make_guard(authenticator)],
        dependencies={
            "ledger": Provide(lambda: deps.ledger, sync_to_thread=False),
            "queries": Provide(lambda: deps.queries, sync_to_thread=False),
            "logs": Provide(lambda: logs, sync_to_thread=False),
            "control": Provide(lambda: control, sync_to_thread=False),
            "defaults": Provide(lambda: deps.defaults, sync_to_thread=False),
            "admission": Provide(lambda: deps.admission, sync_to_thread=False),
            "secret_book": Provide(lambda: secret_book, sync_to_thread=False),
            "streams": Provide(lambda: streams, sync_to_thread=False),
            "presence": Provide(lambda: presence, sync_to_thread=False),
            "registry": Provide(lambda: registry, sync_to_thread=False),
            "schedules": Provide(lambda: schedules, sync_to_thread=False),
            "outbox": Provide(lambda: outbox, sync_to_thread=False),
            "webhook_outbox": Provide(lambda: webhook_outbox, sync_to_thread=False),
            "subscriptions": Provide(lambda: subscriptions, sync_to_thread=False),
            "artifact_queries": Provide(lambda: artifact_queries, sync_to_thread=False),
            "artifact_reader": Provide(lambda: artifact_reader, sync_to_thread=False),
            "clock": Provide(lambda: deps.ledger.clock, sync_to_thread=False),
        },
        on_startup=[watch_runners],
        exception_handlers=EXCEPTION_HANDLERS,
        logging_config=None,  # the process configured logging already (text or JSON, LEDGERCI_LOG_FORMAT)
        # The schema as JSON at /schema and /schema/openapi.json (YAML at /schema/openapi.yaml), never
        # a documentation page: Litestar's default loads scripts and fonts from CDNs.
        openapi_config=OpenAPIConfig(title="ledgerci", version=version("ledgerci"), path="/schema",
                                     components=SECURITY_COMPONENTS,
                                     render_plugins=[JsonRenderPlugin(path=["/", "/openapi.json"]),
                                                     YamlRenderPlugin()]),
        plugins=[ClosedStructSchemaPlugin()],
        request_max_body_size=MAX_REQUEST_BODY_BYTES,
        before_send=[allow_every_method],
    )
