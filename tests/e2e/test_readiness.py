"""Readiness of the services without an HTTP port of their own, as Kubernetes and Compose probe
them (deploy/): it follows the real dependencies, PostgreSQL and NATS, killed and started again."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.cluster import LedgerCluster
from tests.support.processes import NatsServer, PostgresServer, free_port

pytestmark = pytest.mark.e2e


@pytest.fixture
def probed(tmp_path: Path, fresh_postgres_server: PostgresServer,
           fresh_nats_server: NatsServer) -> Iterator[Callable[[str, str], httpx.Response]]:
    """A relay (store and NATS) and a runner (NATS only), each serving its probes; the
    fixture gives `probe(service, path)`."""
    cluster = LedgerCluster(tmp_path / "cluster", fresh_postgres_server.url, fresh_nats_server.url)
    cluster.base_dir.mkdir(parents=True)
    ports = {name: free_port() for name in ("relay", "runner")}
    for name, port in ports.items():
        cluster.start(name, env={"LEDGERCI_METRICS_PORT": str(port)})

    def probe(service: str, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{ports[service]}{path}", timeout=10)

    try:
        yield probe
    finally:
        cluster.stop_all()


def wait_for(probe: Callable[[str, str], httpx.Response], service: str, status: int,
             timeout: float = 60) -> dict:
    """The /readyz body once it answers `status` (a reconnecting pool backs off for seconds)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            answer = probe(service, "/readyz")
            if answer.status_code == status:
                return answer.json()
            last = answer.json()
        except httpx.HTTPError as failed:  # still starting
            last = failed
        time.sleep(0.2)  # polling a probe, as the orchestrator does
    raise AssertionError(f"{service} /readyz never answered {status}; last: {last!r}")


def test_readiness_follows_the_store_and_nats(probed, fresh_postgres_server: PostgresServer,
                                              fresh_nats_server: NatsServer) -> None:
    assert wait_for(probed, "relay", 200)["checks"] == {"nats": "ok", "store": "ok"}
    assert wait_for(probed, "runner", 200)["checks"] == {"nats": "ok"}  # the runner has no store
    assert probed("relay", "/healthz").json() == {"status": "ok"}
    assert "ledgerci_events_published_total" in probed("relay", "/metrics").text  # metrics still served

    fresh_postgres_server.kill()
    down = wait_for(probed, "relay", 503)
    assert down["checks"]["nats"] == "ok" and down["checks"]["store"].startswith("unavailable")
    assert probed("runner", "/readyz").status_code == 200  # a runner does not care
    assert probed("relay", "/healthz").status_code == 200  # alive: restarting it would not help
    fresh_postgres_server.start()
    wait_for(probed, "relay", 200)

    fresh_nats_server.kill()
    for service in ("relay", "runner"):
        assert wait_for(probed, service, 503)["checks"]["nats"].startswith("unavailable")
        assert probed(service, "/healthz").status_code == 200
    fresh_nats_server.start()
    for service in ("relay", "runner"):
        wait_for(probed, service, 200)
