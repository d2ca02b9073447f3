"""Weighted fair admission against real processes (PostgreSQL, nats-server, every service):
light tenants are not starved by a heavy one, runner time follows the weights, and the
concurrent-job quota holds with two schedulers while the leading one is SIGKILLed. Every
check reads the full event history, not what a service says."""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from commands.app import LedgerApp
from commands.store import eventsourcing_env
from projections.sql import open_database
from tests.support.api import Api
from tests.support.cluster import LedgerCluster
from tests.support.git_repo import GitRepo
from tests.support.invariants import all_events, check_invariants, running_over_time

pytestmark = pytest.mark.e2e


def one_job(seconds: float) -> str:
    return f"jobs:\n  - name: work\n    run: sleep {seconds}\n"


def tenant_with_backlog(admin: Api, tmp_path: Path, name: str, runs: int, script: str, **settings: int) -> list[str]:
    """A tenant, a repository with `runs` commits, and a push of each: the run ids."""
    tenant_id, _ = admin.tenant(name)
    admin.http.patch(f"/api/v1/tenants/{tenant_id}", json={
        "max_queued_runs": 1000, "pushes_per_minute": 1000, "max_concurrent_jobs": 100, **settings,
    }).raise_for_status()
    repo = GitRepo(tmp_path / name)
    repository_id = admin.repository(tenant_id, repo.clone_url, f"{name}-repo")
    commits = [repo.commit({".ledgerci.yml": script, "n": str(i)}) for i in range(runs)]
    pushed = [admin.push(repository_id, commit) for commit in commits]
    assert all(response.status_code == 202 for response in pushed), pushed[-1].text
    return [response.json()["run_id"] for response in pushed]


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def count_jobs(cluster: LedgerCluster, status: str) -> int:
    db = open_database(cluster.env["LEDGERCI_DATABASE_URL"])
    try:
        return db.query("SELECT count(*) FROM lci_jobs WHERE status = ?", (status,))[0][0]
    finally:
        db.close()


def history(cluster: LedgerCluster) -> list[tuple[int, Any]]:
    app = LedgerApp(env=eventsourcing_env(cluster.env["LEDGERCI_DATABASE_URL"]))
    try:
        return all_events(app)
    finally:
        app.close()


def attempts_by_tenant(events: list[tuple[int, Any]]) -> dict[str, list[tuple[datetime, datetime]]]:
    """(started, ended) of every attempt that ran, per tenant."""
    started: dict[tuple[str, int], tuple[str, datetime]] = {}
    spans: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
    for event, tenant_id, _, _ in running_over_time(events):
        key = (event.job_id, event.attempt)
        if type(event).__name__ == "JobStarted":
            started[key] = (tenant_id, event.timestamp)
        elif key in started:
            spans[tenant_id].append((started[key][1], event.timestamp))
    return spans


def start_runner_with_slots(cluster: LedgerCluster, slots: int) -> None:
    cluster.stop("runner")  # the cluster's own, until every backlog is queued
    cluster.start("runner#pool", env={"LEDGERCI_RUNNER_SLOTS": str(slots)})


def test_light_tenants_start_at_once_under_a_heavy_tenants_backlog(tmp_path: Path, cluster: LedgerCluster,
                                                                    admin: Api) -> None:
    """A queues 200 jobs, B, C and D 5 each; then 4 runner slots appear."""
    cluster.stop("runner")
    runs = {"heavy": tenant_with_backlog(admin, tmp_path, "heavy", 200, one_job(0.2))}
    for light in ("light-b", "light-c", "light-d"):
        runs[light] = tenant_with_backlog(admin, tmp_path, light, 5, one_job(0.2))
    wait_until(lambda: count_jobs(cluster, "queued") == 215, 120, "every job queued")

    cluster.start("runner#pool", env={"LEDGERCI_RUNNER_SLOTS": "4"})
    for run_ids in runs.values():
        for run_id in run_ids:
            assert admin.wait_run(run_id, timeout=300)["status"] == "succeeded"

    events = history(cluster)
    starts = [(tenant, event) for event, tenant, _, _ in running_over_time(events)
              if type(event).__name__ == "JobStarted"]
    heavy_tenth = [i for i, (tenant, _) in enumerate(starts) if tenant == "heavy"][9]
    for light in ("light-b", "light-c", "light-d"):
        first = next(i for i, (tenant, _) in enumerate(starts) if tenant == light)
        assert first < heavy_tenth, f"{light}'s first job started after the heavy tenant's 10th"
    spans = attempts_by_tenant(events)
    light_done = max(end for light in ("light-b", "light-c", "light-d") for _, end in spans[light])
    heavy_done_by_then = sum(end <= light_done for _, end in spans["heavy"])
    assert heavy_done_by_then <= 40, f"the heavy tenant finished {heavy_done_by_then} jobs before the light ones"
    assert check_invariants(cluster.env["LEDGERCI_DATABASE_URL"]) == []


