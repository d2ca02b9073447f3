"""Priority tiers (issue 19): `priority: high` puts a run ahead of its own tenant's normal runs,
also across a SIGKILL of the admission leader (the next leader rebuilds the tiers from the read
model), and never above the tenant's cap. Every service a process of its own on PostgreSQL and
a real nats-server; the invariant checker over the whole history at the end."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_faults import wait_for
from tests.support.api import Api
from tests.support.cluster import ADMIN_TOKEN, LedgerCluster
from tests.support.fairness import one_job, tenant_with_backlog
from tests.support.git_repo import GitRepo
from tests.support.invariants import check_invariants

pytestmark = pytest.mark.e2e

NORMAL_SECONDS = 1.0


def high(seconds: float) -> str:
    return "priority: high\n" + one_job(seconds)


def started_order(admin: Api, run_ids: list[str]) -> list[str]:
    """The runs, in the order their job started."""
    starts = [(e["at"], run_id) for run_id in run_ids for e in admin.events(run_id) if e["type"] == "JobStarted"]
    return [run_id for _, run_id in sorted(starts)]


def push_high_while_a_normal_one_runs(admin: Api, repo: GitRepo, repository_id: str, name: str) -> tuple[str, str]:
    """A high-priority run, pushed while a normal job runs (it has about a second left): the
    high run, queued, and the normal one it must follow."""
    running: list[str] = []

    def one_running() -> bool:
        running[:] = [run["id"] for run in admin.http.get("/api/v1/runs", params={
            "status": "running", "repository_id": repository_id}).json()["runs"]]
        return len(running) == 1
    wait_for(one_running, 60, "a normal job to run")
    pushed = admin.push(repository_id, repo.commit({".ledgerci.yml": high(0.1), "high": name}))
    assert pushed.status_code == 202, pushed.text
    run_id = pushed.json()["run_id"]
    admin.wait_run(run_id, until=lambda run: bool(run["jobs"]) and run["jobs"][0]["status"] != "pending")
    return run_id, running[0]


def test_a_high_priority_run_starts_next_behind_twenty_normal_ones_also_when_the_leader_dies(
        tmp_path: Path, postgres_url: str, fresh_nats_server) -> None:
    cluster = LedgerCluster(tmp_path / "cluster", postgres_url, fresh_nats_server.url,
                            extra_env={"LEDGERCI_RUNNER_SLOTS": "1"})
    with cluster.running(("relay", "projector", "scheduler", "scheduler#2", "reaper", "gateway", "runner")):
        admin = Api(cluster.url, ADMIN_TOKEN)
        normal = tenant_with_backlog(admin, tmp_path, "team", 20, one_job(NORMAL_SECONDS), max_concurrent_jobs=1)
        repo = GitRepo(tmp_path / "team")
        first_high, first_behind = push_high_while_a_normal_one_runs(admin, repo, "team-repo", "1")
        assert admin.run(first_high)["jobs"][0]["priority"] == "high"
        wait_for(lambda: admin.run(first_high)["status"] == "succeeded", 30, "the first high run to end")

        # The same again, with the admission leader SIGKILLed once the high run is queued.
        second_high, second_behind = push_high_while_a_normal_one_runs(admin, repo, "team-repo", "2")
        leader = next(name for name in ("scheduler", "scheduler#2")
                      if "took over" in cluster.log_path(name).read_text())
        cluster.kill(leader)
        for run_id in [*normal, first_high, second_high]:
            assert admin.wait_run(run_id, timeout=120)["status"] == "succeeded", admin.explain(run_id)

        order = started_order(admin, [*normal, first_high, second_high])
        for high_run, behind in ((first_high, first_behind), (second_high, second_behind)):
            before = [run for run in order[:order.index(high_run)] if run in normal]
            assert before[-1] == behind, f"{high_run} did not start next after {behind}: {order}"
            assert len(normal) - len(before) >= 5, "too few normal runs were still waiting: this proves nothing"

        # The admin caps what a tenant's files may ask for: asked high, it runs normal.
        admin.http.patch("/api/v1/tenants/team", json={"max_priority": "normal"}).raise_for_status()
        assert admin.http.get("/api/v1/tenants/team").json()["max_priority"] == "normal"
        capped = admin.push("team-repo", repo.commit({".ledgerci.yml": high(0.1), "high": "3"})).json()["run_id"]
        assert admin.wait_run(capped)["jobs"][0]["priority"] == "normal", admin.explain(capped)
        assert check_invariants(cluster.env["LEDGERCI_DATABASE_URL"]) == []
