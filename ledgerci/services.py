"""Wiring: builds each service from Settings and runs it until `stop` is set.

This module wires and decides nothing. Every service prepares the schema and streams it
needs (idempotently, under a lock), so a deployment cannot start them in a wrong order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from typing import cast
from uuid import UUID

import nats
import psycopg
import uvicorn
from docker.errors import DockerException
from nats.aio.client import Client as NATS

from commands.admission import run_admission
from commands.app import LedgerApp
from commands.dead_letter import serve_dead_letters
from commands.leadership import FileLeadership, Leadership, PostgresLeadership
from commands.reaper import Reaper
from commands.relay import Relay
from commands.runner_service import serve_runner_commands
from commands.runs import Timing
from commands.scheduler import run_planner
from commands.schema import create_event_store, grant_service_role
from commands.secrets import SecretBook
from commands.sqlite_store import writer_lock
from commands.store import eventsourcing_env, is_postgres, sqlite_path
from commands.streams import ensure_streams
from commands.wake import run_woken
from domain.messages import EVENTS_SUBJECT_PREFIX, events_of_type
from gateway.app import GatewayDeps, create_app
from gateway.routes import Defaults
from gitcache import GitMirrors
from ledgerci.health import Probes, nats_connected, serving
from ledgerci.log_archiver import LogArchiver
from ledgerci.runner_process import run_runner_process
from ledgerci.settings import Settings
from projections.admission import PushAdmission
from projections.log_archive import ATTEMPT_ENDING_EVENT_NAMES, LogArchive
from projections.queries import AdmissionQueries, DeadlineQueries, RunQueries
from projections.rebuild import switch_over
from projections.rebuild import verify as verify_read_models
from projections.runs import RunsProjection
from projections.schema import create_read_model_tables
from projections.sql import Database, open_database
from runner.agent import RunnerAgent
from runner.docker import PULL_POLICIES, DockerExecutor, DockerSettings, PullPolicy
from runner.executor import Executor
from runner.local import LocalExecutor
from sealing import Keyring, KeyringError

log = logging.getLogger("ledgerci")

# Any fixed number: migrations of every process take this PostgreSQL advisory lock.
MIGRATION_LOCK_ID = 7_334_001
EVENTS_CHANNEL = "ledgerci_events"
EMBEDDED_WORKER_THREADS = 32  # eventsourcing NOTIFYs the events table's name on insert


# ----- resources -----------------------------------------------------------------------------

def open_ledger(settings: Settings) -> LedgerApp:
    return LedgerApp(
        env=eventsourcing_env(settings.database_url, pool_size=settings.db_pool_size),
        timing=Timing(settings.lease_seconds, settings.queue_timeout_seconds),
        audit_key=settings.audit_key.encode(),
    )


def secret_book(settings: Settings, ledger: LedgerApp) -> SecretBook:
    """Secrets under LEDGERCI_SECRET_KEY; without one, using them answers that it is not set."""
    if not settings.secret_key:
        return SecretBook(ledger, None)
    try:
        return SecretBook(ledger, Keyring.from_setting(settings.secret_key))
    except KeyringError as wrong:
        raise SystemExit(str(wrong)) from None


def migrate(settings: Settings, ledger: LedgerApp, db: Database) -> None:
    """Create the event store's and the read models' tables if they are missing."""
    if not is_postgres(settings.database_url):
        create_event_store(ledger, settings.database_url)
        create_read_model_tables(db)
        return
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_ID,))
        try:
            create_event_store(ledger, settings.database_url)
            create_read_model_tables(db)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_ID,))


async def connect_nats(settings: Settings, name: str) -> NATS:
    servers = [url.strip() for url in settings.nats_url.split(",") if url.strip()]
    return await nats.connect(
        servers=servers, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
        connect_timeout=5, allow_reconnect=True,
    )


@asynccontextmanager
async def store(settings: Settings, *, migrate_schema: bool | None = None) -> AsyncIterator[tuple[LedgerApp, Database]]:
    """The event store and the read-model database; tables made first if asked (or if
    LEDGERCI_AUTO_MIGRATE is on)."""
    ledger = await asyncio.to_thread(open_ledger, settings)
    # On SQLite the read models write to the event store's file: they take its writer lock.
    shared_lock = None if is_postgres(settings.database_url) else writer_lock(sqlite_path(settings.database_url))
    db = await asyncio.to_thread(open_database, settings.database_url, pool_size=settings.db_pool_size,
                                 writer_lock=shared_lock)
    try:
        if settings.auto_migrate if migrate_schema is None else migrate_schema:
            await asyncio.to_thread(migrate, settings, ledger, db)
        yield ledger, db
    finally:
        db.close()
        ledger.close()


@asynccontextmanager
async def nats_connection(settings: Settings, name: str) -> AsyncIterator[NATS]:
    nc = await connect_nats(settings, name)
    try:
        await ensure_streams(nc.jetstream(), settings.stream_replicas)
        yield nc
    finally:
        with contextlib.suppress(Exception):
            await nc.drain()


# ----- wake-ups --------------------------------------------------------------------------------

async def listen_for_commits(database_url: str, wake: asyncio.Event, stop: asyncio.Event) -> None:
    """PostgreSQL: wake on the NOTIFY that every insert of events sends."""
    while not stop.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
                await conn.execute(f"LISTEN {EVENTS_CHANNEL}")
                wake.set()  # anything committed while we were not listening
                async for _ in conn.notifies():
                    wake.set()
        except (psycopg.Error, OSError):
            log.warning("lost the LISTEN connection; reconnecting")
            await asyncio.sleep(0.5)


def wake_on_local_saves(ledger: LedgerApp, wake: asyncio.Event) -> None:
    """SQLite has no NOTIFY: saves made in this process wake the relay directly."""
    loop = asyncio.get_running_loop()
    ledger.store.on_saved(lambda: loop.call_soon_threadsafe(wake.set))


async def wake_on_published_events(nc: NATS, wake: asyncio.Event,
                                   subject: str = f"{EVENTS_SUBJECT_PREFIX}.>") -> None:
    """The projector (and the log archiver) wake when the relay has published something."""

    async def on_event(_msg) -> None:
        wake.set()

    await nc.subscribe(subject, cb=on_event)


# ----- the services ---------------------------------------------------------------------------

async def relay_service(settings: Settings, stop: asyncio.Event, ledger: LedgerApp, nc: NATS) -> None:
    wake = asyncio.Event()
    relay = Relay(ledger, nc.jetstream(), settings.stream_replicas)
    async with asyncio.TaskGroup() as group:
        if is_postgres(settings.database_url):
            listener = group.create_task(listen_for_commits(settings.database_url, wake, stop))
        else:
            wake_on_local_saves(ledger, wake)
            listener = None
        await run_woken(relay.publish_pending, wake, stop, settings.idle_check_seconds)
        if listener:
            listener.cancel()


async def projector_service(settings: Settings, stop: asyncio.Event, ledger: LedgerApp, db: Database,
                            nc: NATS) -> None:
    wake = asyncio.Event()
    projection = RunsProjection(db)

    async def step() -> int:
        return await asyncio.to_thread(projection.catch_up,
                                       lambda position: list(ledger.store.events_after(position, 500)))

    # The log archiver shares the process: it follows the same history, woken only by the
    # events that end an attempt.
    archiver = LogArchiver(ledger, nc.jetstream(), LogArchive(db))
    archive_wake = asyncio.Event()
    await wake_on_published_events(nc, wake)
    for event_type in ATTEMPT_ENDING_EVENT_NAMES:
        await wake_on_published_events(nc, archive_wake, events_of_type(event_type))
    async with asyncio.TaskGroup() as group:
        group.create_task(run_woken(step, wake, stop, settings.idle_check_seconds))
        group.create_task(run_woken(archiver.archive_pending, archive_wake, stop, settings.idle_check_seconds))


async def reaper_service(settings: Settings, stop: asyncio.Event, ledger: LedgerApp, db: Database,
                         nc: NATS) -> None:
    reaper = Reaper(ledger, DeadlineQueries(db).overdue)
    never = asyncio.Event()  # the reaper keeps time; nothing wakes it early
    async with asyncio.TaskGroup() as group:
        group.create_task(serve_dead_letters(nc, stop))
        await run_woken(_idle_after(reaper.sweep), never, stop, settings.reaper_interval_seconds)


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
            group.create_task(serve_runner_commands(ledger, nc, stop, secret_book(settings, ledger)))
            group.create_task(run_planner(ledger, nc.jetstream(), mirrors, stop, settings.stream_replicas))
            group.create_task(admission_service(settings, stop, ledger, db, nc))
    finally:
        mirrors.close()


async def admission_service(settings: Settings, stop: asyncio.Event, ledger: LedgerApp, db: Database,
                            nc: NATS) -> None:
    """Weighted fair admission, led by one scheduler replica (commands.admission)."""
    wake = asyncio.Event()
    leadership: Leadership
    async with asyncio.TaskGroup() as group:
        if is_postgres(settings.database_url):
            leadership = PostgresLeadership(settings.database_url)
            listener = group.create_task(listen_for_commits(settings.database_url, wake, stop))
        else:
            leadership = FileLeadership(sqlite_path(settings.database_url).with_suffix(".admission.lock"))
            wake_on_local_saves(ledger, wake)
            listener = None
        await run_admission(ledger, nc, AdmissionQueries(db).unfinished_jobs, leadership, wake, stop,
                            reoffer_after=settings.reoffer_after_seconds, idle_seconds=settings.idle_check_seconds,
                            stream_replicas=settings.stream_replicas)
        if listener:
            listener.cancel()


async def runner_service(settings: Settings, stop: asyncio.Event, nc: NATS) -> None:
    agent = RunnerAgent(
        nc, await _executor(settings), runner_id=settings.runner_id, pool=settings.runner_pool,
        slots=settings.runner_slots, data_dir=settings.data_dir, max_deliver=settings.max_deliver,
        stop_grace=settings.stop_grace_seconds, max_log_bytes=settings.max_log_bytes,
        lease_seconds=settings.lease_seconds,
    )
    await agent.run(stop)


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


async def rebuild_read_models(settings: Settings, *, verify: bool) -> int:
    """`ledgerci projections rebuild [--verify]`: 0 when done (or no difference), 1 otherwise.

    Both build fresh tables from the whole history while the system keeps working; --verify
    compares them with the live ones, a plain rebuild switches over to them."""
    async with store(settings) as (ledger, db):
        started = time.perf_counter()

        def events_after(position: int, limit: int) -> list:
            return list(ledger.store.events_after(position, limit))

        if verify:
            found, position = await asyncio.to_thread(verify_read_models, db, events_after)
            for line in found:
                print(line)
            print(f"{len(found)} difference(s) between the read model and the history up to position {position}")
            return 1 if found else 0
        applied, position = await asyncio.to_thread(switch_over, db, events_after)
        elapsed = time.perf_counter() - started
        print(f"rebuilt the read model from {applied} events up to position {position} and switched over in "
              f"{elapsed:.1f}s ({applied / max(elapsed, 1e-9):.0f} events/s)")
        return 0


async def verify_audit_chain(settings: Settings, run_id: UUID | None) -> int:
    """`ledgerci audit verify [RUN_ID|--all]`: 0 when every chain is intact, 1 otherwise."""
    async with store(settings, migrate_schema=False) as (ledger, _):
        started = time.perf_counter()
        checked, broken = await asyncio.to_thread(ledger.audit.verify_chain, run_id)
        elapsed = time.perf_counter() - started
        for found in broken:
            print(f"BROKEN {found}")
        what = f"run {run_id}" if run_id else "every stream"
        if checked == 0 and run_id is not None:
            print(f"run {run_id}: no events")
            return 1
        print(f"{what}: {checked} events checked in {elapsed:.1f}s, "
              f"{len(broken)} broken stream(s)" + ("" if broken else ", every chain intact"))
        return 1 if broken else 0


async def grant_role(settings: Settings, role: str) -> None:
    async with store(settings, migrate_schema=True) as (ledger, _):
        await asyncio.to_thread(grant_service_role, ledger, settings.database_url, role)


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
        if name == "relay":
            await relay_service(settings, stop, ledger, nc)
        elif name == "projector":
            await projector_service(settings, stop, ledger, db, nc)
        elif name == "scheduler":
            await scheduler_service(settings, stop, ledger, db, nc)
        elif name == "reaper":
            await reaper_service(settings, stop, ledger, db, nc)
        elif name == "gateway":
            await gateway_service(settings, stop, ledger, db, nc)
        else:
            raise ValueError(f"unknown service {name!r}")


async def run_all(settings: Settings, stop: asyncio.Event, on_ready: Callable[[], None] | None = None) -> None:
    """Every service but the runner in one process (`ledgerci dev`), on one store and one NATS
    connection; the runner in a child process."""
    # The services share this process's worker threads. Python's default (cores + 4: six
    # here) let a burst of pushes waiting for the store hold every thread, and the runners'
    # commands then timed out behind them.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=EMBEDDED_WORKER_THREADS, thread_name_prefix="ledgerci"))
    async with AsyncExitStack() as stack:
        ledger, db = await stack.enter_async_context(store(settings))
        nc = await stack.enter_async_context(nats_connection(settings, "ledgerci-dev"))
        async with asyncio.TaskGroup() as group:
            group.create_task(relay_service(settings, stop, ledger, nc))
            group.create_task(projector_service(settings, stop, ledger, db, nc))
            group.create_task(scheduler_service(settings, stop, ledger, db, nc))
            group.create_task(reaper_service(settings, stop, ledger, db, nc))
            # The runner is a process of its own (ledgerci.runner_process): the second core.
            group.create_task(run_runner_process(settings, stop))
            group.create_task(gateway_service(settings, stop, ledger, db, nc, on_ready))
