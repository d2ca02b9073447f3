"""Wiring: builds each service from Settings and runs it until `stop` is set.

One module per service (relay, projector, scheduler, reaper, gateway, runner), imported only
by the process that runs it: a process importing every service's dependencies spent about a
second of CPU before it did anything, and a cluster of six started on two cores for seconds.
This package wires and decides nothing. Every service prepares the schema and streams it
needs (idempotently, under a lock), so a deployment cannot start them in a wrong order.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

from nats.aio.client import Client as NATS

from ledgerci.health import Probes, nats_connected, serving
from ledgerci.nats_connection import nats_connection
from ledgerci.settings import Settings

if TYPE_CHECKING:
    from commands.app import LedgerApp
    from projections.sql import Database
    from runner.executor import Executor

EMBEDDED_WORKER_THREADS = 32

# The services that work on the store, by the name `ledgerci NAME` runs, as "module:function"
# of this package; the runner is apart: it never opens the database (`runner.runner_service`).
StoreService = Callable[[Settings, asyncio.Event, "LedgerApp", "Database", NATS], Awaitable[None]]
STORE_SERVICES: dict[str, str] = {
    "relay": "relay:relay_service",
    "projector": "projector:projector_service",
    "scheduler": "scheduler:scheduler_service",
    "reaper": "reaper:reaper_service",
    "gateway": "gateway:gateway_service",
}


def store_service(name: str) -> StoreService:
    module, function = STORE_SERVICES[name].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), function)


# ----- entry points ----------------------------------------------------------------------------

async def run_service(name: str, settings: Settings, stop: asyncio.Event) -> None:
    """One service per process (`ledgerci relay|projector|scheduler|runner|gateway`).

    With LEDGERCI_METRICS_PORT, every one but the gateway (which has its own port) serves
    /healthz, /readyz and /metrics there: ready once NATS is connected and, but for the runner,
    the store answers; not ready again while either is away."""
    probes = Probes(needs=("nats",) if name == "runner" else ("nats", "store"))
    probes.watch_loop(asyncio.get_running_loop())
    async with AsyncExitStack() as stack:
        if settings.metrics_port and name != "gateway":
            stack.enter_context(serving(probes, settings.host, settings.metrics_port))
        nc = await stack.enter_async_context(nats_connection(settings, f"ledgerci-{name}"))
        probes.add("nats", nats_connected(nc))
        if name == "runner":  # the runner never opens the database
            from ledgerci.services.runner import runner_service

            await runner_service(settings, stop, nc)
            return
        service = store_service(name)
        from ledgerci.resources import store

        ledger, db = await stack.enter_async_context(store(settings))
        probes.add("store", lambda: db.query("SELECT 1"))
        await service(settings, stop, ledger, db, nc)


async def run_all(settings: Settings, stop: asyncio.Event, on_ready: Callable[[], None] | None = None, *,
                  runner_executor: Executor | None = None) -> None:
    """Every service but the runner in one process (`ledgerci dev`), on one store and one NATS
    connection; the runner in a child process, or, given an executor, in this process (the
    fast tests' scripted executor: tests/support/in_process.py)."""
    from ledgerci.resources import store
    from ledgerci.runner_process import run_runner_process
    from ledgerci.services.gateway import gateway_service
    from ledgerci.services.runner import runner_service

    # The services share this process's worker threads. Python's default (cores + 4: six
    # here) let a burst of pushes waiting for the store hold every thread, and the runners'
    # commands then timed out behind them.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=EMBEDDED_WORKER_THREADS, thread_name_prefix="ledgerci"))
    async with AsyncExitStack() as stack:
        ledger, db = await stack.enter_async_context(store(settings))
        nc = await stack.enter_async_context(nats_connection(settings, "ledgerci-dev"))
        async with asyncio.TaskGroup() as group:
            for name in STORE_SERVICES:
                if name != "gateway":  # it starts last, below, and says when it is ready
                    group.create_task(store_service(name)(settings, stop, ledger, db, nc))
            if runner_executor is None:
                # The runner is a process of its own (ledgerci.runner_process): the second core.
                group.create_task(run_runner_process(settings, stop))
            else:
                group.create_task(runner_service(settings, stop, nc, runner_executor))
            group.create_task(gateway_service(settings, stop, ledger, db, nc, on_ready))
