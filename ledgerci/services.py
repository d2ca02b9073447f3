"""Wiring: builds each service from Settings and runs it until `stop` is set.

This module wires and decides nothing. Every service prepares the schema and streams it
needs (idempotently, under a lock), so a deployment cannot start them in a wrong order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from typing import cast

import uvicorn
from docker.errors import DockerException
from nats.aio.client import Client as NATS

from commands.admission import run_admission
from commands.app import LedgerApp
from commands.artifact_expiry import ArtifactExpiry
from commands.dead_letter import serve_dead_letters
from commands.leadership import FileLeadership, Leadership, PostgresLeadership
from commands.outbound import Outbound
from commands.reaper import Reaper
from commands.relay import Relay
from commands.runner_service import STALLED_AFTER_SECONDS, serve_runner_commands
from commands.schedule_firing import ScheduleFiring, run_schedules
from commands.scheduler import run_planner
from commands.status_sender import StatusSender
from commands.store import is_postgres, sqlite_path
from commands.subscriptions import Subscriptions
from commands.wake import run_woken
from commands.webhook_sender import WebhookSender
from domain.artifacts import BUCKET as ARTIFACTS_BUCKET
from domain.caches import BUCKET as CACHES_BUCKET
from domain.schedule import ScheduleClock
from gateway.app import GatewayDeps, create_app
from gateway.logs import read_live_log
from gateway.routes import Defaults
from gitcache import GitMirrors
from ledgerci.health import Probes, nats_connected, serving
from ledgerci.resources import (
    nats_connection,
    secret_book,
    store,
    waking_on_commits,
)
from ledgerci.runner_process import run_runner_process
from ledgerci.settings import Settings
from objectstore import bucket
from projections.admission import PushAdmission
from projections.artifacts import ArtifactQueries
from projections.log_archive import LogArchive, LogArchiver
from projections.queries import AdmissionQueries, DeadlineQueries, RunQueries
from projections.runs import RunsProjection
from projections.schedules import ScheduleQueries
from projections.sql import Database
from projections.status_outbox import StatusOutbox
from projections.webhook_outbox import WebhookOutbox
from runner.agent import RunnerAgent
from runner.attempt_files import AttemptFiles
from runner.caches import Caches
from runner.docker import PULL_POLICIES, DockerExecutor, DockerSettings, PullPolicy
from runner.executor import Executor
from runner.local import LocalExecutor

log = logging.getLogger("ledgerci")

EMBEDDED_WORKER_THREADS = 32


# ----- the services ---------------------------------------------------------------------------

async def relay_service(settings: Settings, stop: asyncio.Event, ledger: LedgerApp, db: Database,
                        nc: NATS) -> None:
    wake = asyncio.Event()
    relay = Relay(ledger, nc.jetstream(), settings.stream_replicas)
    async with waking_on_commits(settings, ledger, stop, wake):
        await run_woken(relay.publish_pending, wake, stop, settings.idle_check_seconds)


async def projector_service(settings: Settings, stop: asyncio.Event, ledger: LedgerApp, db: Database,
                            nc: NATS) -> None:
    wake = asyncio.Event()
    projection = RunsProjection(db)

    # Commit statuses and outgoing webhooks go out from the outboxes the projection fills
    # (projections/status_outbox.py, projections/webhook_outbox.py).
    book = secret_book(settings, ledger)
    outbound = Outbound(allow_private=settings.outbound_allow_private)
    statuses = StatusSender(StatusOutbox(db), book, outbound, ledger.clock, settings.public_url,
                            retry_seconds=settings.status_retry_seconds)
    webhooks = WebhookSender(WebhookOutbox(db), Subscriptions(ledger, book), outbound, ledger.clock,
                             settings.public_url, retry_seconds=settings.webhook_retry_seconds)
    status_wake, webhook_wake = asyncio.Event(), asyncio.Event()

    async def step() -> int:
        applied = await asyncio.to_thread(projection.catch_up,
                                          lambda position: ledger.store.events_after(position, 500))
        if applied:
            status_wake.set()
            webhook_wake.set()
        return applied

    # The log archiver shares the process, and with it the events read (commands.recent_events).
    js = nc.jetstream()
    archiver = LogArchiver(LogArchive(db), ledger.store.events_after,
                           lambda job_id, attempt: read_live_log(js, job_id, attempt))
    archive_wake = asyncio.Event()
    try:
        async with waking_on_commits(settings, ledger, stop, wake, archive_wake), asyncio.TaskGroup() as group:
            group.create_task(run_woken(step, wake, stop, settings.idle_check_seconds))
            group.create_task(run_woken(archiver.archive_pending, archive_wake, stop, settings.idle_check_seconds))
            group.create_task(run_woken(statuses.send_due, status_wake, stop, settings.idle_check_seconds))
            group.create_task(run_woken(webhooks.send_due, webhook_wake, stop, settings.idle_check_seconds))
    finally:
        await outbound.close()


async def reaper_service(settings: Settings, stop: asyncio.Event, ledger: LedgerApp, db: Database,
                         nc: NATS) -> None:
    reaper = Reaper(ledger, DeadlineQueries(db).overdue)
    expiry = ArtifactExpiry(ledger, ArtifactQueries(db).expiring, bucket(nc.jetstream(), ARTIFACTS_BUCKET))
    never = asyncio.Event()  # the reaper keeps time; nothing wakes it early

    async def sweep() -> int:
        return await reaper.sweep() + await expiry.sweep()

    async with asyncio.TaskGroup() as group:
        group.create_task(serve_dead_letters(nc, stop))
        await run_woken(_idle_after(sweep), never, stop, settings.reaper_interval_seconds)


def _idle_after(sweep: Callable[[], Awaitable[int]]) -> Callable[[], Awaitable[int]]:
    """A periodic pass: run it once per wake-up, then wait for the next tick."""

    async def once() -> int:
        await sweep()
        return 0

    once.__qualname__ = getattr(sweep, "__qualname__", "sweep")
    return once


async def scheduler_service(settings: Settings, stop: asyncio.Event, ledger: LedgerApp, db: Database,
                            nc: NATS) -> None:
    mirrors = GitMirrors(settings.data_dir / "mirrors")
    try:
        async with asyncio.TaskGroup() as group:
            # Replicas on PostgreSQL step aside while their store stalls; the embedded one never.
            stalled_after = STALLED_AFTER_SECONDS if is_postgres(settings.database_url) else None
            group.create_task(serve_runner_commands(ledger, nc, stop, secret_book(settings, ledger), stalled_after))
            group.create_task(run_planner(ledger, nc.jetstream(), mirrors, stop, settings.stream_replicas))
            group.create_task(admission_service(settings, stop, ledger, db, nc))
            group.create_task(run_schedules(ScheduleFiring(ledger.runs, ScheduleQueries(db).in_force,
                                                           ScheduleClock(settings.schedule_clock_speed), ledger.clock),
                                            stop))
    finally:
        mirrors.close()


async def admission_service(settings: Settings, stop: asyncio.Event, ledger: LedgerApp, db: Database,
                            nc: NATS) -> None:
    """Weighted fair admission, led by one scheduler replica (commands.admission)."""
    wake = asyncio.Event()
    leadership: Leadership
    if is_postgres(settings.database_url):
        leadership = PostgresLeadership(settings.database_url)
    else:
        leadership = FileLeadership(sqlite_path(settings.database_url).with_suffix(".admission.lock"))
    async with waking_on_commits(settings, ledger, stop, wake):
        await run_admission(ledger, nc, AdmissionQueries(db).unfinished_jobs, leadership, wake, stop,
                            reoffer_after=settings.reoffer_after_seconds, idle_seconds=settings.idle_check_seconds,
                            stream_replicas=settings.stream_replicas)


async def runner_service(settings: Settings, stop: asyncio.Event, nc: NATS, executor: Executor | None = None) -> None:
    agent = RunnerAgent(
        nc, executor or await _executor(settings), runner_id=settings.runner_id, pool=settings.runner_pool,
        slots=settings.runner_slots, data_dir=settings.data_dir, max_deliver=settings.max_deliver,
        stop_grace=settings.stop_grace_seconds, max_log_bytes=settings.max_log_bytes,
        lease_seconds=settings.lease_seconds, files=await _attempt_files(settings, nc),
    )
    await agent.run(stop)


async def _attempt_files(settings: Settings, nc: NATS) -> AttemptFiles:
    js = nc.jetstream()
    caches = Caches(bucket(js, CACHES_BUCKET), tenant_quota_bytes=settings.cache_tenant_max_bytes,
                    scratch=settings.data_dir / "cache-scratch")
    return AttemptFiles(bucket(js, ARTIFACTS_BUCKET), caches,
                        artifact_tenant_quota_bytes=settings.artifact_tenant_max_bytes)


async def _executor(settings: Settings) -> Executor:
    if settings.executor == "local":
        return LocalExecutor()
    if settings.executor != "docker":
        raise SystemExit(f"LEDGERCI_EXECUTOR is {settings.executor!r}: use local or docker")
    if settings.docker_pull not in PULL_POLICIES:
        raise SystemExit(f"LEDGERCI_DOCKER_PULL is {settings.docker_pull!r}: use one of {', '.join(PULL_POLICIES)}")
    try:
        executor = DockerExecutor(DockerSettings(
            pull=cast(PullPolicy, settings.docker_pull), network=settings.docker_network, user=settings.docker_user,
            default_image=settings.docker_default_image, pids_limit=settings.docker_pids_limit,
            max_cpus=settings.docker_max_cpus, max_memory=settings.docker_max_memory,
            read_only=settings.docker_read_only,
        ), runner_id=settings.runner_id)
        # A previous life of this runner id may have died mid-job: its containers go before any new job.
        removed = await executor.remove_leftovers()
    except DockerException as failed:
        raise SystemExit(f"LEDGERCI_EXECUTOR=docker, but the Docker engine does not answer: {failed}") from None
    log.info("docker executor ready (network %s, pull %s); removed %d left-over containers",
             settings.docker_network, settings.docker_pull, removed)
    return executor


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
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning",
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


# The services that work on the store, by the name `ledgerci NAME` runs; the runner is apart:
# it never opens the database (`runner_service`).
StoreService = Callable[[Settings, asyncio.Event, LedgerApp, Database, NATS], Awaitable[None]]
STORE_SERVICES: dict[str, StoreService] = {
    "relay": relay_service,
    "projector": projector_service,
    "scheduler": scheduler_service,
    "reaper": reaper_service,
    "gateway": gateway_service,
}


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
            await runner_service(settings, stop, nc)
            return
        ledger, db = await stack.enter_async_context(store(settings))
        probes.add("store", lambda: db.query("SELECT 1"))
        await STORE_SERVICES[name](settings, stop, ledger, db, nc)


async def run_all(settings: Settings, stop: asyncio.Event, on_ready: Callable[[], None] | None = None, *,
                  runner_executor: Executor | None = None) -> None:
    """Every service but the runner in one process (`ledgerci dev`), on one store and one NATS
    connection; the runner in a child process, or, given an executor, in this process (the
    fast tests' scripted executor: tests/support/in_process.py)."""
    # The services share this process's worker threads. Python's default (cores + 4: six
    # here) let a burst of pushes waiting for the store hold every thread, and the runners'
    # commands then timed out behind them.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=EMBEDDED_WORKER_THREADS, thread_name_prefix="ledgerci"))
    async with AsyncExitStack() as stack:
        ledger, db = await stack.enter_async_context(store(settings))
        nc = await stack.enter_async_context(nats_connection(settings, "ledgerci-dev"))
        async with asyncio.TaskGroup() as group:
            for name, service in STORE_SERVICES.items():
                if name != "gateway":  # it starts last, below, and says when it is ready
                    group.create_task(service(settings, stop, ledger, db, nc))
            if runner_executor is None:
                # The runner is a process of its own (ledgerci.runner_process): the second core.
                group.create_task(run_runner_process(settings, stop))
            else:
                group.create_task(runner_service(settings, stop, nc, runner_executor))
            group.create_task(gateway_service(settings, stop, ledger, db, nc, on_ready))
