from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.support.api import Api
from tests.support.cluster import ADMIN_TOKEN, OUTBOUND_TO_LOOPBACK, LedgerCluster
from tests.support.processes import NatsServer, PostgresServer


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str, fresh_nats_server, request) -> Iterator[LedgerCluster]:
    """Every service as its own process on PostgreSQL and a real nats-server."""
    cluster = LedgerCluster(tmp_path / "cluster", postgres_url, fresh_nats_server.url)
    with cluster.running():
        yield cluster
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        print(cluster.logs())


@pytest.fixture
def allowing(tmp_path: Path, postgres_url: str, fresh_nats_server) -> Iterator[LedgerCluster]:
    """A cluster allowed to send commit statuses and outgoing webhooks to loopback (a test's
    receiver), retrying them quickly."""
    cluster = LedgerCluster(tmp_path / "cluster", postgres_url, fresh_nats_server.url, extra_env=OUTBOUND_TO_LOOPBACK)
    with cluster.running():
        yield cluster


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer,
                   ledgerci_servers_dir: Path) -> Iterator[LedgerCluster]:
    """One cluster for the tests of a module that only use the API as the admin, each with
    tenants and repositories of its own (a cluster takes seconds to start: most of the e2e
    suite's time was spent starting one per test)."""
    if not postgres_server.is_running():
        postgres_server.start()
    database = f"shared_{uuid.uuid4().hex[:8]}"
    nats = NatsServer.create(ledgerci_servers_dir)
    cluster = LedgerCluster(tmp_path_factory.mktemp("shared") / "cluster", postgres_server.create_database(database),
                            nats.url)
    try:
        with cluster.running():
            yield cluster
    finally:
        nats.destroy()
        postgres_server.drop_database(database)


@pytest.fixture
def admin(request: pytest.FixtureRequest) -> Iterator[Api]:
    """The admin's API: on the test's own cluster if it asks for one (`cluster`: to kill, stop
    or reconfigure its services, or to check the invariants of a history that is its alone),
    else on the module's shared cluster, where what the test left running is cancelled after
    it, so the next test finds the runner's slots free."""
    own = "cluster" in request.fixturenames
    cluster: LedgerCluster = request.getfixturevalue("cluster" if own else "shared_cluster")
    request.node.ledger_cluster = cluster  # whose logs a failure shows
    api = Api(cluster.url, ADMIN_TOKEN)
    yield api
    if not own:
        for status in ("queued", "running"):
            for run in api.http.get("/api/v1/runs", params={"status": status, "limit": 200}).json()["runs"]:
                api.http.post(f"/api/v1/runs/{run['id']}/cancel")


CHROMIUM = "/usr/bin/chromium"  # Debian's package (.ci/run installs it); Playwright downloads nothing
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.rep_call = report
        cluster = getattr(item, "funcargs", {}).get("cluster") or getattr(item, "ledger_cluster", None)
        if report.failed and cluster is not None:
            report.sections.append(("ledgerci service logs", cluster.logs()))
    return report
