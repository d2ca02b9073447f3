"""pytest fixtures that run real PostgreSQL and nats-server processes.

Registered for the whole suite by ``tests/conftest.py`` (``pytest_plugins``).

* ``postgres_server`` (session): one cluster per test session.
* ``postgres_url`` (function): a fresh, randomly named database on that cluster; its URL.
* ``fresh_postgres_server`` (function): a cluster of its own, for tests that kill or stop it.
* ``nats_server`` (session): one JetStream-enabled nats-server per session.
* ``fresh_nats_server`` (function): a nats-server of its own, for tests that kill it.
* ``nats_cluster`` (function): a 3-node JetStream cluster of its own, meta leader elected.

Do not kill or stop the session-scoped servers; take a ``fresh_*`` one. (If a test does
stop the session PostgreSQL anyway, ``postgres_url``'s teardown starts it again.)

Every server is destroyed when its fixture is torn down, failed test or not; processes
left running at interpreter exit are SIGKILLed by ``tests.support.processes``; SIGTERM to
pytest is turned into KeyboardInterrupt so that teardown still happens. When a test
fails, the log tail of every server fixture it used is added to its report. Set
``LEDGERCI_KEEP_TEST_DIRS=1`` to keep the server directories (data, logs) after the run.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import threading
from collections.abc import Generator, Iterator
from pathlib import Path
from types import FrameType

import pytest

from tests.support.processes import NatsCluster, NatsServer, PostgresServer, make_base_dir

__all__ = [
    "fresh_nats_server",
    "fresh_postgres_server",
    "ledgerci_servers_dir",
    "nats_cluster",
    "nats_server",
    "postgres_server",
    "postgres_url",
]


def _sigterm_to_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Make SIGTERM (a CI job being cancelled, ``timeout``...) behave like Ctrl-C, so that
    pytest still tears the fixtures down and stops the servers; by default SIGTERM ends
    Python at once, without ``finally`` blocks or ``atexit`` handlers, leaving them running.
    Only if nobody installed a SIGTERM handler already."""
    if threading.current_thread() is threading.main_thread() and (
        signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    ):
        signal.signal(signal.SIGTERM, _sigterm_to_keyboard_interrupt)


def _keep_dirs() -> bool:
    return os.environ.get("LEDGERCI_KEEP_TEST_DIRS", "") not in ("", "0")


@pytest.fixture(scope="session")
def ledgerci_servers_dir() -> Iterator[Path]:
    """A session-wide directory holding every server's directory (traversable by the
    ``postgres`` user, unlike ``tmp_path`` when running as root). Removed at the end."""
    base = make_base_dir()
    try:
        yield base
    finally:
        if _keep_dirs():
            print(f"\nledgerci test servers kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def _destroy(server: PostgresServer | NatsServer) -> None:
    if _keep_dirs():
        server.kill()
    else:
        server.destroy()


@pytest.fixture(scope="session")
def postgres_server(ledgerci_servers_dir: Path) -> Iterator[PostgresServer]:
    """One PostgreSQL cluster for the whole session, with database ``ledgerci``.

    Tests that need isolation should use ``postgres_url`` instead of ``.url``."""
    server = PostgresServer.create(ledgerci_servers_dir)
    try:
        yield server
    finally:
        _destroy(server)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """URL of a new database with a random name on the session cluster, dropped (with
    ``FORCE``, so lingering connections do not block it) after the test."""
    if not postgres_server.is_running():
        postgres_server.start()
    name = f"test_{secrets.token_hex(6)}"
    url = postgres_server.create_database(name)
    try:
        yield url
    finally:
        if not postgres_server.is_running():
            postgres_server.start()
        postgres_server.drop_database(name)


@pytest.fixture
def fresh_postgres_server(ledgerci_servers_dir: Path) -> Iterator[PostgresServer]:
    """A PostgreSQL cluster of the test's own (about 1.5 s to create), free to be killed,
    stopped and restarted; destroyed after the test."""
    server = PostgresServer.create(ledgerci_servers_dir)
    try:
        yield server
    finally:
        _destroy(server)


@pytest.fixture(scope="session")
def nats_server(ledgerci_servers_dir: Path) -> Iterator[NatsServer]:
    """One JetStream-enabled nats-server for the whole session (``sync_interval: always``)."""
    server = NatsServer.create(ledgerci_servers_dir)
    try:
        yield server
    finally:
        _destroy(server)


@pytest.fixture
def fresh_nats_server(ledgerci_servers_dir: Path) -> Iterator[NatsServer]:
    """A nats-server of the test's own, free to be killed, paused and restarted."""
    server = NatsServer.create(ledgerci_servers_dir)
    try:
        yield server
    finally:
        _destroy(server)


@pytest.fixture
def nats_cluster(ledgerci_servers_dir: Path) -> Iterator[NatsCluster]:
    """A 3-node JetStream cluster of the test's own (``n0``..``n2``, ``sync_interval:
    always``), started and with a meta leader elected (about 0.5 s); free to kill and
    restart nodes (``kill(i)``, ``start_node(i)``); destroyed after the test."""
    cluster = NatsCluster.create(ledgerci_servers_dir)
    try:
        cluster.wait_healthy(30)
        yield cluster
    finally:
        if _keep_dirs():
            cluster.kill_all()
        else:
            cluster.destroy()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On failure, attach the log tail of every server fixture the test used."""
    report = yield
    if report.failed:
        funcargs = getattr(item, "funcargs", {})
        for name, value in funcargs.items():
            if isinstance(value, PostgresServer | NatsServer):
                report.sections.append((f"{name} log: {value.log_path}", value.log_tail()))
            elif isinstance(value, NatsCluster):
                for node in value.nodes:
                    report.sections.append(
                        (f"{name} {node.server_name} log: {node.log_path}", node.log_tail())
                    )
    return report