def test_runner_time_is_shared_by_weight_under_sustained_contention(tmp_path: Path, cluster: LedgerCluster,
                                                                    admin: Api) -> None:
    """Weights 1, 2 and 4 on 4 slots (fewer slots than the weights add up to)."""
    cluster.stop("runner")
    weights = {"w1": 1, "w2": 2, "w4": 4}
    backlog = {"w1": 40, "w2": 70, "w4": 130}  # all three stay backlogged for most of the test
    runs = {name: tenant_with_backlog(admin, tmp_path, name, backlog[name], one_job(0.3), weight=weight)
            for name, weight in weights.items()}
    wait_until(lambda: count_jobs(cluster, "queued") == sum(backlog.values()), 120, "every job queued")

    cluster.start("runner#pool", env={"LEDGERCI_RUNNER_SLOTS": "4"})
    for run_ids in runs.values():
        for run_id in run_ids:
            assert admin.wait_run(run_id, timeout=300)["status"] == "succeeded"

    spans = attempts_by_tenant(history(cluster))
    # Contention lasts from the first start until the first tenant has nothing left to start.
    window_start = min(start for name in weights for start, _ in spans[name])
    window_end = min(max(start for start, _ in spans[name]) for name in weights)
    runner_time = {
        name: sum(max((min(end, window_end) - max(start, window_start)).total_seconds(), 0.0)
                  for start, end in spans[name])
        for name in weights
    }
    total = sum(runner_time.values())
    shares = {name: runner_time[name] / total for name in weights}
    print(f"window {(window_end - window_start).total_seconds():.1f}s, shares {shares}")
    for name, weight in weights.items():
        target = weight / sum(weights.values())
        assert abs(shares[name] - target) <= 0.10 * target, (name, shares)
    normalized = [shares[name] / weight for name, weight in weights.items()]
    jain = sum(normalized) ** 2 / (len(normalized) * sum(x * x for x in normalized))
    assert jain >= 0.95, jain


def test_the_concurrent_job_quota_holds_with_two_schedulers_and_a_killed_leader(tmp_path: Path,
                                                                                cluster: LedgerCluster,
                                                                                admin: Api) -> None:
    cluster.start("scheduler#2")
    start_runner_with_slots(cluster, 6)
    run_ids = tenant_with_backlog(admin, tmp_path, "capped", 24, one_job(0.5), max_concurrent_jobs=2)

    wait_until(lambda: count_jobs(cluster, "succeeded") >= 6, 120, "a quarter of the jobs done")
    leader = next(name for name in ("scheduler", "scheduler#2") if "took over" in cluster.log_path(name).read_text())
    cluster.kill(leader)
    for run_id in run_ids:
        assert admin.wait_run(run_id, timeout=120)["status"] == "succeeded"

    events = history(cluster)
    running = [count for _, tenant, count, _ in running_over_time(events) if tenant == "capped"]
    assert max(running) == 2, "the quota was never reached: the test proves nothing"
    assert check_invariants(cluster.env["LEDGERCI_DATABASE_URL"]) == []  # includes the quota, start by start
    other = "scheduler#2" if leader == "scheduler" else "scheduler"
    assert "took over" in cluster.log_path(other).read_text()
