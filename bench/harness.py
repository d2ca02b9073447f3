"""A production-like set-up for benchmarks: PostgreSQL with fsync on, a nats-server with
`sync_interval: always`, and every ledgerci service as its own process."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.api import Api
from tests.support.cluster import ADMIN_TOKEN, LedgerCluster
from tests.support.git_repo import GitRepo
from tests.support.processes import NatsServer, PostgresServer, make_base_dir


@dataclass
class Bench:
    cluster: LedgerCluster
    api: Api
    postgres: PostgresServer
    nats_server: NatsServer
    repo: GitRepo
    repository_id: str


@contextmanager
def bench_cluster(services: tuple[str, ...], extra_env: dict[str, str],
                  postgres_settings: dict[str, str] | None = None) -> Iterator[Bench]:
    base = make_base_dir("ledgerci-bench-")
    postgres = PostgresServer.create(base, fsync=True, settings=postgres_settings)
    nats_server = NatsServer.create(base, sync_always=True)
    cluster_dir = Path(tempfile.mkdtemp(prefix="ledgerci-bench-cluster-"))
    cluster = LedgerCluster(cluster_dir, postgres.url, nats_server.url,
                            extra_env={"LEDGERCI_LOG_LEVEL": "WARNING", "LEDGERCI_RUNNER_SLOTS": "1", **extra_env})
    try:
        for name in services:
            cluster.start(name)
        api = Api(cluster.url, ADMIN_TOKEN)
        tenant_id, _ = api.tenant("bench")
        repo = GitRepo(cluster_dir / "repo")
        repository_id = api.repository(tenant_id, repo.clone_url, "bench")
        yield Bench(cluster, api, postgres, nats_server, repo, repository_id)
    finally:
        cluster.stop_all()
        nats_server.destroy()
        postgres.destroy()
