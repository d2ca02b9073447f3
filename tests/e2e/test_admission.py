"""Weighted fair admission against real processes (PostgreSQL, nats-server, every service):
light tenants are not starved by a heavy one, runner time follows the weights, and the
concurrent-job quota holds with two schedulers while the leading one is SIGKILLed. Every
check reads the full event history, not what a service says."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.api import Api
from tests.support.cluster import LedgerCluster
from tests.support.fairness import (
    attempts_by_tenant,
    count_jobs,
    history,
    jain_index,
    one_job,
    shares_under_contention,
    starts_in_order,
    tenant_with_backlog,
    wait_until,
)
from tests.support.invariants import check_invariants, running_over_time

pytestmark = pytest.mark.e2e


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
    database_url = cluster.env["LEDGERCI_DATABASE_URL"]
    wait_until(lambda: count_jobs(database_url, "queued") == 215, 120, "every job queued")

    cluster.start("runner#pool", env={"LEDGERCI_RUNNER_SLOTS": "4"})
    for run_ids in runs.values():
        for run_id in run_ids:
            assert admin.wait_run(run_id, timeout=300)["status"] == "succeeded"

    events = history(database_url)
    starts = starts_in_order(events)
    heavy_tenth = [i for i, (tenant, _) in enumerate(starts) if tenant == "heavy"][9]
    for light in ("light-b", "light-c", "light-d"):
        first = next(i for i, (tenant, _) in enumerate(starts) if tenant == light)
        assert first < heavy_tenth, f"{light}'s first job started after the heavy tenant's 10th"
    spans = attempts_by_tenant(events)
    light_done = max(end for light in ("light-b", "light-c", "light-d") for _, end in spans[light])
    heavy_done_by_then = sum(end <= light_done for _, end in spans["heavy"])
    assert heavy_done_by_then <= 40, f"the heavy tenant finished {heavy_done_by_then} jobs before the light ones"
    assert check_invariants(database_url) == []


def test_runner_time_is_shared_by_weight_under_sustained_contention(tmp_path: Path, cluster: LedgerCluster,
                                                                    admin: Api) -> None:
    """Weights 1, 2 and 4 on 4 slots (fewer slots than the weights add up to)."""
    cluster.stop("runner")
    weights = {"w1": 1, "w2": 2, "w4": 4}
    backlog = {"w1": 40, "w2": 70, "w4": 130}  # all three stay backlogged for most of the test
    runs = {name: tenant_with_backlog(admin, tmp_path, name, backlog[name], one_job(0.3), weight=weight)
            for name, weight in weights.items()}
    database_url = cluster.env["LEDGERCI_DATABASE_URL"]
    wait_until(lambda: count_jobs(database_url, "queued") == sum(backlog.values()), 120, "every job queued")

    cluster.start("runner#pool", env={"LEDGERCI_RUNNER_SLOTS": "4"})
    for run_ids in runs.values():
        for run_id in run_ids:
            assert admin.wait_run(run_id, timeout=300)["status"] == "succeeded"

    shares, window = shares_under_contention(attempts_by_tenant(history(database_url)), list(weights))
    print(f"window {window:.1f}s, shares {shares}")
    for name, weight in weights.items():
        target = weight / sum(weights.values())
        assert abs(shares[name] - target) <= 0.10 * target, (name, shares)
    assert jain_index([shares[name] / weight for name, weight in weights.items()]) >= 0.95


def test_the_concurrent_job_quota_holds_with_two_schedulers_and_a_killed_leader(tmp_path: Path,
                                                                                cluster: LedgerCluster,
                                                                                admin: Api) -> None:
    cluster.start("scheduler#2")
    start_runner_with_slots(cluster, 6)
    run_ids = tenant_with_backlog(admin, tmp_path, "capped", 24, one_job(0.5), max_concurrent_jobs=2)

    database_url = cluster.env["LEDGERCI_DATABASE_URL"]
    wait_until(lambda: count_jobs(database_url, "succeeded") >= 6, 120, "a quarter of the jobs done")

    def a_queued_job_says_it_waits_for_the_quota() -> bool:
        for run_id in run_ids:
            jobs = admin.run(run_id)["jobs"]
            if jobs and jobs[0]["status"] == "queued":
                return jobs[0]["waiting"] == 'tenant "capped" has 2 jobs running, its max_concurrent_jobs quota'
        return False

    wait_until(a_queued_job_says_it_waits_for_the_quota, 30, "a queued job saying it waits for the quota")
    leader = next(name for name in ("scheduler", "scheduler#2") if "took over" in cluster.log_path(name).read_text())
    other = "scheduler#2" if leader == "scheduler" else "scheduler"
    # A SIGSTOP variant was tried: the quota held, but a run failed (the runners' reports found
    # "no responders" after the paused scheduler resumed), so it waits for that to be fixed.
    # The fence against a paused leader is proven in tests/integration/test_admission_takeover.py.
    cluster.kill(leader)
    for run_id in run_ids:
        assert admin.wait_run(run_id, timeout=120)["status"] == "succeeded"

    events = history(database_url)
    running = [count for _, tenant, count, _ in running_over_time(events) if tenant == "capped"]
    assert max(running) == 2, "the quota was never reached: the test proves nothing"
    assert check_invariants(database_url) == []  # includes the quota, start by start
    assert "took over" in cluster.log_path(other).read_text()
