from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.support.api import Api
from tests.support.cluster import ADMIN_TOKEN, LedgerCluster


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
    cluster = LedgerCluster(tmp_path / "cluster", postgres_url, fresh_nats_server.url,
                            extra_env={"LEDGERCI_OUTBOUND_ALLOW_PRIVATE": "true",
                                       "LEDGERCI_STATUS_RETRY_SECONDS": "0.2", "LEDGERCI_WEBHOOK_RETRY_SECONDS": "0.2",
                                       "LEDGERCI_IDLE_CHECK_SECONDS": "0.3"})
    with cluster.running():
        yield cluster


@pytest.fixture
def admin(cluster: LedgerCluster) -> Api:
    return Api(cluster.url, ADMIN_TOKEN)


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
        cluster = getattr(item, "funcargs", {}).get("cluster")
        if report.failed and cluster is not None:
            report.sections.append(("ledgerci service logs", cluster.logs()))
    return report
