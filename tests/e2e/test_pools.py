"""Runner pools: a job runs only on runners of the pool it names, waits (and says why) while
that pool has no live runner, and a tenant limited to some pools cannot use the others."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.api import Api
from tests.support.cluster import ADMIN_TOKEN, LedgerCluster
from tests.support.git_repo import GitRepo
from tests.support.invariants import check_invariants

pytestmark = pytest.mark.e2e

TWO_POOLS = """\
jobs:
  - name: build
    run: echo "built on $LEDGERCI_RUNNER_ID"
  - name: train
    pool: gpu
    run: echo "trained"
"""


def setup_tenant(admin: Api, tmp_path: Path, name: str, **settings) -> tuple[Api, str, str]:
    tenant_id, token = admin.tenant(name)
    if settings:
        admin.http.patch(f"/api/v1/tenants/{tenant_id}", json=settings).raise_for_status()
    repo = GitRepo(tmp_path / name)
    commit = repo.commit({".ledgerci.yml": TWO_POOLS})
    return Api(admin.url, token), admin.repository(tenant_id, repo.clone_url, f"{name}-repo"), commit


def test_a_job_waits_for_a_runner_of_its_pool_and_says_so(tmp_path: Path, cluster: LedgerCluster,
                                                          admin: Api) -> None:
    api, repository_id, commit = setup_tenant(admin, tmp_path, "trainers")
    run_id = api.push(repository_id, commit).json()["run_id"]

    waiting = api.wait_run(run_id, until=lambda run: run["jobs"] and run["jobs"][1]["status"] == "queued")
    build, train = waiting["jobs"]
    assert build["status"] == "succeeded" and build["runner_id"] == cluster.runner_id() and build["waiting"] is None
    assert train["pool"] == "gpu"
    assert train["waiting"] == 'no runner of pool "gpu" is alive'

    cluster.start("runner#gpu", env={"LEDGERCI_RUNNER_POOL": "gpu"})
    done = api.wait_run(run_id)
    assert done["status"] == "succeeded", done
    assert done["jobs"][1]["runner_id"] == cluster.runner_id("runner#gpu") and done["jobs"][1]["waiting"] is None

    # A runner that stops says goodbye: the pool is empty again at once, not after a timeout.
    cluster.stop("runner#gpu")
    second = GitRepo(tmp_path / "trainers").commit({".ledgerci.yml": TWO_POOLS, "again.txt": "2"})
    rerun = api.push(repository_id, second).json()["run_id"]
    waiting = api.wait_run(rerun, until=lambda run: run["jobs"] and run["jobs"][1]["status"] == "queued")
    assert waiting["jobs"][1]["waiting"] == 'no runner of pool "gpu" is alive'


def test_a_tenant_limited_to_some_pools_cannot_use_the_others(tmp_path: Path, admin: Api) -> None:
    api, repository_id, commit = setup_tenant(admin, tmp_path, "limited", pools=["default"])
    assert admin.http.get("/api/v1/tenants/limited").json()["pools"] == ["default"]

    run = api.wait_run(api.push(repository_id, commit).json()["run_id"])

    assert run["status"] == "failed" and run["jobs"] == []
    assert run["error"] == 'job "train" asks for runner pool "gpu"; tenant \'limited\' may use: default'
    assert [e["type"] for e in admin.events(run["id"])] == ["RunRequested", "CommitRead", "RunFailed"]


def test_a_job_no_runner_can_take_says_why_then_fails_not_picked_up_at_its_deadline(
        tmp_path: Path, postgres_url: str, fresh_nats_server) -> None:
    """The failure users of other CI systems report most: a job "pending" forever with no
    reason. Here it says why it waits, and fails "not picked up" when its queue deadline
    passes; the run ends and nothing after it starts."""
    cluster = LedgerCluster(tmp_path / "cluster", postgres_url, fresh_nats_server.url, extra_env={
        "LEDGERCI_QUEUE_TIMEOUT_SECONDS": "3", "LEDGERCI_REAPER_INTERVAL_SECONDS": "0.2"})
    with cluster.running():
        admin = Api(cluster.url, ADMIN_TOKEN)
        api, repository_id, commit = setup_tenant(admin, tmp_path, "nobody-has-gpus")
        run_id = api.push(repository_id, commit).json()["run_id"]
        waiting = api.wait_run(run_id, until=lambda run: run["jobs"] and run["jobs"][1]["waiting"] is not None)
        assert waiting["jobs"][1]["waiting"] == 'no runner of pool "gpu" is alive'
        run = api.wait_run(run_id, timeout=30)
        assert run["status"] == "failed", admin.explain(run_id)
        build, train = run["jobs"]
        assert (build["status"], train["status"], train["error"]) == ("succeeded", "failed", "not picked up")
        assert train["started_at"] is None and train["runner_id"] is None
        history = api.events(run_id)
        failed = [e for e in history if e["type"] == "JobFailed"]
        assert [(e["data"]["error"], e["actor"]) for e in failed] == [("not picked up", "reaper")]
        assert check_invariants(cluster.env["LEDGERCI_DATABASE_URL"]) == []
