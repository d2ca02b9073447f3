"""A service cut off from PostgreSQL halfway through an append must not stop every other
writer until the network heals (commands/postgres_store.py says why it could). A real
PostgreSQL, a real separate writer process, a real cut (iptables, tests/support/partition.py).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from urllib.parse import urlsplit

import psycopg
import pytest

from commands.app import LedgerApp
from commands.schema import create_event_store
from commands.store import eventsourcing_env
from ledgerci.resources import store
from ledgerci.settings import Settings
from tests.support.partition import Partition

pytestmark = pytest.mark.integration

HOLDER = ("SELECT l.pid FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
          "WHERE c.relname = 'ledgerci_events' AND l.mode = 'ExclusiveLock' AND l.granted")
SETTINGS = ("SELECT name, setting FROM pg_settings WHERE name IN "
            "('tcp_keepalives_idle', 'tcp_keepalives_interval', 'tcp_keepalives_count', 'tcp_user_timeout', "
            "'work_mem') "
            "ORDER BY name")


@pytest.fixture
def ledger(postgres_url: str) -> Iterator[LedgerApp]:
    app = LedgerApp(env=eventsourcing_env(postgres_url))
    create_event_store(app, postgres_url)
    yield app
    app.close()


def backend_holding_the_events_table(postgres_url: str) -> int | None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        row = conn.execute(HOLDER).fetchone()
    return row[0] if row else None


def test_a_writer_cut_off_halfway_through_an_append_holds_the_events_table_for_seconds_not_until_healed(
        postgres_url: str, ledger: LedgerApp) -> None:
    port = urlsplit(postgres_url).port
    assert port
    with Partition.around(port=port) as partition:
        writer = subprocess.Popen(partition.wrap([sys.executable, "-m", "tests.support.stalled_writer", postgres_url]),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert writer.stdout is not None and writer.stdin is not None
            assert writer.stdout.readline() == "sent\n"
            deadline = time.monotonic() + 10
            while (holder := backend_holding_the_events_table(postgres_url)) is None:
                assert time.monotonic() < deadline, "the writer's LOCK TABLE never took the lock"
                time.sleep(0.05)
            partition.cut()
            writer.stdin.write("go\n")  # the rest of its pipeline, its Sync included, goes nowhere
            writer.stdin.flush()

            with ThreadPoolExecutor(1) as pool:
                # Without the store's lost-client settings this waits until the cut heals: each
                # LOCK TABLE gives up after the 10 s lock timeout and eventsourcing tries again.
                append = pool.submit(ledger.registry.create_tenant, "acme", name="Acme", weight=1,
                                     max_concurrent_jobs=1, max_queued_runs=1, pushes_per_minute=1, actor="admin")
                append.result(timeout=60)
            assert writer.poll() is None, "the writer is still there, cut off, while the append went through"
            assert backend_holding_the_events_table(postgres_url) is None
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                ended = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (holder,)).fetchone()
            assert ended == (0,), "PostgreSQL ended the cut-off writer's session"
        finally:
            writer.kill()
            writer.wait()


async def settings_of_both_pools(settings: Settings) -> tuple[list, list]:
    async with store(settings) as (ledger, db):
        read_models = db.query(SETTINGS)
        with ledger.store.recorder.datastore.get_connection() as conn:
            event_store = [(row["name"], row["setting"]) for row in conn.execute(SETTINGS).fetchall()]
    return [tuple(row) for row in read_models], event_store


async def test_every_service_connection_to_postgresql_ends_a_lost_client_within_seconds(postgres_url: str) -> None:
    """Both pools a service opens (the event store's and the read models') start their sessions
    with the settings, after the options the URL asks for; a read-model transaction (pipeline
    mode too) holds locks as well. LEDGERCI_DB_DROP_LOST_CLIENTS=false leaves them out."""
    assert "?" not in postgres_url
    settings = replace(Settings.from_env(), database_url=f"{postgres_url}?options=-c%20work_mem%3D5MB",
                       auto_migrate=True)
    expected = [("tcp_keepalives_count", "3"), ("tcp_keepalives_idle", "5"), ("tcp_keepalives_interval", "1"),
                ("tcp_user_timeout", "8000"), ("work_mem", "5120")]
    assert await settings_of_both_pools(settings) == (expected, expected)

    read_models, event_store = await settings_of_both_pools(replace(settings, db_drop_lost_clients=False))
    assert read_models == event_store
    assert dict(read_models)["tcp_user_timeout"] == "0" and dict(read_models)["work_mem"] == "5120"
