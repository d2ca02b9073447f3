"""The gateway: the HTTP API, the dashboard and the live streams, served by uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import uvicorn
from nats.aio.client import Client as NATS

from commands.app import LedgerApp
from domain.schedule import ScheduleClock
from gateway.app import GatewayDeps, create_app
from gateway.routes import Defaults
from ledgerci.resources import (
    secret_book,
)
from ledgerci.settings import Settings
from projections.admission import PushAdmission
from projections.queries import RunQueries
from projections.sql import Database

log = logging.getLogger("ledgerci")


class _Server(uvicorn.Server):
    """uvicorn, minus its own signal handling: our stop event decides when to shut down."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[override]
        yield


async def gateway_service(settings: Settings, stop: asyncio.Event, ledger: LedgerApp, db: Database,
                          nc: NATS, on_ready: Callable[[], None] | None = None) -> None:
    if not settings.admin_token:
        raise SystemExit("LEDGERCI_ADMIN_TOKEN is not set: the gateway will not run without one")
    app = create_app(GatewayDeps(
        ledger=ledger, queries=RunQueries(db), nc=nc, admin_token=settings.admin_token,
        defaults=Defaults(settings.default_max_concurrent_jobs, settings.default_max_queued_runs,
                          settings.default_pushes_per_minute),
        admission=PushAdmission(db), stopping=stop, secret_book=secret_book(settings, ledger),
        schedule_clock=ScheduleClock(settings.schedule_clock_speed),
    ))
    # httptools: uvicorn's C parser (a dependency), cheaper per request than its pure-Python h11.
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning", http="httptools",
                            timeout_graceful_shutdown=5, lifespan="on", log_config=None)
    server = _Server(config)

    async def stop_when_asked() -> None:
        await stop.wait()
        server.should_exit = True

    async def announce() -> None:
        while not server.started:
            await asyncio.sleep(0.02)  # start-up only, not a hot path
        log.info("gateway listening on http://%s:%d", settings.host, settings.port)
        if on_ready:
            on_ready()

    async with asyncio.TaskGroup() as group:
        watcher = group.create_task(stop_when_asked())
        announcer = group.create_task(announce())
        await server.serve()
        watcher.cancel()
        announcer.cancel()
