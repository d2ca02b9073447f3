"""Builds the Litestar application from its dependencies (nothing is built at import time)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from litestar import Litestar, Response, get
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.status_codes import HTTP_503_SERVICE_UNAVAILABLE
from nats.aio.client import Client as NATS

from commands.app import LedgerApp
from gateway.auth import Authenticator, make_guard
from gateway.control import Control
from gateway.errors import EXCEPTION_HANDLERS
from gateway.logs import LogReader
from gateway.models import Health
from gateway.routes import AdminController, Defaults, PushController, RunsController
from projections.admission import PushAdmission
from projections.queries import RunQueries


@dataclass(frozen=True)
class GatewayDeps:
    ledger: LedgerApp
    queries: RunQueries
    nc: NATS
    admin_token: str
    defaults: Defaults
    admission: PushAdmission


def create_app(deps: GatewayDeps) -> Litestar:
    logs = LogReader(deps.nc.jetstream())
    control = Control(deps.nc)

    @get("/healthz", opt={"public": True}, operation_id="healthz", tags=["health"])
    async def healthz() -> Health:
        """Liveness: the process answers."""
        return Health(status="ok")

    @get("/readyz", opt={"public": True}, operation_id="readyz", tags=["health"])
    async def readyz() -> Response[Health]:
        """Readiness: the event store and NATS are reachable."""
        checks = {"nats": "ok" if deps.nc.is_connected else "disconnected"}
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

    return Litestar(
        route_handlers=[healthz, readyz, PushController, AdminController, RunsController],
        guards=[make_guard(Authenticator(deps.ledger, deps.admin_token))],
        dependencies={
            "ledger": Provide(lambda: deps.ledger, sync_to_thread=False),
            "queries": Provide(lambda: deps.queries, sync_to_thread=False),
            "logs": Provide(lambda: logs, sync_to_thread=False),
            "control": Provide(lambda: control, sync_to_thread=False),
            "defaults": Provide(lambda: deps.defaults, sync_to_thread=False),
            "admission": Provide(lambda: deps.admission, sync_to_thread=False),
        },
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=OpenAPIConfig(title="ledgerci", version="0.1.0", path="/schema"),
    )
