"""What every service process opens: the event store and read-model database (tables made
under a lock), the NATS connection (streams made), and the wake-ups that stand for "something
was committed" on each store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg

from commands.app import LedgerApp
from commands.postgres_store import session_options
from commands.runs import Timing
from commands.schema import create_event_store
from commands.secrets import SecretBook
from commands.sqlite_store import writer_lock
from commands.store import eventsourcing_env, is_postgres, sqlite_path
from ledgerci.settings import Settings
from projections.schema import create_read_model_tables
from projections.sql import Database, open_database
from sealing import Keyring, KeyringError

log = logging.getLogger("ledgerci")

# Any fixed number: migrations of every process take this PostgreSQL advisory lock.
MIGRATION_LOCK_ID = 7_334_001
EVENTS_CHANNEL = "ledgerci_events"  # eventsourcing NOTIFYs the events table's name on insert


def open_ledger(settings: Settings) -> LedgerApp:
    return LedgerApp(
        env=eventsourcing_env(settings.database_url, pool_size=settings.db_pool_size,
                              drop_lost_clients=settings.db_drop_lost_clients),
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


@asynccontextmanager
async def store(settings: Settings, *, migrate_schema: bool | None = None) -> AsyncIterator[tuple[LedgerApp, Database]]:
    """The event store and the read-model database; tables made first if asked (or if
    LEDGERCI_AUTO_MIGRATE is on)."""
    ledger = await asyncio.to_thread(open_ledger, settings)
    # On SQLite the read models write to the event store's file: they take its writer lock.
    shared_lock = None if is_postgres(settings.database_url) else writer_lock(sqlite_path(settings.database_url))
    db = await asyncio.to_thread(open_database, settings.database_url, pool_size=settings.db_pool_size,
                                 writer_lock=shared_lock,
                                 session_options=session_options(settings.database_url,
                                                                 drop_lost_clients=settings.db_drop_lost_clients))
    try:
        if settings.auto_migrate if migrate_schema is None else migrate_schema:
            await asyncio.to_thread(migrate, settings, ledger, db)
        yield ledger, db
    finally:
        db.close()
        ledger.close()


# ----- wake-ups --------------------------------------------------------------------------------

@asynccontextmanager
async def waking_on_commits(settings: Settings, ledger: LedgerApp, stop: asyncio.Event,
                            *wakes: asyncio.Event) -> AsyncIterator[None]:
    """Every follower of the store (relay, projector, log archiver, admission) is woken the
    same way: when something is committed. On PostgreSQL by the NOTIFY every insert of events
    sends (one LISTEN connection for all the followers of a process); on SQLite, which has no
    NOTIFY, by the saves of this process (`ledgerci dev` runs every writer in one process)."""
    if not is_postgres(settings.database_url):
        loop = asyncio.get_running_loop()
        ledger.store.on_saved(lambda: loop.call_soon_threadsafe(_ring, wakes))
        yield
        return
    listener = asyncio.create_task(_listen_for_commits(settings.database_url, wakes, stop))
    try:
        yield
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener


def _ring(wakes: tuple[asyncio.Event, ...]) -> None:
    for wake in wakes:
        wake.set()


async def _listen_for_commits(database_url: str, wakes: tuple[asyncio.Event, ...], stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
                await conn.execute(f"LISTEN {EVENTS_CHANNEL}")
                _ring(wakes)  # anything committed while we were not listening
                async for _ in conn.notifies():
                    _ring(wakes)
        except (psycopg.Error, OSError):
            log.warning("lost the LISTEN connection; reconnecting")
            await asyncio.sleep(0.5)
